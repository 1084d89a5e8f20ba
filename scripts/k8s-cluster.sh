#!/usr/bin/env bash
# k8s-cluster.sh start|stop|env DIR
#
# A private one-node Kubernetes cluster for tests (binaries built by scripts/k8s-build.sh),
# with every file (data, certs, token file, service-account keys, kubeconfig, logs, pid
# files, the node's containerd, CNI state and pod netns) under DIR:
#   - control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager (only the
#     endpointslice, serviceaccount and nodelifecycle controllers), kube-scheduler;
#   - the node "127.0.0.1" (the API server reaches its kubelet by that name): a private
#     containerd with CRI (its own socket, root, state; handler `runsc` = gVisor through
#     the runc shim with BinaryName, as bottle runs it; RuntimeClass `gvisor`; every
#     registry a closed loopback port), a CNI bridge of its own (name in DIR/bridge, pod
#     subnet POD_CIDR), the kubelet, kube-proxy in nftables mode (its own `kube-proxy`
#     tables: the Services' cluster IPs) and kube-network-policies (its own
#     `kube-network-policies` table: NetworkPolicy enforcement);
#   - a pause image made locally (scripts/mkimage; no registry is used) pinned as the
#     sandbox image.
# TEST ONLY, never shipped: both runtime handlers call a wrapper in DIR that (1) sets a
# negative process.oomScoreAdj to 0 (the kubelet's -998 for the pause container; this
# kernel refuses it), (2) runs each Pod's sandbox (pause) container under runc and each
# app container as its own sandbox in the Pod's network namespace: the runc shim (the
# runsc shim does not run on the CI VMs) cannot follow a container that joins a gVisor
# sandbox.
#   start DIR  pick free loopback ports, start it all, wait until the API server is ready
#              and the node is Ready (each 90 s); a failed start stops what it started
#   stop DIR   delete the cluster's Pods (the kubelet tears their networks down), stop
#              every process by the pid files in DIR (never by name), remove the nftables
#              tables, the bridge, the node's mounts and DIR
#   env DIR    print `export` lines: BOTTLE_TEST_KUBECONFIG (token auth, the API
#              server's self-signed cert as its CA) and BOTTLE_TEST_K8S_CONTAINERD (the
#              node containerd's socket: tests import images into its k8s.io namespace)
# Env: BOTTLE_K8S_BIN (default: the bin dir scripts/k8s-build.sh prints; built if absent)
# Keep DIR short (e.g. mktemp -d /var/tmp/bottle-k8s.XXXXXX): unix socket path limit.
set -euo pipefail
# shellcheck source=scripts/lib/containerd-config.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/containerd-config.sh"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

export PATH="/usr/local/bin:/usr/local/go/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"

