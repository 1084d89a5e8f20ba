#!/usr/bin/env bash
# build-agent-image.sh [--address SOCKET] [--namespace NS] [--bottle PATH] [--rebuild] [--no-import]
#
# Builds the Claude Code agent image without Docker or a registry and imports it into
# containerd as bottle.local/agent-claude:latest and bottle.local/agent-claude:<version>.
# The content is the Dockerfile's (same packages, Claude Code version, user, env, workdir,
# command): a Debian 12 rootfs made by mmdebstrap from the Debian mirror this host's apt
# uses, Claude Code installed by npm inside that rootfs (chroot), packed into an OCI
# archive by scripts/mkrootfs and imported with `bottle image import`.
#
# The archive is cached in /var/cache/bottle/agent-image/<version>-<hash of the build
# inputs>/, so a second run only imports it again. Root is required (mmdebstrap, chroot).
#
#   --address    containerd socket (env CONTAINERD_ADDRESS; default bottle's default)
#   --namespace  containerd namespace (env BOTTLE_NAMESPACE; default bottle)
#   --bottle     bottle binary used for the import (env BOTTLE_BIN; default bin/bottle)
#   --rebuild    ignore the cache
#   --no-import  only build (or find) the archive; its path is printed last
# Env: CLAUDE_CODE_VERSION overrides the Dockerfile's pinned version; DEBIAN_MIRROR
# (a URI) replaces the mirror read from /etc/apt; AGENT_IMAGE_CACHE the cache directory.
set -euo pipefail

export PATH="/usr/local/go/bin:/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"

readonly SUITE=bookworm
readonly REPOSITORY=bottle.local/agent-claude
readonly AGENT_UID=1000
readonly HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
# The image config; keep in step with the Dockerfile's ENV, USER, WORKDIR and CMD.
readonly IMAGE_ENV=(
	"HOME=/home/agent"
	"NPM_CONFIG_PREFIX=/home/agent/.npm-global"
	"PATH=/home/agent/.npm-global/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	"DISABLE_AUTOUPDATER=1"
)
# What debian:bookworm-slim leaves out (its /etc/dpkg/dpkg.cfg.d/docker).
readonly SLIM_DPKG_OPTS=(
	"path-exclude=/usr/share/doc/*"
	"path-include=/usr/share/doc/*/copyright"
	"path-exclude=/usr/share/man/*"
	"path-exclude=/usr/share/groff/*"
	"path-exclude=/usr/share/info/*"
	"path-exclude=/usr/share/lintian/*"
	"path-exclude=/usr/share/linda/*"
	"path-exclude=/usr/share/locale/*"
)

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
self="$repo/scripts/build-agent-image.sh"
# The customize hook runs as a child process: it keeps the parent's clock.
export AGENT_IMAGE_STARTED=${AGENT_IMAGE_STARTED:-$EPOCHSECONDS}

log() { printf 'build-agent-image: [%3ds] %s\n' "$((EPOCHSECONDS - AGENT_IMAGE_STARTED))" "$*" >&2; }
die() {
	printf 'build-agent-image: ERROR: %s\n' "$*" >&2
	exit 1
}

# dockerfile_arg NAME prints the default of `ARG NAME="..."` in the Dockerfile.
dockerfile_arg() {
	local value
	value=$(sed -n "s/^ARG $1=\"\\(.*\\)\"\$/\\1/p" "$repo/Dockerfile")
	[[ -n $value ]] || die "Dockerfile has no line ARG $1=\"...\""
	printf '%s\n' "$value"
}

# customize_rootfs ROOTFS runs as mmdebstrap's customize hook (so /proc, /dev and a
# resolv.conf are there for npm) and does the Dockerfile's npm and user steps.
customize_rootfs() {
	local rootfs=$1
	[[ -d $rootfs/usr && $rootfs != / ]] || die "customize: $rootfs is not a rootfs"
	log "npm install -g @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION (in the rootfs)"
	# npm trusts the host's CA bundle too (a host behind a TLS-inspecting proxy needs
	# that), from a temporary copy that does not stay in the image; proxy variables pass.
	local npm_env=(HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin NPM_CONFIG_PREFIX=/usr/local)
	if [[ -s $HOST_CA_BUNDLE ]]; then
		cp "$HOST_CA_BUNDLE" "$rootfs/tmp/host-ca.crt"
		npm_env+=(NODE_EXTRA_CA_CERTS=/tmp/host-ca.crt)
	fi
	local v
	for v in HTTPS_PROXY https_proxy HTTP_PROXY http_proxy NO_PROXY no_proxy; do
		[[ -z ${!v:-} ]] || npm_env+=("$v=${!v}")
	done
	chroot "$rootfs" /usr/bin/env -i "${npm_env[@]}" npm install -g --no-fund --no-audit --no-update-notifier \
		--loglevel=error --cache /tmp/npm-cache "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" >&2
	rm -rf "$rootfs/tmp/npm-cache" "$rootfs/tmp/host-ca.crt" "$rootfs/root/.npm"
	# Debian's npm 9 cannot tell glibc from musl and installs both native packages; the
	# postinstall linked the glibc one into bin/, the musl one (240 MB) is never used.
	rm -rf "$rootfs"/usr/local/lib/node_modules/@anthropic-ai/claude-code/node_modules/@anthropic-ai/claude-code-linux-*-musl
	log "user agent ($AGENT_UID:$AGENT_UID), /home/agent, /workspace"
	chroot "$rootfs" groupadd --gid "$AGENT_UID" agent
	chroot "$rootfs" useradd --uid "$AGENT_UID" --gid "$AGENT_UID" --home-dir /home/agent --create-home --shell /bin/bash agent
	chroot "$rootfs" install -d -o "$AGENT_UID" -g "$AGENT_UID" -m 0755 /workspace /home/agent/.npm-global
	local version
	version=$(chroot "$rootfs" /usr/bin/env -i HOME=/tmp/claude-check PATH=/usr/local/bin:/usr/bin:/bin \
		claude --version) || die "claude --version failed in the rootfs"
	rm -rf "$rootfs/tmp/claude-check"
	log "claude --version in the rootfs: $version"
	# The host's resolver and name must not end up in the image (the runtime provides them).
	rm -f "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
}

