# shellcheck shell=bash
# containerd_config ROOT STATE SOCKET prints the containerd v2 config bottle runs with
# (sourced by setup-host.sh and containerd-test.sh). bottle picks the runtime per container
# (io.containerd.runc.v2 with BinaryName=runsc, or io.containerd.runsc.v1), so no runtime
# sections are needed. CRI (Kubernetes) and NRI are off: bottle uses neither, and NRI's
# socket is host-global.
containerd_config() {
	cat <<EOF
version = 3
root = "$1"
state = "$2"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox",
  "io.containerd.nri.v1.nri",
]

[grpc]
  address = "$3"
EOF
}

# DAEMON_ENV is the prefix that starts a daemon with an explicit, minimal environment. The
# caller's may hold credentials (`make run` needs CLAUDE_CODE_OAUTH_TOKEN exported), and
# containerd passes its environment on to every shim and runsc process for its lifetime.
# An array, not a function: `"${DAEMON_ENV[@]}" daemon &` keeps $! the daemon's pid.
# shellcheck disable=SC2034 # used by the scripts that source this file
DAEMON_ENV=(env -i PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8)

# containerd_started_note WHAT SOCKET CONFIG LOG STOP prints what setup-host.sh started and
# how to stop it: the daemon keeps running after the script (and `make run`/`make demo`)
# ends, so the user is told, with the exact command that stops it.
containerd_started_note() {
	printf 'setup-host: started containerd for bottle: %s\n' "$1"
	printf 'setup-host:   socket %s, config %s, log %s\n' "$2" "$3" "$4"
	printf 'setup-host:   it keeps running after this command; stop it with: %s\n' "$5"
}
