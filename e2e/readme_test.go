package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadmeRunCommand runs the README's main command, `make run` (scripts/run.sh), with
// a command override as the README allows, against the test's containerd: it sets up the
// host, builds bottle and the agent image and runs `claude --version` in a bottle.
func TestReadmeRunCommand(t *testing.T) {
	e := newEnv(t)
	ensureAgentImage(t, e)
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "\nmake run     #") || !strings.Contains(string(readme), "\nmake test    #") {
		t.Fatal("README no longer opens with `make run` and `make test`: update this test with it")
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("make", "-C", repo, "run", "CMD=claude --version")
	cmd.Env = e.makeRunEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make run CMD=\"claude --version\": %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "(Claude Code)") {
		t.Errorf("make run did not print Claude Code's version:\n%s", out)
	}
	if len(e.ps()) != 1 {
		t.Errorf("make run should leave one stopped bottle to resume: %+v", e.ps())
	}
}

// makeRunEnv is the environment `make run` gets in a test: the test's containerd, state
// dir, namespace, pool and resolver, and a token that is not real.
func (e *env) makeRunEnv() []string {
	return []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"CONTAINERD_ADDRESS=" + e.address, "BOTTLE_NAMESPACE=" + namespace, "BOTTLE_STATE_DIR=" + e.stateDir,
		"BOTTLE_RESOLV_CONF=" + e.resolv, "BOTTLE_POOL=" + pool, "BOTTLE_RUNC_ROOT=" + os.Getenv("BOTTLE_TEST_RUNC_ROOT"),
		"CLAUDE_CODE_OAUTH_TOKEN=not-a-real-token",
	}
}
