#!/usr/bin/env bash
# install-buildkit.sh: installs the pinned BuildKit daemon and client (buildkitd, buildctl)
# into BOTTLE_BIN_DIR (default /usr/local/bin), for per-bottle image builds
# (internal/imagebuild: bottle starts a private buildkitd per build, on containerd's
# store). scripts/setup-host.sh runs it. Idempotent: skipped when both binaries are the
# pinned version's static build.
#
# `go install github.com/moby/buildkit/cmd/buildkitd@VERSION` is refused (its go.mod has
# exclude directives), so both are built inside the downloaded module, static.
set -euo pipefail

readonly BUILDKIT_VERSION=v0.34.2
readonly MODULE=github.com/moby/buildkit
BIN_DIR=${BOTTLE_BIN_DIR:-/usr/local/bin}

log() { printf 'install-buildkit: %s\n' "$*"; }

: "${HOME:=/root}" # go needs it for its caches
export HOME PATH="/usr/local/go/bin:$PATH"

# Built inside the module, the binaries' build info names no module version ("(devel)"):
# the version is stamped in with -X, and `--version` reads it back.
readonly STAMP="-X $MODULE/version.Version=$BUILDKIT_VERSION"

# built_from BINARY: true when BINARY is the pinned version's static build.
built_from() {
	local out
	[[ -x $1 ]] || return 1
	go version -m "$1" 2>/dev/null | grep -qE "^[[:space:]]build[[:space:]]+CGO_ENABLED=0\$" || return 1
	out=$("$1" --version 2>/dev/null) || return 1
	[[ $out == *" $MODULE $BUILDKIT_VERSION"* ]]
}

if built_from "$BIN_DIR/buildkitd" && built_from "$BIN_DIR/buildctl"; then
	log "buildkit $BUILDKIT_VERSION present in $BIN_DIR"
	exit 0
fi
mkdir -p "$BIN_DIR"
work=$(mktemp -d "$BIN_DIR/.bottle-buildkit.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$SECONDS
log "building buildkitd and buildctl $BUILDKIT_VERSION (about 2 minutes on a cold cache)"
dir=$(go mod download -json "$MODULE@$BUILDKIT_VERSION" | sed -nE 's/^[[:space:]]*"Dir": "(.*)",?$/\1/p')
[[ -n $dir && -d $dir ]] || {
	echo "install-buildkit: ERROR: go mod download gave no module dir for $MODULE@$BUILDKIT_VERSION" >&2
	exit 1
}
# The module cache is read-only: build from it without touching its go.mod/go.sum.
cd "$dir"
for cmd in buildkitd buildctl; do
	CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags "$STAMP" -o "$work/$cmd" "./cmd/$cmd"
done
# Rename into place: a running buildkitd never sees a half-written file.
for cmd in buildkitd buildctl; do
	chmod 0755 "$work/$cmd"
	mv -f "$work/$cmd" "$BIN_DIR/$cmd"
done
log "installed $BIN_DIR/buildkitd and $BIN_DIR/buildctl ($((SECONDS - start)) s)"
