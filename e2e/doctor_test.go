package e2e

import (
	"os"
	"strings"
	"testing"
)

func TestDoctor(t *testing.T) {
	e := newEnv(t)
	e.writeManifest("doc")
	runcRoot := []string{}
	if root := os.Getenv("BOTTLE_TEST_RUNC_ROOT"); root != "" {
		runcRoot = []string{"--runc-root", root}
	}
	out, errOut, code := e.bottle(nil, append([]string{"doctor", "--pool", pool}, runcRoot...)...)
	if code != 0 {
		t.Fatalf("doctor on a good host: exit %d\n%s%s", code, out, errOut)
	}
	for _, name := range []string{"root", "containerd", "runsc", "sandbox", "cni", "iptables", "ip_forward", "subnet", "agent image", "filter image", "leftovers"} {
		if !strings.Contains(out, name) {
			t.Errorf("doctor did not check %s:\n%s", name, out)
		}
	}

	// A broken host: no containerd, no runsc, no CNI plugins, and an image that is missing.
	os.WriteFile(e.manifest, []byte("[agents.doc]\nbottle = \"b\"\nimage = \"bottle.local/not-imported:1\"\n[bottles.b]\n"), 0o644)
	out, errOut, code = e.bottle(nil, "--address", "/nonexistent/containerd.sock", "doctor", "--runsc", "/nonexistent/runsc", "--cni-path", "/nonexistent/cni")
	if code == 0 {
		t.Fatalf("doctor on a broken host exited 0:\n%s", out)
	}
	for _, want := range []struct{ check, fix string }{
		{"fail  containerd", "make setup"},
		{"fail  runsc", "make setup"},
		{"fail  cni", "containernetworking-plugins"},
	} {
		found := false
		for _, line := range strings.Split(out, "\n") {
			found = found || (strings.HasPrefix(line, want.check) && strings.Contains(line, want.fix))
		}
		if !found {
			t.Errorf("doctor did not report %q with fix %q:\n%s", want.check, want.fix, out)
		}
	}
	if !strings.Contains(errOut, "a check above failed") {
		t.Errorf("stderr %q", errOut)
	}
	// With containerd back, the missing agent image is named with its fix.
	out, _, code = e.bottle(nil, append([]string{"doctor", "--pool", pool}, runcRoot...)...)
	if code == 0 || !strings.Contains(out, "fail  agent image") || !strings.Contains(out, "bottle image import") {
		t.Errorf("missing agent image not reported (exit %d):\n%s", code, out)
	}
}