readonly MARKER=.bottle-k8s-cluster
readonly START_TIMEOUT_S=90
readonly STOP_TIMEOUT_S=15
# The Services' cluster IPs: virtual addresses nothing on this host routes.
readonly SERVICE_CIDR=10.254.0.0/24
# The Pods' addresses, on the cluster's own bridge (start refuses if a host route
# overlaps it).
readonly POD_CIDR=10.253.0.0/24
readonly NODE_NAME=127.0.0.1
readonly PAUSE_IMAGE=bottle.test/k8s-pause:1
readonly CNI_NETWORK=bottle-k8s-test
# Processes in start order; stop goes in reverse.
readonly PROCS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy kube-network-policies)

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
	[[ $(id -u) -eq 0 ]] || die "must run as root"
	[[ ! -e $dir || -z $(ls -A "$dir") ]] || die "$dir is not empty"
	local bin=${BOTTLE_K8S_BIN:-}
	if [[ -z $bin ]]; then
		bin=$("$repo/scripts/k8s-build.sh")
	fi
	for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kube-network-policies-xtq; do
		[[ -x $bin/$b ]] || die "$bin/$b is missing (run scripts/k8s-build.sh)"
	done
	for b in containerd ctr runsc nft perl openssl curl go; do
		command -v "$b" >/dev/null || die "$b not found (scripts/setup-host.sh installs it)"
	done
	for p in bridge host-local loopback; do
		[[ -x /usr/lib/cni/$p ]] || die "CNI plugin /usr/lib/cni/$p missing (scripts/setup-host.sh installs it)"
	done
	local sock=$dir/containerd.sock
	((${#sock} + 6 <= 107)) || die "DIR too long for a unix socket path ($sock)"
	if ip -o -4 route show table all | awk '{print ($1=="local"||$1=="broadcast") ? $2 : $1}' | grep -q '^10\.253\.'; then
		die "a host route overlaps the pod subnet $POD_CIDR; not starting"
	fi
	mkdir -p "$dir/certs" "$dir/etcd" "$dir/containerd" "$dir/cni/net.d" "$dir/kubelet"
	chmod 711 "$dir"
	touch "$dir/$MARKER"
	# A start that fails leaves nothing running.
	trap 'stop_all' EXIT
	local etcd_port peer_port api_port token
	etcd_port=$(free_port)
	peer_port=$(free_port)
	api_port=$(free_port)
	token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
	# curl reads the header from a file: the token stays off every command line.
	(umask 077 && printf '%s,bottle-test-admin,bottle-test-admin,system:masters\n' "$token" >"$dir/tokens.csv" &&
		printf 'Authorization: Bearer %s\n' "$token" >"$dir/auth-header")
	openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
	openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null

	launch etcd "$bin/etcd" --name default --data-dir "$dir/etcd" \
		--listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
		--listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
		--initial-cluster "default=http://127.0.0.1:$peer_port" \
		--listen-metrics-urls ""

	# The node registers as "127.0.0.1" and the API server reaches its kubelet (logs,
	# exec) by that name: nothing but loopback.
	launch kube-apiserver "$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
		--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
		--cert-dir "$dir/certs" --token-auth-file "$dir/tokens.csv" --authorization-mode RBAC \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "$dir/sa.pub" --service-account-signing-key-file "$dir/sa.key" \
		--service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=false \
		--kubelet-preferred-address-types Hostname,InternalIP

	local server="https://127.0.0.1:$api_port"
	wait_for "the API server" curl -fsS --cacert "$dir/certs/apiserver.crt" -H @"$dir/auth-header" "$server/readyz"
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

	# Only what the tests need: EndpointSlices (kube-proxy routes Services by them), each
	# namespace's default ServiceAccount (admission looks it up) and the node lifecycle
	# (it lifts the not-ready taint the kubelet registers with).
	launch kube-controller-manager "$bin/kube-controller-manager" --kubeconfig "$dir/kubeconfig" \
		--controllers endpointslice,serviceaccount,nodelifecycle --leader-elect=false \
		--bind-address 127.0.0.1 --secure-port 0 --use-service-account-credentials=false
	launch kube-scheduler "$bin/kube-scheduler" --kubeconfig "$dir/kubeconfig" --leader-elect=false \
		--bind-address 127.0.0.1 --secure-port 0

	start_node "$bin" "$server"
	trap - EXIT
}

# start_node BIN SERVER starts the node's containerd, kubelet, kube-proxy and
# kube-network-policies and waits until the node is Ready.
start_node() {
	local bin=$1 server=$2 sock=$dir/containerd.sock
	local bridge
	bridge=bk8s-$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n')
	echo "$bridge" >"$dir/bridge"
	# TEST ONLY (see the header). The runc shim cannot follow a container that joins a
	# gVisor sandbox (it waits on the sandbox's pid: the container's exit and output never
	# reach it); production nodes run the runsc shim, which this VM cannot. So the Pod's
	# sandbox (pause) container runs under runc, holding the Pod's network namespace, and
	# each app container is a gVisor sandbox of its own in that namespace. And a negative
	# oom_score_adj (the kubelet's -998 for the pause) is set to 0: this kernel refuses it.
	mkdir -p "$dir/pause-ids"
	write_wrapper runc-test-wrapper runc
	write_wrapper runsc-test-wrapper runsc
	cat >"$dir/cni/net.d/10-$CNI_NETWORK.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$dir/cni/ipam"
      }
    },
    {"type": "loopback"}
  ]
}
JSON
	{
		echo "# The test cluster's node containerd (scripts/k8s-cluster.sh)."
		cat <<EOF
version = 3
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "$sock"

[ttrpc]
  address = "$sock.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "$dir/containerd/opt"

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "$PAUSE_IMAGE"

[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = "$dir/containerd/certs.d"

[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  enable_cdi = false

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["/usr/lib/cni"]
  conf_dir = "$dir/cni/net.d"
  max_conf_num = 1

[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = "runc"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    BinaryName = "$dir/runc-test-wrapper"
    Root = "$dir/runc"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runsc]
  runtime_type = "io.containerd.runc.v2"
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runsc.options]
    BinaryName = "$dir/runsc-test-wrapper"
    Root = "$dir/runsc"
EOF
	} >"$dir/containerd/config.toml"
	# Every registry is a closed loopback port: the node pulls nothing (tests import their
	# images), and a missing image never makes it look up or contact a real registry.
	mkdir -p "$dir/containerd/certs.d/_default"
	cat >"$dir/containerd/certs.d/_default/hosts.toml" <<EOF
server = "http://127.0.0.1:1"

[host."http://127.0.0.1:1"]
  capabilities = ["pull", "resolve"]
EOF
	launch containerd "${DAEMON_ENV[@]}" setsid containerd --config "$dir/containerd/config.toml"
	wait_for "containerd" ctr --address "$sock" version

	# The sandbox (pause) image, made here: busybox's sleep as PID 1 of each Pod.
	local pause_tar=$dir/pause.tar
	(cd "$repo" && go run ./scripts/mkimage binary "$PAUSE_IMAGE" "$pause_tar" /bin/busybox /bin/busybox /bin/busybox sleep 2147483647) ||
		die "making the pause image failed"
	ctr --address "$sock" -n k8s.io images import "$pause_tar" >/dev/null || die "importing the pause image failed"
	rm -f "$pause_tar"

	local kubelet_port healthz_port
	kubelet_port=$(free_port)
	healthz_port=$(free_port)
	# Pods that use the cluster's DNS get a resolver where nothing answers: no Pod of the
	# tests may reach a real name server.
	echo "nameserver 127.0.0.1" >"$dir/resolv.conf"
	cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
containerRuntimeEndpoint: unix://$sock
podLogsDir: $dir/kubelet/pod-logs
resolvConf: $dir/resolv.conf
# Imported images have no registry to come back from: never collect them, never evict.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "0%"
  nodefs.available: "0%"
  imagefs.available: "0%"
maxPods: 30
EOF
	launch kubelet "$bin/kubelet" --config "$dir/kubelet.yaml" --kubeconfig "$dir/kubeconfig" \
		--root-dir "$dir/kubelet" --cert-dir "$dir/kubelet/pki" --hostname-override "$NODE_NAME"

	# Services' cluster IPs, in kube-proxy's own nftables tables; conntrack sysctls left
	# as they are (0); pod traffic to a Service keeps its source (policies see the Pod).
	launch kube-proxy "$bin/kube-proxy" --kubeconfig "$dir/kubeconfig" --proxy-mode nftables \
		--hostname-override "$NODE_NAME" --cluster-cidr "$POD_CIDR" \
		--conntrack-max-per-core 0 --conntrack-min 0 \
		--conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
		--healthz-bind-address "127.0.0.1:$(free_port)" --metrics-bind-address "127.0.0.1:$(free_port)"
	# NetworkPolicy enforcement (fail closed: no --fail-open). This kernel fixed the DNS
	# conntrack race the 1766 workaround is for; the containerd has no NRI.
	KUBECONFIG=$dir/kubeconfig launch kube-network-policies "$bin/kube-network-policies-xtq" \
		--hostname-override "$NODE_NAME" --disable-nri --netfilter-bug-1766-fix=false \
		--metrics-bind-address "127.0.0.1:$(free_port)" --v 2

	wait_for "the node to be Ready and schedulable" node_ready "$server"
	# The gVisor RuntimeClass the agent Pods name.
	curl -fsS --cacert "$dir/certs/apiserver.crt" -H @"$dir/auth-header" -H "Content-Type: application/json" \
		-X POST "$server/apis/node.k8s.io/v1/runtimeclasses" \
		-d '{"apiVersion":"node.k8s.io/v1","kind":"RuntimeClass","metadata":{"name":"gvisor"},"handler":"runsc"}' >/dev/null ||
		die "creating the RuntimeClass gvisor failed"
	log "node $NODE_NAME Ready (containerd $sock, bridge $bridge, pods $POD_CIDR)"
}

