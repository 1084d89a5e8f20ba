#!/usr/bin/env bash
# containerd-test.sh start|restart|stop|env DIR
#
# A PRIVATE containerd for tests: config, root, state, socket, log and pid file all live
# under DIR, so it never touches the host's containerd (if any) and `stop` removes it all.
#   start DIR  write DIR/config.toml, start containerd, wait until it answers (30 s)
#   restart DIR  stop only the daemon (its shims and tasks keep running) and start it
#              again on the same config and state (tests of a containerd restart)
#   stop DIR   remove leftover containers through the private daemon, stop the daemon
#              (only the pid in DIR/containerd.pid), unmount what is left under DIR,
#              then remove DIR
#   env DIR    print `export` lines (eval "$(containerd-test.sh env DIR)"):
#              BOTTLE_TEST_CONTAINERD_ADDRESS and CONTAINERD_ADDRESS (the socket) and
#              BOTTLE_TEST_RUNC_ROOT (DIR/runc, a runc/runsc --root for test containers)
# Keep DIR short (e.g. mktemp -d /var/tmp/bottle-ctrd.XXXXXX): unix socket paths are
# limited to 107 bytes.
set -euo pipefail
# shellcheck source=scripts/lib/containerd-config.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/containerd-config.sh"

export PATH="/usr/local/bin:/usr/local/go/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"

readonly MARKER=.bottle-containerd-test
readonly START_TIMEOUT_S=30
readonly STOP_TIMEOUT_S=15

log() { printf 'containerd-test: %s\n' "$*" >&2; }
die() {
	printf 'containerd-test: ERROR: %s\n' "$*" >&2
	exit 1
}

