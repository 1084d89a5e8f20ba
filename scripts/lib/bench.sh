# shellcheck shell=bash
# run_e2e_bench NAME BENCH COUNT (sourced by the bench-*.sh scripts): as root, checks the
# host (setup-host.sh), starts a private containerd, runs the e2e benchmark BENCH for COUNT
# rounds against it (its own state dir, namespace and pool: it touches no other bottle) and
# stops the daemon again, whatever happens.
run_e2e_bench() {
	local name=$1 bench=$2 count=$3 ctrd_dir
	export PATH="/usr/local/go/bin:/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"
	if [[ $(id -u) -ne 0 ]]; then
		echo "$name: needs root (containerd, runsc, CNI, iptables): sudo make $name" >&2
		return 1
	fi
	scripts/setup-host.sh
	ctrd_dir=$(mktemp -d /var/tmp/bottle-bench.XXXXXX)
	# shellcheck disable=SC2064 # the directory is fixed now
	trap "trap '' INT TERM; scripts/containerd-test.sh stop '$ctrd_dir'" EXIT
	scripts/containerd-test.sh start "$ctrd_dir"
	eval "$(scripts/containerd-test.sh env "$ctrd_dir")"
	go test -count=1 -timeout 30m -run '^$' -bench "^$bench\$" -benchtime "${count}x" ./e2e
}