# write_wrapper NAME RUNTIME writes the TEST ONLY runtime wrapper DIR/NAME (see the
# header and start_node): it zeroes a negative oom_score_adj, runs Pod sandbox (pause)
# containers under runc, and the others under RUNTIME (each its own sandbox), whose
# "sandbox is not running" on a kill it reports as runc's "container not running" (what
# the runc shim takes for an already exited container).
write_wrapper() {
	cat >"$dir/$1" <<SH
#!/bin/sh
# TEST ONLY, written by bottle's scripts/k8s-cluster.sh; never shipped (see there).
prev=
for a in "\$@"; do
	if [ "\$prev" = --bundle ] || [ "\$prev" = -b ]; then
		perl -pi -e 's/"oomScoreAdj":\s*-\d+/"oomScoreAdj":0/; s/"io\.kubernetes\.cri\.container-type"/"bottle.test\/cri-container-type"/' "\$a/config.json"
		if grep -q '"bottle.test/cri-container-type":\s*"sandbox"' "\$a/config.json"; then
			: >"$dir/pause-ids/\$(basename "\$a")"
		fi
	fi
	prev=\$a
done
for a in "\$@"; do
	[ -n "\$a" ] && [ -e "$dir/pause-ids/\$a" ] && exec runc "\$@"
done
# The shim knows a kill of an exited container by runc's words, not runsc's.
for a in "\$@"; do
	if [ "\$a" = kill ]; then
		out=\$($2 "\$@" 2>&1) && exit 0
		case "\$out" in *"is not running"*) echo "container not running" >&2 ;; *) echo "\$out" >&2 ;; esac
		exit 1
	fi
