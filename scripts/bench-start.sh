#!/usr/bin/env bash
# bench-start.sh (`sudo make bench-start`): median wall time of `bottle start AGENT --
# /bin/true` against a bare single-container runsc run of the same image, in one run, on a
# private containerd that this script starts and stops. COUNT sets the runs (default 7).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="/usr/local/go/bin:/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"
if [[ $(id -u) -ne 0 ]]; then
	echo "bench-start.sh: needs root (containerd, runsc, CNI, iptables): sudo make bench-start" >&2
	exit 1
fi
scripts/setup-host.sh
ctrd_dir=$(mktemp -d /var/tmp/bottle-bench.XXXXXX)
trap 'trap "" INT TERM; scripts/containerd-test.sh stop "$ctrd_dir"' EXIT
scripts/containerd-test.sh start "$ctrd_dir"
eval "$(scripts/containerd-test.sh env "$ctrd_dir")"
go test -count=1 -run '^$' -bench '^BenchmarkStartVsBare$' -benchtime "${COUNT:-7}x" ./e2e
