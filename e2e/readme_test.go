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
	out, err := e.make("run", "CMD=claude --version", "CLAUDE_CODE_OAUTH_TOKEN=not-a-real-token").CombinedOutput()
	if err != nil {
		t.Fatalf("make run CMD=\"claude --version\": %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "(Claude Code)") {
		t.Errorf("make run did not print Claude Code's version:\n%s", out)
	}
	ps := e.ps()
	if len(ps) != 1 {
		t.Fatalf("make run should leave one stopped bottle to resume: %+v", ps)
	}
	// ...and say so, after the agent's output.
	id := ps[0].Identity
	hint := "`bottle resume " + id + "` continues it, `bottle rm " + id + "` removes it"
	if i := strings.Index(string(out), hint); i < 0 || i < strings.Index(string(out), "(Claude Code)") {
		t.Errorf("make run's exit does not end with how to resume or remove bottle %s:\n%s", id, out)
	}
}

// make is `make -C REPO TARGET` as the README's user runs it, against this env's
// containerd, namespace, state dir and pool (extra: VAR=VALUE for make and its environment).
func (e *env) make(target string, extra ...string) *exec.Cmd {
	e.t.Helper()
	repo, err := filepath.Abs("..")
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command("make", "-C", repo, target)
	cmd.Env = e.makeEnv(extra...)
	return cmd
}

// makeEnv is the environment of make as the README's user runs it against this env's
// containerd, namespace, state dir, resolver and pool, plus extra VAR=VALUE.
func (e *env) makeEnv(extra ...string) []string {
	return append([]string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"CONTAINERD_ADDRESS=" + e.address, "BOTTLE_NAMESPACE=" + namespace, "BOTTLE_STATE_DIR=" + e.stateDir,
		"BOTTLE_RESOLV_CONF=" + e.resolv, "BOTTLE_POOL=" + pool, "BOTTLE_RUNC_ROOT=" + os.Getenv("BOTTLE_TEST_RUNC_ROOT"),
	}, extra...)
}