done
exec $2 "\$@"
SH
	chmod 755 "$dir/$1"
}

node_ready() {
	local node
	node=$(curl -fsS --cacert "$dir/certs/apiserver.crt" -H @"$dir/auth-header" "$1/api/v1/nodes/$NODE_NAME" 2>/dev/null | tr -d ' \n')
	[[ $node == *'"type":"Ready","status":"True"'* && $node != *'"taints"'* ]]
}

# launch NAME CMD... starts CMD in the background, its output in DIR/NAME.log, its pid in
# DIR/NAME.pid.
launch() {
	local name=$1
	shift
	"$@" </dev/null >"$dir/$name.log" 2>&1 &
	echo $! >"$dir/$name.pid"
}

# wait_for WHAT CMD... retries CMD until it succeeds (START_TIMEOUT_S); it fails when one
# of the started processes exited.
wait_for() {
	local what=$1 p
	shift
	for _ in $(seq $((START_TIMEOUT_S * 2))); do
		"$@" >/dev/null 2>&1 && return 0
		for p in "${PROCS[@]}"; do
			[[ -f $dir/$p.pid ]] || continue
			kill -0 "$(<"$dir/$p.pid")" 2>/dev/null || {
				tail -20 "$dir/$p.log" >&2
				die "$p exited (waiting for $what)"
			}
		done
		sleep 0.5
	done
	for p in "${PROCS[@]}"; do
		[[ -f $dir/$p.log ]] && { echo "--- $p" >&2; tail -5 "$dir/$p.log" >&2; }
	done
	die "$what: not within ${START_TIMEOUT_S}s"
}

# api METHOD PATH calls the API server with the cluster's admin token.
api() {
	local server
	server=$(sed -n 's/^ *server: //p' "$dir/kubeconfig")
	curl -fsS --max-time 10 --cacert "$dir/certs/apiserver.crt" -H @"$dir/auth-header" -X "$1" "$server$2"
}

# drain_pods deletes every Pod at once and waits (30 s) until the kubelet has stopped
# them, which tears their networks down through CNI.
drain_pods() {
	[[ -f $dir/kubeconfig && -f $dir/kubelet.pid ]] || return 0
	kill -0 "$(<"$dir/kubelet.pid")" 2>/dev/null || return 0
	local ns
	for ns in $(api GET /api/v1/namespaces 2>/dev/null | tr -d ' \n' | grep -o '"name":"[^"]*"' | cut -d'"' -f4); do
		api DELETE "/api/v1/namespaces/$ns/pods?gracePeriodSeconds=0" >/dev/null 2>&1 || true
	done
	for _ in $(seq 60); do
		api GET /api/v1/pods 2>/dev/null | tr -d ' \n' | grep -q '"items":\[\]' && return 0
		sleep 0.5
	done
	log "Pods still present after 30 s; removing them through containerd"
}

