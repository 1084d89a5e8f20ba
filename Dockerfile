# syntax=docker/dockerfile:1
# The Claude Code agent image, bottle.local/agent-claude (examples/claude.toml and the
# embedded default manifest run it). For hosts with BuildKit or `nerdctl build`:
#   nerdctl -n bottle build -t bottle.local/agent-claude:latest .
# Hosts without Docker build the same content with scripts/build-agent-image.sh, which
# reads the two ARG defaults below from this file (keep each on one line) and sets the
# same ENV, USER, WORKDIR and CMD.
FROM debian:bookworm-slim

# Debian 12's nodejs is 18.x; this is the newest Claude Code whose engines allow node 18.
ARG CLAUDE_CODE_VERSION="2.1.197"
ARG AGENT_PACKAGES="nodejs npm git ripgrep ca-certificates curl make gcc g++ libc6-dev procps less openssh-client xz-utils"

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ${AGENT_PACKAGES} \
 && rm -rf /var/lib/apt/lists/*

# Into /usr/local (root's, not writable by the agent): the pinned version stays pinned.
# Debian's npm 9 installs the musl native package next to the glibc one: drop it.
RUN NPM_CONFIG_PREFIX=/usr/local npm install -g --no-fund --no-audit --cache /tmp/npm-cache \
      "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}" \
 && rm -rf /tmp/npm-cache /root/.npm \
      /usr/local/lib/node_modules/@anthropic-ai/claude-code/node_modules/@anthropic-ai/claude-code-linux-*-musl

RUN groupadd --gid 1000 agent \
 && useradd --uid 1000 --gid 1000 --home-dir /home/agent --create-home --shell /bin/bash agent \
 && install -d -o 1000 -g 1000 -m 0755 /workspace /home/agent/.npm-global

# The agent's own `npm install -g` goes to its home, whose bin comes first in PATH.
ENV HOME=/home/agent \
    NPM_CONFIG_PREFIX=/home/agent/.npm-global \
    PATH=/home/agent/.npm-global/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    DISABLE_AUTOUPDATER=1

USER 1000:1000
WORKDIR /workspace
CMD ["claude"]
