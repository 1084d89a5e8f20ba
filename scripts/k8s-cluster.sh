#!/usr/bin/env bash
# k8s-cluster.sh start|stop|env DIR
#
# A private Kubernetes control plane for tests: etcd and kube-apiserver (built by
# scripts/k8s-build.sh) listening only on 127.0.0.1, with every file (data, certs, token
# file, service-account keys, kubeconfig, logs, pid files) under DIR.
#   start DIR  pick free loopback ports, start etcd and kube-apiserver, wait until the
#              API server is ready (90 s)
#   stop DIR   stop the two processes by the pids in DIR (never by name), remove DIR
#   env DIR    print `export` lines: BOTTLE_TEST_KUBECONFIG (token auth, the API
#              server's self-signed cert as its CA)
# Env: BOTTLE_K8S_BIN (default: the bin dir scripts/k8s-build.sh prints; built if absent)
set -euo pipefail

export PATH="/usr/local/bin:/usr/local/go/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"

readonly MARKER=.bottle-k8s-cluster
readonly START_TIMEOUT_S=90
readonly STOP_TIMEOUT_S=15
# The Services' cluster IPs: virtual addresses nothing on this host routes.
readonly SERVICE_CIDR=10.254.0.0/24

log() { printf 'k8s-cluster: %s\n' "$*" >&2; }
die() {
	printf 'k8s-cluster: ERROR: %s\n' "$*" >&2
	exit 1
}

(($# == 2)) || die "usage: $0 start|stop|env DIR"
cmd=$1
[[ -n $2 ]] || die "DIR is empty"
dir=$(realpath -m -- "$2")
[[ $dir != / ]] || die "refusing DIR=/"

# free_port prints a loopback TCP port nothing listens on.
free_port() {
	local p
	for _ in $(seq 50); do
		p=$((20000 + RANDOM % 20000))
		if ! ss -Hltn "sport = :$p" | grep -q .; then
			echo "$p"
			return
		fi
	done
	die "no free port"
}

stop_pid() {
	local name=$1 pidfile=$dir/$1.pid pid
	[[ -f $pidfile ]] || return 0
	pid=$(<"$pidfile")
	if kill -0 "$pid" 2>/dev/null; then
		kill "$pid"
		for _ in $(seq $((STOP_TIMEOUT_S * 10))); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "$name (pid $pid) did not stop; killing it"
			kill -9 "$pid" || true
		fi
	fi
	rm -f "$pidfile"
}

start() {
	[[ ! -e $dir || -z $(ls -A "$dir") ]] || die "$dir is not empty"
	local bin=${BOTTLE_K8S_BIN:-}
	if [[ -z $bin ]]; then
		bin=$("$(dirname "${BASH_SOURCE[0]}")/k8s-build.sh")
	fi
	for b in etcd kube-apiserver; do
		[[ -x $bin/$b ]] || die "$bin/$b is missing (run scripts/k8s-build.sh)"
	done
	mkdir -p "$dir/certs" "$dir/etcd"
	chmod 700 "$dir"
	touch "$dir/$MARKER"
	# A start that fails leaves nothing running.
	trap 'stop_pid kube-apiserver; stop_pid etcd' EXIT
	local etcd_port peer_port api_port token
	etcd_port=$(free_port)
	peer_port=$(free_port)
	api_port=$(free_port)
	token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
	printf '%s,bottle-test-admin,bottle-test-admin,system:masters\n' "$token" >"$dir/tokens.csv"
	openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
	openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null

	"$bin/etcd" --name default --data-dir "$dir/etcd" \
		--listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
		--listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
		--initial-cluster "default=http://127.0.0.1:$peer_port" \
		--listen-metrics-urls "" >"$dir/etcd.log" 2>&1 &
	echo $! >"$dir/etcd.pid"

	"$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
		--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
		--cert-dir "$dir/certs" --token-auth-file "$dir/tokens.csv" --authorization-mode RBAC \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "$dir/sa.pub" --service-account-signing-key-file "$dir/sa.key" \
		--service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=false \
		>"$dir/kube-apiserver.log" 2>&1 &
	echo $! >"$dir/kube-apiserver.pid"

	local server="https://127.0.0.1:$api_port"
	for _ in $(seq $((START_TIMEOUT_S * 2))); do
		if [[ -f $dir/certs/apiserver.crt ]] &&
			curl -fsS --cacert "$dir/certs/apiserver.crt" -H "Authorization: Bearer $token" "$server/readyz" >/dev/null 2>&1; then
			cat >"$dir/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: bottle-test
  cluster:
    server: $server
    certificate-authority: $dir/certs/apiserver.crt
users:
- name: bottle-test-admin
  user:
    token: $token
contexts:
- name: bottle-test
  context:
    cluster: bottle-test
    user: bottle-test-admin
current-context: bottle-test
KC
			chmod 600 "$dir/kubeconfig"
			log "API server ready at $server"
			trap - EXIT
			return
		fi
		for p in etcd kube-apiserver; do
			kill -0 "$(<"$dir/$p.pid")" 2>/dev/null || {
				tail -20 "$dir/$p.log" >&2
				die "$p exited"
			}
		done
		sleep 0.5
	done
	tail -20 "$dir/kube-apiserver.log" >&2
	die "the API server was not ready within ${START_TIMEOUT_S}s"
}

stop() {
	[[ -e $dir ]] || return 0
	[[ -f $dir/$MARKER ]] || die "$dir was not made by $0; not removing it"
	stop_pid kube-apiserver
	stop_pid etcd
	rm -rf -- "$dir"
}

case $cmd in
start) start ;;
stop) stop ;;
env)
	[[ -f $dir/kubeconfig ]] || die "no cluster in $dir"
	printf 'export BOTTLE_TEST_KUBECONFIG=%q\n' "$dir/kubeconfig"
	;;
*) die "usage: $0 start|stop|env DIR" ;;
esac