if [[ ${1:-} == --customize-rootfs ]]; then
	(($# == 2)) || die "usage: $0 --customize-rootfs ROOTFS"
	[[ -n ${CLAUDE_CODE_VERSION:-} ]] || die "customize: CLAUDE_CODE_VERSION is not set"
	customize_rootfs "$2"
	exit 0
fi

address=${CONTAINERD_ADDRESS:-}
namespace=${BOTTLE_NAMESPACE:-bottle}
bottle=${BOTTLE_BIN:-$repo/bin/bottle}
rebuild=false
import=true
while (($#)); do
	case $1 in
	--address) address=${2:?--address needs a value}; shift 2 ;;
	--namespace) namespace=${2:?--namespace needs a value}; shift 2 ;;
	--bottle) bottle=${2:?--bottle needs a value}; shift 2 ;;
	--rebuild) rebuild=true; shift ;;
	--no-import) import=false; shift ;;
	-h | --help) sed -n '2,/^[^#]/{/^#/p}' "$self" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done

[[ $(id -u) -eq 0 ]] || die "must run as root (mmdebstrap and chroot need it): sudo $0"
for tool in mmdebstrap chroot go flock sha256sum; do
	command -v "$tool" >/dev/null || die "$tool not found; install it (mmdebstrap: apt-get install mmdebstrap; go: /usr/local/go)"
done
if $import; then
	[[ -x $bottle ]] || die "bottle binary $bottle not found: run 'make build' or pass --bottle PATH"
fi

