#!/usr/bin/env bash
# install-nerdctl.sh [DIR]: installs the pinned nerdctl into DIR (default
# /var/cache/bottle/test-tools) for the end-to-end test of bottle's nerdctl interop
# (e2e/nerdctl_test.go). scripts/test.sh runs it. Idempotent: skipped when DIR/nerdctl
# was built from the pinned version (`go version -m` reads that from the binary).
#
# nerdctl cannot be `go install`ed at a version (its go.mod has replace directives), so
# it is built from a throwaway module that requires it. v2.0.4 is the newest release
# whose dependencies are all served by the Go module proxy here (v2.1 and later need
# the unpublished module github.com/containerd/nerdctl/mod/tigron); its containerd
# v2.0 client talks to containerd v2.2 daemons.
set -euo pipefail

readonly NERDCTL_VERSION=v2.0.4
readonly PKG=github.com/containerd/nerdctl/v2/cmd/nerdctl
dir=${1:-/var/cache/bottle/test-tools}
target="$dir/nerdctl"

log() { printf 'install-nerdctl: %s\n' "$*"; }

: "${HOME:=/root}" # go needs it for its caches
export HOME PATH="/usr/local/go/bin:$PATH"

if info=$(go version -m "$target" 2>/dev/null) &&
	grep -qE "^[[:space:]]path[[:space:]]+${PKG//./\\.}\$" <<<"$info" &&
	grep -qE "^[[:space:]]mod[[:space:]]+github\.com/containerd/nerdctl/v2[[:space:]]+${NERDCTL_VERSION//./\\.}([[:space:]]|\$)" <<<"$info"; then
	log "nerdctl $NERDCTL_VERSION present at $target"
	exit 0
fi
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS
log "building nerdctl $NERDCTL_VERSION into $target (about a minute on a cold cache)"
cd "$work"
go mod init bottle.invalid/nerdctl-build >/dev/null 2>&1
go get "$PKG@$NERDCTL_VERSION" >/dev/null 2>&1 || go get "$PKG@$NERDCTL_VERSION"
CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -o "$work/nerdctl" "$PKG"
mv -f "$work/nerdctl" "$target"
log "installed $target ($((SECONDS - start)) s)"
