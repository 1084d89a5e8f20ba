package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/bottle-dev/bottle/internal/testutil"
)

// nerdctlBinary is the pinned nerdctl scripts/install-nerdctl.sh installs (test.sh
// exports BOTTLE_TEST_NERDCTL), else one on PATH.
func nerdctlBinary(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("BOTTLE_TEST_NERDCTL"), "/var/cache/bottle/test-tools/nerdctl"} {
		if p != "" {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	p, err := exec.LookPath("nerdctl")
	if err != nil {
		testutil.Missing(t, "nerdctl (scripts/install-nerdctl.sh installs it)")
	}
	return p
}

// TestNerdctlListsBottleContainers checks the interop README claims: nerdctl shows a
// bottle's containers by the names bottle gives them (label nerdctl/name).
func TestNerdctlListsBottleContainers(t *testing.T) {
	e := newEnv(t)
	nerdctl := nerdctlBinary(t)
	e.writeManifest("nerd")
	e.must("start", "--detach", "nerd", "--", "/bin/sleep", "600")
	id := e.identityOf("nerd")
	// Its own data root: nerdctl keeps a name store there, and the host's stays untouched.
	base := []string{"--address", e.address, "--namespace", e.namespace, "--data-root", t.TempDir()}
	for _, args := range [][]string{{"ps", "-a"}, {"ps", "-a", "--format", "{{.Names}}"}} {
		out, err := exec.Command(nerdctl, append(base, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("nerdctl %v: %v\n%s", args, err, out)
		}
		for _, role := range []string{"agent", "filter"} {
			name := "bottle-" + id + "-" + role
			if !strings.Contains(string(out), name) {
				t.Errorf("nerdctl %v does not list %s:\n%s", args, name, out)
			}
		}
	}
}
