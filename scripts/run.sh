#!/usr/bin/env bash
# run.sh [CMD ARGS...] (`make run` as root): the main job on a fresh machine. Sets up the host
# (Debian packages, containerd v2, a static runsc), builds bottle, builds the Claude Code
# agent image if it is missing (scripts/build-agent-image.sh: Debian packages and npm, no
# Docker, cached) and starts the default `claude` agent on the current directory - or
# CMD instead of `claude` (e.g. `make run CMD="claude --version"`).
#
# The bottle is kept when the agent exits (not --rm): stopped, with the agent's files in
# its root filesystem, so `bottle resume ID` continues the session; `bottle rm ID` removes
# it (its containers, bridges, address slot and firewall chains). The exit prints both.
#
# Claude Code's OAuth token is read from CLAUDE_CODE_OAUTH_TOKEN and reaches only the
# egress-proxy; keep it out of command lines: export it, then `make run` as root (`sudo -E make run`, or
# `sudo --preserve-env=CLAUDE_CODE_OAUTH_TOKEN make run`, otherwise).
#
# With CONTAINERD_ADDRESS set, that containerd is used and none is started; bottle's other
# settings come from BOTTLE_NAMESPACE, BOTTLE_STATE_DIR, BOTTLE_RESOLV_CONF, BOTTLE_POOL.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="/usr/local/go/bin:/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"
if [[ $(id -u) -ne 0 ]]; then
	echo "run.sh: bottle needs root (containerd, runsc, CNI, iptables): sudo -E make run" >&2
	exit 1
fi
if [[ -z ${CLAUDE_CODE_OAUTH_TOKEN:-} ]]; then
	echo "run.sh: CLAUDE_CODE_OAUTH_TOKEN is not set: export it (claude setup-token makes one) and run make run again (sudo -E keeps it)" >&2
	exit 1
fi
if [[ -n ${CONTAINERD_ADDRESS:-} ]]; then
	"$repo/scripts/setup-host.sh"
else
	"$repo/scripts/setup-host.sh" --system
fi
make --no-print-directory -C "$repo" build
"$repo/scripts/build-agent-image.sh" --bottle "$repo/bin/bottle"
if (($#)); then
	exec "$repo/bin/bottle" start claude -- "$@"
fi
exec "$repo/bin/bottle" start claude
