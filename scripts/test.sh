#!/usr/bin/env bash
# test.sh: THE test command (`sudo make test`; CI runs it as root with CI=true).
#
# As root: installs/checks host prerequisites (scripts/setup-host.sh, no --system; it
# also installs buildkitd and buildctl, which e2e/imagebuild_test.go's builds start),
# starts a private containerd in a fresh directory under /var/tmp, runs `make lint` and
# `go test -p 1 -count=1 -timeout 60m -v ./...` against it, and always stops that containerd
# and removes its directory (also on failure or Ctrl-C).
# Exported to the tests: BOTTLE_TEST_CONTAINERD_ADDRESS (socket), CONTAINERD_ADDRESS
# (same), BOTTLE_TEST_RUNC_ROOT (runc/runsc --root for test containers),
# BOTTLE_TEST_BUILD_AGENT_IMAGE=1 (tests build the Claude Code agent image),
# BOTTLE_TEST_NERDCTL (a pinned nerdctl, scripts/install-nerdctl.sh), BOTTLE_TEST_K8S_BIN
# (etcd and kube-apiserver, scripts/k8s-build.sh).
# Without root: runs only `go test -count=1 ./...`; end-to-end tests skip themselves
# (unless CI=true, where they fail).
# Exit status: non-zero when lint or any test failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="/usr/local/go/bin:/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"

log() { printf '\n=== test.sh: %s\n' "$*"; }

readonly NERDCTL_DIR=/var/cache/bottle/test-tools

if [[ $(id -u) -ne 0 ]]; then
	log "not root: running unit tests only; end-to-end tests (containerd, runsc, CNI, iptables) skip. Run 'sudo make test' for the full suite."
	exec go test -count=1 ./...
fi

log "host prerequisites"
scripts/setup-host.sh
make --no-print-directory tools
# nerdctl, for the test of bottle's nerdctl interop (e2e/nerdctl_test.go).
scripts/install-nerdctl.sh "$NERDCTL_DIR"
export BOTTLE_TEST_NERDCTL="$NERDCTL_DIR/nerdctl"
# The one-node cluster of e2e/k8s_test.go (etcd, kube-apiserver, kubelet, kube-proxy,
# kube-network-policies), which scripts/k8s-cluster.sh starts on loopback and a private
# containerd, and stops: built from the Go module proxy once, then cached in
# /var/cache/bottle/k8s.
log "Kubernetes binaries"
k8s_start=$SECONDS
BOTTLE_TEST_K8S_BIN=$(scripts/k8s-build.sh all)
export BOTTLE_TEST_K8S_BIN
log "Kubernetes binaries ready in $((SECONDS - k8s_start)) s"

ctrd_dir=$(mktemp -d /var/tmp/bottle-ctrd.XXXXXX)
# shellcheck disable=SC2317 # invoked by the EXIT trap
stop_containerd() {
	local rc=$?
	# Cleanup must finish even on a second Ctrl-C (ignored signals are inherited).
	trap - EXIT
	trap '' INT TERM
	log "stopping the test containerd"
	scripts/containerd-test.sh stop "$ctrd_dir" || rc=1
	exit "$rc"
}
trap stop_containerd EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting a private containerd in $ctrd_dir"
scripts/containerd-test.sh start "$ctrd_dir"
eval "$(scripts/containerd-test.sh env "$ctrd_dir")"
echo "BOTTLE_TEST_CONTAINERD_ADDRESS=$BOTTLE_TEST_CONTAINERD_ADDRESS"
echo "BOTTLE_TEST_RUNC_ROOT=$BOTTLE_TEST_RUNC_ROOT"
# The Claude Code agent image is built (Debian packages + npm, cached in
# /var/cache/bottle/agent-image) and imported by the tests that need it.
export BOTTLE_TEST_BUILD_AGENT_IMAGE=1

status=0
log "make lint"
if ! make --no-print-directory lint; then
	echo "test.sh: LINT FAILED"
	status=1
fi

# Tests write only into their own temp dirs: the checkout is compared before and after.
tree_status() { git status --porcelain --untracked-files=all 2>/dev/null || true; }
tree_before=$(tree_status)
log "go test -p 1 -count=1 -timeout 60m -v ./..."
start=$SECONDS
# -p 1: e2e packages share the host network state (bridges, iptables, netns files).
if ! go test -p 1 -count=1 -timeout 60m -v ./...; then
	status=1
fi
log "go test took $((SECONDS - start)) s"
if [[ $(tree_status) != "$tree_before" ]]; then
	echo "test.sh: the tests changed the checkout:"
	diff <(echo "$tree_before") <(tree_status) || true
	status=1
fi

if ((status == 0)); then
	log "PASS"
else
	log "FAIL"
fi
exit "$status"
