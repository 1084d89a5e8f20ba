#!/usr/bin/env bash
# setup-host.sh [--system]
#
# Installs what bottle needs on a Debian 12 host (run as root):
#   - Debian packages: runc, CNI plugins, iptables, iproute2, busybox-static, ...
#   - containerd v2 (daemon, runc shim, ctr) and a STATIC gVisor runsc plus gVisor's
#     shim, built with `go install` from the Go module proxy (Go at /usr/local/go);
#     BuildKit's buildkitd and buildctl (scripts/install-buildkit.sh).
# Idempotent: every step is skipped when its result is already present, so a second
# run takes about a second.
#
# --system  additionally writes /etc/containerd/bottle-config.toml and starts
#           containerd on /run/containerd/containerd.sock unless something already
#           answers there (a containerd the user runs is only checked, never replaced):
#           a systemd unit (bottle-containerd.service), or without systemd a background
#           process. It keeps running; what was started and the command that stops it
#           are printed.
#
# Environment (mainly for testing this script):
#   BOTTLE_BIN_DIR   where binaries go (default /usr/local/bin)
#   BOTTLE_SKIP_APT  set to 1 to skip the Debian package step
set -euo pipefail
# shellcheck source=scripts/lib/containerd-config.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/containerd-config.sh"

readonly CONTAINERD_VERSION=v2.2.9
readonly GVISOR_VERSION=v0.0.0-20260905035102-160fafc42237
readonly APT_PACKAGES=(
	runc
	containernetworking-plugins
	iptables
	iproute2
	busybox-static
	git
	ca-certificates
	openssh-client
	binutils # readelf: proves runsc is static
	util-linux # flock, setsid, nsenter, setpriv (a test runs bottle as nobody)
	procps     # pgrep (scripts/containerd-test.sh)
	libc6-dev  # cgo build of containerd (gcc only recommends it)
	mmdebstrap # the Claude Code agent image without Docker (scripts/build-agent-image.sh)
	libdpkg-perl # mmdebstrap: finds the archive keyring (only recommended by it)
	gpg          # mmdebstrap: keyring handling (only recommended by it)
	openssl      # the test control plane's service-account keys (scripts/k8s-cluster.sh)
	curl         # its readiness check
	nftables     # nft: the test cluster's kube-proxy (nftables mode, its own table)
)

BIN_DIR=${BOTTLE_BIN_DIR:-/usr/local/bin}
readonly BIN_DIR
readonly SYSTEM_CONFIG=/etc/containerd/bottle-config.toml
readonly SYSTEM_SOCKET=/run/containerd/containerd.sock
readonly SYSTEM_PIDFILE=/run/bottle-containerd.pid
readonly SYSTEM_LOG=/var/log/bottle-containerd.log
readonly SYSTEMD_UNIT=/etc/systemd/system/bottle-containerd.service

: "${HOME:=/root}" # go needs it for its caches (cron/CI may run without HOME)
export HOME
export PATH="/usr/local/go/bin:$BIN_DIR:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

log() { printf 'setup-host: %s\n' "$*"; }
die() {
	printf 'setup-host: ERROR: %s\n' "$*" >&2
	exit 1
}

usage() {
	sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
}

system=0
for arg in "$@"; do
	case $arg in
	--system) system=1 ;;
	-h | --help)
		usage
		exit 0
		;;
	*) die "unknown argument '$arg' (usage: $0 [--system])" ;;
	esac
done

[[ $(id -u) -eq 0 ]] || die "must run as root (try: sudo $0 $*)"
command -v go >/dev/null || die "Go not found at /usr/local/go/bin or on PATH; install Go >= 1.26 first"
mkdir -p "$BIN_DIR"

