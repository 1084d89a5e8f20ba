package hostenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestTakeKeepsSecretsFromChildren: after Take, a child process started the ordinary way
// (os/exec with no explicit Env, as iptables and CNI plugins are) does not see a
// credential from the invoking environment, while the snapshot still has it.
func TestTakeKeepsSecretsFromChildren(t *testing.T) {
	const name, marker = "BOTTLE_TEST_ENV_SECRET", "secret-marker-5b1f"
	t.Setenv(name, marker)
	t.Setenv("PATH", os.Getenv("PATH"))
	saved := os.Environ()
	t.Cleanup(func() {
		os.Clearenv()
		for _, kv := range saved {
			k, v, _ := strings.Cut(kv, "=")
			os.Setenv(k, v)
		}
	})
	env := Take()
	if v, ok := env.Lookup(name); !ok || v != marker {
		t.Fatalf("snapshot lookup %s = %q, %v; want the marker", name, v, ok)
	}
	out, err := exec.Command("env").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), marker) {
		t.Errorf("a child process inherited the credential:\n%s", out)
	}
	if !strings.Contains(string(out), "PATH=") {
		t.Errorf("a child process lost PATH (control):\n%s", out)
	}
}