# remove_node_leftovers deletes the node containerd's tasks and containers (what the
# kubelet did not stop) through that containerd.
remove_node_leftovers() {
	local sock=$dir/containerd.sock id
	[[ -S $sock ]] || return 0
	timeout 5 ctr --address "$sock" version >/dev/null 2>&1 || return 0
	for id in $(timeout 10 ctr --address "$sock" -n k8s.io tasks list -q 2>/dev/null); do
		timeout 20 ctr --address "$sock" -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
		timeout 20 ctr --address "$sock" -n k8s.io tasks delete -f "$id" >/dev/null 2>&1 || true
	done
	for id in $(timeout 10 ctr --address "$sock" -n k8s.io containers list -q 2>/dev/null); do
		timeout 20 ctr --address "$sock" -n k8s.io containers delete "$id" >/dev/null 2>&1 || true
	done
}

# kill_node_shims ends, by PID, shims of the node containerd (and their children) that
# outlived it.
kill_node_shims() {
	local p cmdline kids
	for p in /proc/[0-9]*; do
		cmdline=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
		[[ $cmdline == *containerd-shim*" -address $dir/containerd.sock"* ]] || continue
		kids=$(pgrep -P "${p#/proc/}" || true)
		# shellcheck disable=SC2086 # word splitting of the pid list is intended
		kill -KILL "${p#/proc/}" $kids 2>/dev/null || true
	done
}

# mounts_under prints mount points below DIR, deepest first.
mounts_under() {
	local mp
	while read -r _ _ _ _ mp _; do
		mp=$(printf '%b' "$mp")
		[[ $mp == "$dir"/* ]] && printf '%s\n' "$mp"
	done </proc/self/mountinfo | sort -r -u
}

# stop_all stops everything start made, in reverse order, and removes its host objects.
stop_all() {
	trap '' INT TERM HUP
	drain_pods
	local i
	for ((i = ${#PROCS[@]} - 1; i >= 0; i--)); do
		[[ ${PROCS[i]} == containerd ]] && remove_node_leftovers
		stop_pid "${PROCS[i]}"
	done
	kill_node_shims
	# The tables are named by their owners; kube-network-policies and kube-proxy remove
	# them on a clean exit, this covers a killed one.
	local t
	for t in "inet kube-network-policies" "ip kube-proxy" "ip6 kube-proxy"; do
		# shellcheck disable=SC2086 # family and name are two words
		nft list table $t >/dev/null 2>&1 && nft delete table $t
	done
	if [[ -f $dir/bridge ]]; then
		ip link del "$(<"$dir/bridge")" 2>/dev/null || true
	fi
	# libcni caches each attachment's result under this fixed path, by network name.
	rm -f /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null || true
	local mp
	for _ in 1 2 3; do
		mapfile -t mps < <(mounts_under)
		((${#mps[@]} > 0)) || break
		for mp in "${mps[@]}"; do
			umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || log "cannot unmount $mp"
		done
	done
}

stop() {
	[[ -e $dir ]] || return 0
	[[ -f $dir/$MARKER ]] || die "$dir was not made by $0; not removing it"
	stop_all
	mapfile -t mps < <(mounts_under)
	((${#mps[@]} == 0)) || die "still mounted under $dir: ${mps[*]}; not removing it"
	rm -rf --one-file-system -- "$dir"
}

case $cmd in
start) start ;;
stop) stop ;;
env)
	[[ -f $dir/kubeconfig ]] || die "no cluster in $dir"
	printf 'export BOTTLE_TEST_KUBECONFIG=%q\n' "$dir/kubeconfig"
	printf 'export BOTTLE_TEST_K8S_CONTAINERD=%q\n' "$dir/containerd.sock"
	;;
*) die "usage: $0 start|stop|env DIR" ;;
esac
