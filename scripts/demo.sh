#!/usr/bin/env bash
# demo.sh [CMD ARGS...] (`sudo make demo`): sets up the host (packages, containerd v2,
# static runsc), builds bottle, imports the demo image (Debian's static busybox; no
# registry needed) and starts the demo agent of examples/demo.toml on the current
# directory: an interactive shell, or CMD when given. The bottle is removed when the
# shell exits (--rm).
#
# With CONTAINERD_ADDRESS set, that containerd is used and none is started (as `make run`
# does); otherwise setup-host.sh --system starts one on /run/containerd/containerd.sock
# unless one answers there, and prints what it started and how to stop it. bottle's other
# settings come from BOTTLE_NAMESPACE, BOTTLE_STATE_DIR, BOTTLE_RESOLV_CONF, BOTTLE_POOL.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="/usr/local/go/bin:/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"
if [[ $(id -u) -ne 0 ]]; then
	echo "demo.sh: bottle needs root (containerd, runsc, CNI, iptables): sudo make demo" >&2
	exit 1
fi
if [[ -n ${CONTAINERD_ADDRESS:-} ]]; then
	"$repo/scripts/setup-host.sh"
else
	"$repo/scripts/setup-host.sh" --system
fi
make --no-print-directory -C "$repo" build
image=$(mktemp /tmp/bottle-demo-image.XXXXXX.tar)
trap 'rm -f "$image"' EXIT
(cd "$repo" && go run ./scripts/mkimage busybox bottle.local/demo-busybox:latest "$image" >/dev/null)
"$repo/bin/bottle" image import "$image" >/dev/null
rm -f "$image"
if (($#)); then
	exec "$repo/bin/bottle" --manifest "$repo/examples/demo.toml" start --rm demo -- "$@"
fi
exec "$repo/bin/bottle" --manifest "$repo/examples/demo.toml" start --rm demo