temp_dirs=()
cleanup() { ((${#temp_dirs[@]} == 0)) || rm -rf "${temp_dirs[@]}"; }
trap cleanup EXIT

# One setup at a time: concurrent runs would race on apt and on the installed binaries.
mkdir -p /run/lock
exec 9>/run/lock/bottle-setup-host.lock
if command -v flock >/dev/null; then
	flock 9
fi

# ---------------------------------------------------------------- Debian packages
install_packages() {
	if [[ ${BOTTLE_SKIP_APT:-0} == 1 ]]; then
		log "apt: skipped (BOTTLE_SKIP_APT=1)"
		return
	fi
	local missing=() p status
	for p in "${APT_PACKAGES[@]}"; do
		status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
		[[ $status == "install ok installed" ]] || missing+=("$p")
	done
	if ((${#missing[@]} == 0)); then
		log "apt: all ${#APT_PACKAGES[@]} packages present"
		return
	fi
	command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and apt-get not found; this script supports Debian 12"
	log "apt: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# ---------------------------------------------------------------- Go-built binaries
# built_from BINARY PACKAGE VERSION: true when BINARY was built by `go install PACKAGE@VERSION`.
# `go version -m` reads the build info embedded in the binary, so no stamp file can go stale.
built_from() {
	local bin=$1 pkg=$2 version=$3 info
	[[ -x $bin ]] || return 1
	info=$(go version -m "$bin" 2>/dev/null) || return 1
	grep -qE "^[[:space:]]path[[:space:]]+${pkg//./\\.}\$" <<<"$info" || return 1
	grep -qE "^[[:space:]]mod[[:space:]]+[^[:space:]]+[[:space:]]+${version//./\\.}([[:space:]]|\$)" <<<"$info"
}

# is_static BINARY: true when the ELF file has no program interpreter (PT_INTERP).
# runsc must be static: after pivot_root it re-executes /proc/self/exe and a dynamic
# binary fails with "fork/exec /proc/self/exe: no such file or directory".
is_static() {
	local headers
	headers=$(LC_ALL=C readelf -lW "$1" 2>/dev/null) || return 1
	grep -qE '^[[:space:]]*LOAD[[:space:]]' <<<"$headers" || return 1
	! grep -qE '^[[:space:]]*INTERP[[:space:]]' <<<"$headers"
}

# go_install NAME PACKAGE VERSION CGO [STATIC]: installs PACKAGE@VERSION as BIN_DIR/NAME.
# Builds into a temporary GOBIN and renames into place, so a running daemon or shim
# never sees a half-written file ("text file busy" cannot happen either).
go_install() {
	local name=$1 pkg=$2 version=$3 cgo=$4 static=${5:-} target="$BIN_DIR/$1"
	if built_from "$target" "$pkg" "$version" && { [[ -z $static ]] || is_static "$target"; }; then
		log "$name: $version present"
		return
	fi
	local tmp start
	tmp=$(mktemp -d "$BIN_DIR/.bottle-install.XXXXXX")
	temp_dirs+=("$tmp")
	start=$SECONDS
	log "$name: building $pkg@$version (CGO_ENABLED=$cgo; takes minutes on a cold cache)"
	GOBIN=$tmp CGO_ENABLED=$cgo GOFLAGS=-buildvcs=false go install "$pkg@$version"
	local built="$tmp/${pkg##*/}"
	[[ -x $built ]] || die "$name: go install produced no ${pkg##*/} in $tmp"
	if [[ -n $static ]] && ! is_static "$built"; then
		die "$name: $built is dynamically linked; it must be static (CGO_ENABLED=0)"
	fi
	chmod 0755 "$built"
	mv -f "$built" "$target"
	rm -rf "$tmp"
	log "$name: installed $target ($((SECONDS - start)) s)"
}

install_binaries() {
	go_install containerd github.com/containerd/containerd/v2/cmd/containerd "$CONTAINERD_VERSION" 1
	go_install containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 "$CONTAINERD_VERSION" 1
	go_install ctr github.com/containerd/containerd/v2/cmd/ctr "$CONTAINERD_VERSION" 1
	go_install runsc gvisor.dev/gvisor/runsc "$GVISOR_VERSION" 0 static
	go_install containerd-shim-runsc-v1 gvisor.dev/gvisor/shim "$GVISOR_VERSION" 0
	is_static "$BIN_DIR/runsc" || die "$BIN_DIR/runsc is not static"
	# BuildKit, for per-bottle agent images (a private buildkitd per build).
	BOTTLE_BIN_DIR=$BIN_DIR "$(dirname "${BASH_SOURCE[0]}")/install-buildkit.sh"
}

# ---------------------------------------------------------------- --system
write_if_changed() { # PATH MODE, content on stdin
	local path=$1 mode=$2 content
	content=$(cat)
	if [[ -f $path ]] && [[ $(cat "$path") == "$content" ]]; then
		log "$path: up to date"
		return 1
	fi
	mkdir -p "$(dirname "$path")"
	printf '%s\n' "$content" >"$path.tmp"
	chmod "$mode" "$path.tmp"
	mv -f "$path.tmp" "$path"
	log "$path: written"
}

containerd_answers() { # SOCKET
	[[ -S $1 ]] && timeout 10 ctr --address "$1" version >/dev/null 2>&1
}

wait_for_containerd() { # SOCKET LOGFILE|-
	local i
	for ((i = 0; i < 60; i++)); do
		containerd_answers "$1" && return 0
		sleep 0.5
	done
	if [[ $2 == - ]]; then
		journalctl -u bottle-containerd.service -n 30 --no-pager >&2 || true
		die "containerd did not answer on $1 within 30 s (see: journalctl -u bottle-containerd.service)"
	fi
	tail -n 30 "$2" >&2 || true
	die "containerd did not answer on $1 within 30 s (log above: $2)"
}

report_running_containerd() {
	local server_version
	server_version=$(timeout 10 ctr --address "$SYSTEM_SOCKET" version 2>/dev/null |
		awk '/^Server:/{s=1} s && $1=="Version:"{print $2; exit}')
	log "containerd answers on $SYSTEM_SOCKET (server version ${server_version:-unknown})"
	case $server_version in
	v1.* | 1.*) log "WARNING: containerd $server_version is too old for bottle (needs 2.x); stop it and re-run, or point bottle at another socket with --address" ;;
	esac
}

setup_system() {
	local config_changed=0
	{
		echo "# Written by bottle's scripts/setup-host.sh --system."
		containerd_config /var/lib/containerd /run/containerd "$SYSTEM_SOCKET"
	} | write_if_changed "$SYSTEM_CONFIG" 0644 && config_changed=1

	if containerd_answers "$SYSTEM_SOCKET"; then
		report_running_containerd
		if ((config_changed)); then
			log "note: a running containerd does not re-read $SYSTEM_CONFIG (and may not use it at all); restart it yourself if it should"
		fi
		return
	fi
	if [[ -e $SYSTEM_SOCKET ]]; then
		die "$SYSTEM_SOCKET exists but does not answer; another containerd may be starting or hung. Check it (ps, journalctl) and remove a stale socket by hand, then re-run"
	fi

	if [[ -d /run/systemd/system ]] && [[ $(cat /proc/1/comm 2>/dev/null) == systemd ]]; then
		if write_if_changed "$SYSTEMD_UNIT" 0644 <<EOF; then
# Written by bottle's scripts/setup-host.sh --system.
[Unit]
Description=containerd for bottle
Documentation=https://containerd.io
After=network.target local-fs.target

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=$BIN_DIR/containerd --config $SYSTEM_CONFIG
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
EOF
			systemctl daemon-reload
		fi
		log "starting bottle-containerd.service"
		systemctl enable --now bottle-containerd.service
		wait_for_containerd "$SYSTEM_SOCKET" -
		containerd_started_note "systemd unit bottle-containerd.service (enabled: it starts again at boot)" \
			"$SYSTEM_SOCKET" "$SYSTEM_CONFIG" "journalctl -u bottle-containerd.service" \
			"systemctl disable --now bottle-containerd.service"
	else
		local pid
		pid=$(cat "$SYSTEM_PIDFILE" 2>/dev/null || true)
		if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null &&
			[[ $(cat "/proc/$pid/comm" 2>/dev/null) == containerd ]]; then
			log "containerd (pid $pid from $SYSTEM_PIDFILE) is running but not answering yet; waiting"
		else
			log "no systemd: starting containerd in the background (pid file $SYSTEM_PIDFILE, log $SYSTEM_LOG)"
			mkdir -p "$(dirname "$SYSTEM_LOG")"
			# 9>&-: the daemon must not inherit (and hold) the setup lock.
			"${DAEMON_ENV[@]}" setsid "$BIN_DIR/containerd" --config "$SYSTEM_CONFIG" </dev/null >>"$SYSTEM_LOG" 2>&1 9>&- &
			pid=$!
			echo "$pid" >"$SYSTEM_PIDFILE"
		fi
		wait_for_containerd "$SYSTEM_SOCKET" "$SYSTEM_LOG"
		containerd_started_note "background process, pid $pid (pid file $SYSTEM_PIDFILE; not started again at boot)" \
			"$SYSTEM_SOCKET" "$SYSTEM_CONFIG" "$SYSTEM_LOG" "kill $pid"
	fi
	report_running_containerd
}

start=$SECONDS
install_packages
install_binaries
if ((system)); then
	setup_system
fi
log "done in $((SECONDS - start)) s"