CLAUDE_CODE_VERSION=${CLAUDE_CODE_VERSION:-$(dockerfile_arg CLAUDE_CODE_VERSION)}
[[ $CLAUDE_CODE_VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "CLAUDE_CODE_VERSION $CLAUDE_CODE_VERSION is not x.y.z"
export CLAUDE_CODE_VERSION
read -r -a packages <<<"$(dockerfile_arg AGENT_PACKAGES)"

# debian_sources prints one-line apt sources for SUITE, SUITE-updates and SUITE-security
# (component main) taken from this host's apt configuration, or from DEBIAN_MIRROR.
debian_sources() {
	if [[ -n ${DEBIAN_MIRROR:-} ]]; then
		printf 'deb %s %s main\n' "$DEBIAN_MIRROR" "$SUITE"
		return
	fi
	local f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
		[[ -r $f ]] || continue
		if [[ $f == *.sources ]]; then
			# deb822 stanzas: fields URIs, Suites, Components, Types; blank line between.
			awk -v suite="$SUITE" '
				function flush(   i, j, n, m, u, s) {
					if (types ~ /(^| )deb( |$)/ && (" " comps " ") ~ / main /) {
						n = split(uris, u, " "); m = split(suites, s, " ")
						for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
							if (s[j] == suite || s[j] == suite "-updates" || s[j] == suite "-security")
								print "deb " u[i] " " s[j] " main"
					}
					types = uris = suites = comps = ""
				}
				/^[ \t]*$/ { flush(); next }
				/^[ \t]*#/ { next }
				/^Types:/ { sub(/^Types:[ \t]*/, ""); types = $0 }
				/^URIs:/ { sub(/^URIs:[ \t]*/, ""); uris = $0 }
				/^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
				/^Components:/ { sub(/^Components:[ \t]*/, ""); comps = $0 }
				END { flush() }' "$f"
		else
			awk -v suite="$SUITE" '
				$1 == "deb" {
					i = 2
					if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
					uri = $i; s = $(i + 1); hasMain = 0
					for (j = i + 2; j <= NF; j++) if ($j == "main") hasMain = 1
					if (hasMain && (s == suite || s == suite "-updates" || s == suite "-security"))
						print "deb " uri " " s " main"
				}' "$f"
		fi
	done | awk '!seen[$0]++'
}

cache_root=${AGENT_IMAGE_CACHE:-/var/cache/bottle/agent-image}
# The key covers everything that shapes the archive: this script, the Dockerfile, the
# archive writer and the version (npm resolves the rest at build time).
inputs_hash=$(cat "$self" "$repo/Dockerfile" "$repo/scripts/mkrootfs/main.go" \
	"$repo"/internal/ociarchive/*.go | sha256sum | cut -c1-16)
key="$CLAUDE_CODE_VERSION-$(uname -m)-$inputs_hash"
cache_dir="$cache_root/$key"
archive="$cache_dir/agent-claude.tar"
refs=("$REPOSITORY:latest" "$REPOSITORY:$CLAUDE_CODE_VERSION")

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock -w 1800 9 || die "another build-agent-image.sh holds $cache_root/.lock for 30 minutes"

# remove_tree DIR removes a build directory. A killed mmdebstrap can leave /proc, /sys or
# /dev mounted inside: unmount those first, and never cross into another file system.
remove_tree() {
	local dir=$1 m
	[[ -d $dir ]] || return 0
	while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done < <(awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
	rm -rf --one-file-system "$dir"
}

work=""
cleanup() { [[ -z $work ]] || remove_tree "$work"; }
trap cleanup EXIT

# Under the lock, a build directory is what a killed run left behind.
for stale in "$cache_root"/build.*; do
	[[ ! -d $stale ]] || remove_tree "$stale"
done

if $rebuild || [[ ! -s $archive ]]; then
	log "building $REPOSITORY (claude-code $CLAUDE_CODE_VERSION) into $cache_dir"
	work=$(mktemp -d "$cache_root/build.XXXXXX")
	mapfile -t sources < <(debian_sources)
	((${#sources[@]})) || die "no Debian $SUITE source found in /etc/apt (sources.list, sources.list.d); set DEBIAN_MIRROR=URI of a Debian mirror"
	log "Debian sources: $(printf '%s; ' "${sources[@]}")"

	log "mmdebstrap $SUITE rootfs with: ${packages[*]}"
	dpkgopts=()
	for o in "${SLIM_DPKG_OPTS[@]}"; do dpkgopts+=("--dpkgopt=$o"); done
	include=$(
		IFS=,
		echo "${packages[*]}"
	)
	# The customize hook is this script again (under sh, $1 is the rootfs).
	export AGENT_IMAGE_SELF=$self
	# shellcheck disable=SC2016 # $1 is for the hook's sh, not for this script
	mmdebstrap --mode=root --variant=minbase --quiet \
		--include="$include" "${dpkgopts[@]}" \
		--customize-hook='"$AGENT_IMAGE_SELF" --customize-rootfs "$1"' \
		"$SUITE" "$work/rootfs" "${sources[@]}" >&2 ||
		die "mmdebstrap failed (see above)"
	if awk -v w="$work/" 'index($5, w) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
		die "mmdebstrap left file systems mounted under $work; unmount them"
	fi
	# Like an image built by Docker: an empty /dev (the runtime provides one).
	rm -rf --one-file-system "$work/rootfs/dev"
	install -d -m 0755 "$work/rootfs/dev"
	log "rootfs: $(du -sh --one-file-system "$work/rootfs" | cut -f1)"

	log "writing the OCI archive (scripts/mkrootfs)"
	(cd "$repo" && CGO_ENABLED=0 go build -trimpath -o "$work/mkrootfs" ./scripts/mkrootfs) ||
		die "go build ./scripts/mkrootfs failed"
	mkrootfs_args=()
	for r in "${refs[@]}"; do mkrootfs_args+=(--ref "$r"); done
	for e in "${IMAGE_ENV[@]}"; do mkrootfs_args+=(--env "$e"); done
	"$work/mkrootfs" "${mkrootfs_args[@]}" \
		--user "$AGENT_UID:$AGENT_UID" --workdir /workspace --cmd claude \
		--label "org.opencontainers.image.title=bottle agent: Claude Code" \
		--label "org.opencontainers.image.version=$CLAUDE_CODE_VERSION" \
		"$work/rootfs" "$work/agent-claude.tar" >&2
	# Publish the new entry atomically, then drop older builds.
	rm -rf --one-file-system "$cache_dir"
	mkdir -p "$cache_dir"
	mv "$work/agent-claude.tar" "$archive"
	for old in "$cache_root"/*; do
		[[ ! -d $old || $old == "$cache_dir" || $old == "$work" ]] || remove_tree "$old"
	done
	remove_tree "$work" # the rootfs is in the archive now
	log "archive: $archive ($(du -h "$archive" | cut -f1))"
else
	log "cached: $archive ($(du -h "$archive" | cut -f1)); --rebuild to build again"
fi

if ! $import; then
	printf '%s\n' "$archive"
	exit 0
fi
log "importing into containerd namespace $namespace"
import_args=(--namespace "$namespace")
[[ -z $address ]] || import_args=(--address "$address" "${import_args[@]}")
"$bottle" "${import_args[@]}" image import "$archive" >&2 || die "bottle image import $archive failed"
log "done: ${refs[*]}"