(($# == 2)) || die "usage: $0 start|restart|stop|env DIR"
cmd=$1
[[ -n $2 ]] || die "DIR is empty"
dir=$(realpath -m -- "$2")
[[ $dir != / ]] || die "refusing DIR=/"

socket=$dir/containerd.sock
pidfile=$dir/containerd.pid
logfile=$dir/containerd.log
config=$dir/config.toml

# daemon_pid prints the pid from the pid file when that process is still our containerd
# (checked by its command line, so a recycled pid is never signalled).
daemon_pid() {
	local pid
	pid=$(cat "$pidfile" 2>/dev/null) || return 1
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	[[ -r /proc/$pid/cmdline ]] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "--config $config" || return 1
	echo "$pid"
}

answers() { [[ -S $socket ]] && timeout 5 ctr --address "$socket" version >/dev/null 2>&1; }

start() {
	[[ $(id -u) -eq 0 ]] || die "must run as root"
	command -v containerd >/dev/null || die "containerd not found; run scripts/setup-host.sh"
	# The ttrpc socket is "<address>.ttrpc", the longest path the daemon creates.
	((${#socket} + 6 <= 107)) || die "DIR too long for a unix socket path ($socket); use a shorter DIR such as /var/tmp/bottle-ctrd.XXXXXX"
	if pid=$(daemon_pid); then
		die "a test containerd already runs for $dir (pid $pid); stop it first"
	fi
	mkdir -p "$dir/root" "$dir/state" "$dir/opt" "$dir/runc"
	chmod 0711 "$dir"
	: >"$dir/$MARKER"
	{
		echo "# Private containerd for bottle's tests (scripts/containerd-test.sh)."
		containerd_config "$dir/root" "$dir/state" "$socket"
		cat <<EOF

[ttrpc]
  address = "$socket.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "$dir/opt"
EOF
	} >"$config"
	launch
}

# launch starts the daemon on $config and waits until it answers.
launch() {
	"${DAEMON_ENV[@]}" setsid containerd --config "$config" </dev/null >>"$logfile" 2>&1 &
	local pid=$!
	echo "$pid" >"$pidfile"
	local i
	for ((i = 0; i < START_TIMEOUT_S * 5; i++)); do
		if answers; then
			log "containerd (pid $pid) answers on $socket"
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			tail -n 40 "$logfile" >&2 || true
			die "containerd exited during start-up (log above: $logfile)"
		fi
		sleep 0.2
	done
	tail -n 40 "$logfile" >&2 || true
	die "containerd (pid $pid) did not answer on $socket within ${START_TIMEOUT_S} s (log above: $logfile); stop it with: $0 stop $dir"
}

# term_daemon PID sends SIGTERM and waits up to STOP_TIMEOUT_S for PID to exit; it fails
# if PID still runs then.
term_daemon() {
	local i
	kill -TERM "$1" 2>/dev/null || true
	for ((i = 0; i < STOP_TIMEOUT_S * 5; i++)); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.2
	done
	! kill -0 "$1" 2>/dev/null
}

# restart stops only the daemon (SIGTERM, by the pid in DIR/containerd.pid; its shims and
# their tasks keep running) and starts it again on the same config, root and state, as a
# containerd upgrade or crash-restart would. A daemon that is not running is just started.
restart() {
	[[ $(id -u) -eq 0 ]] || die "must run as root"
	[[ -e $dir/$MARKER && -f $config ]] || die "$dir was not made by $0 start; refusing to touch it"
	local pid
	if pid=$(daemon_pid); then
		log "stopping containerd (pid $pid) for a restart"
		term_daemon "$pid" || die "containerd (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT_S} s"
	fi
	launch
}

# remove_leftovers deletes tasks and containers that tests left behind, through the
# private daemon itself; each one is reported because it means a test did not clean up.
remove_leftovers() {
	answers || return 0
	local ns id
	for ns in $(timeout 10 ctr --address "$socket" namespaces list -q 2>/dev/null); do
		for id in $(timeout 10 ctr --address "$socket" -n "$ns" tasks list -q 2>/dev/null); do
			log "LEFTOVER task $ns/$id: killing it (a test did not clean up)"
			timeout 20 ctr --address "$socket" -n "$ns" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
			timeout 20 ctr --address "$socket" -n "$ns" tasks delete -f "$id" >/dev/null 2>&1 || true
		done
		for id in $(timeout 10 ctr --address "$socket" -n "$ns" containers list -q 2>/dev/null); do
			log "LEFTOVER container $ns/$id: deleting it (a test did not clean up)"
			timeout 20 ctr --address "$socket" -n "$ns" containers delete "$id" >/dev/null 2>&1 || true
		done
	done
}

# mounts_under prints mount points below $dir, deepest first.
mounts_under() {
	local mp
	while read -r _ _ _ _ mp _; do
		mp=$(printf '%b' "$mp") # mountinfo escapes space, tab, newline, backslash in octal
		[[ $mp == "$dir"/* || $mp == "$dir" ]] && printf '%s\n' "$mp"
	done </proc/self/mountinfo | sort -r -u
}

# kill_orphan_shims ends, by PID, the shims of this daemon (and their runsc processes)
# that outlived it: a task create abandoned by a killed client leaves them running.
kill_orphan_shims() {
	local p cmdline kids
	for p in /proc/[0-9]*; do
		cmdline=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
		[[ $cmdline == *containerd-shim*" -address $dir/containerd.sock"* ]] || continue
		kids=$(pgrep -P "${p#/proc/}" || true)
		log "LEFTOVER shim process ${p#/proc/}: $cmdline"
		# shellcheck disable=SC2086 # word splitting of the pid list is intended
		kill -KILL "${p#/proc/}" $kids 2>/dev/null || true
	done
}

stop() {
	[[ $(id -u) -eq 0 ]] || die "must run as root"
	[[ -d $dir ]] || {
		log "$dir does not exist; nothing to stop"
		return 0
	}
	[[ -e $dir/$MARKER ]] || die "$dir was not made by $0 start (no $MARKER); refusing to touch it"
	# Finish the cleanup even when Ctrl-C reaches the whole process group.
	trap '' INT TERM HUP
	local pid i
	if pid=$(daemon_pid); then
		remove_leftovers
		log "stopping containerd (pid $pid)"
		if ! term_daemon "$pid"; then
			log "containerd (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT_S} s; sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			for ((i = 0; i < 50; i++)); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.1
			done
		fi
	fi
	kill_orphan_shims
	local mp _round
	for _round in 1 2 3; do
		mapfile -t mps < <(mounts_under)
		((${#mps[@]} > 0)) || break
		for mp in "${mps[@]}"; do
			umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || log "cannot unmount $mp"
		done
	done
	mapfile -t mps < <(mounts_under)
	((${#mps[@]} == 0)) || die "still mounted under $dir: ${mps[*]}; not removing it"
	# --one-file-system: never descend into anything mounted after the check above.
	rm -rf --one-file-system -- "$dir"
	log "removed $dir"
}

case $cmd in
start) start ;;
restart) restart ;;
stop) stop ;;
env)
	printf 'export BOTTLE_TEST_CONTAINERD_ADDRESS=%q\n' "$socket"
	printf 'export CONTAINERD_ADDRESS=%q\n' "$socket"
	# runc/runsc state dir for test containers (runc option Root; ctr --runc-root). runsc
	# pins a "null-netns" bind mount in it; under DIR, `stop` removes it.
	printf 'export BOTTLE_TEST_RUNC_ROOT=%q\n' "$dir/runc"
	;;
*) die "unknown command '$cmd' (usage: $0 start|restart|stop|env DIR)" ;;
esac
