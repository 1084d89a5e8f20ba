package hostenv

import (
	"os"
	"strings"
)

// childEnvNames are the only variables bottle's own child processes (iptables, ip, cp,
// CNI plugins, runc) inherit: the invoking environment may hold credentials (a route's
// token_ref is read from it), and a child's environ is readable in /proc for its life.
var childEnvNames = []string{"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ"}

// Environ is a snapshot of the invoking environment, taken before it is cleared.
type Environ map[string]string

// Take snapshots the process environment and then reduces the environment that child
// processes inherit to childEnvNames. Call it once, after the command line (whose flags
// read BOTTLE_* and CONTAINERD_ADDRESS) is parsed; read host variables from the snapshot.
func Take() Environ {
	env := Environ{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			env[k] = v
		}
	}
	os.Clearenv()
	for _, k := range childEnvNames {
		if v, ok := env[k]; ok {
			os.Setenv(k, v)
		}
	}
	return env
}

// Lookup reads one variable of the snapshot.
func (e Environ) Lookup(name string) (string, bool) {
	v, ok := e[name]
	return v, ok
}
