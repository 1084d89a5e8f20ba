package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// systemContainerdFiles are what `setup-host.sh --system` writes to run a system containerd.
var systemContainerdFiles = []string{
	"/etc/containerd/bottle-config.toml", "/etc/systemd/system/bottle-containerd.service",
	"/run/bottle-containerd.pid", "/var/log/bottle-containerd.log",
}

// TestMakeDemoUsesContainerdAddress runs `make demo CMD=...` against the test's containerd:
// it uses that containerd (as `make run` does), writes no system containerd config and
// starts no daemon, runs the command in a bottle and removes the bottle again (--rm).
func TestMakeDemoUsesContainerdAddress(t *testing.T) {
	e := newEnv(t)
	before := map[string]time.Time{}
	for _, f := range systemContainerdFiles {
		if st, err := os.Stat(f); err == nil {
			before[f] = st.ModTime()
		}
	}
	// make echoes the recipe with $$((6*7)) unexpanded: only the agent's shell prints 42.
	out, err := e.make("demo", "CMD=sh -c 'echo demo-$$((6*7))'").CombinedOutput()
	if err != nil {
		t.Fatalf("make demo: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "demo-42") {
		t.Errorf("make demo did not run its command:\n%s", out)
	}
	if strings.Contains(string(out), "started containerd") || strings.Contains(string(out), "/etc/containerd/bottle-config.toml") {
		t.Errorf("make demo with CONTAINERD_ADDRESS set up a system containerd:\n%s", out)
	}
	for _, f := range systemContainerdFiles {
		st, err := os.Stat(f)
		if err == nil && !st.ModTime().Equal(before[f]) {
			t.Errorf("make demo with CONTAINERD_ADDRESS wrote %s", f)
		}
	}
	if len(e.ps()) != 0 {
		t.Errorf("make demo left bottles (it runs with --rm): %+v", e.ps())
	}
}

// TestSetupHostSaysWhatItStarted runs the note setup-host.sh prints after it starts a
// containerd: what runs, where, and the exact command that stops it.
func TestSetupHostSaysWhatItStarted(t *testing.T) {
	cmd := exec.Command("bash", "-c", `source scripts/lib/containerd-config.sh && containerd_started_note "$@"`, "note",
		"background process, pid 4242", "/run/containerd/containerd.sock", "/etc/containerd/bottle-config.toml", "/var/log/bottle-containerd.log", "kill 4242")
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"started containerd for bottle: background process, pid 4242", "socket /run/containerd/containerd.sock",
		"config /etc/containerd/bottle-config.toml", "log /var/log/bottle-containerd.log", "keeps running", "stop it with: kill 4242"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("note lacks %q:\n%s", want, out)
		}
	}
	// setup-host.sh calls it on both ways it starts containerd.
	script, err := os.ReadFile("../scripts/setup-host.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, stop := range []string{`"systemctl disable --now bottle-containerd.service"`, `"kill $pid"`} {
		if !strings.Contains(string(script), stop) {
			t.Errorf("setup-host.sh does not print the stop command %s", stop)
		}
	}
}
