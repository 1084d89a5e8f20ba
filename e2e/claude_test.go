package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestClaudeRoundTrip runs the real Claude Code client in the agent image: `claude -p`
// reaches a fake Anthropic Messages API (the test's HTTPS server, streamed answer) only
// through the egress-proxy route, which swaps the agent's placeholder for the real
// credential.
func TestClaudeRoundTrip(t *testing.T) {
	e, up, start := claudeEnv(t)
	// The agent runs as the workspace's owner: here the image's own user.
	if err := os.Chown(filepath.Dir(e.manifest), 1000, 1000); err != nil {
		t.Fatal(err)
	}
	token := fmt.Sprintf("sk-ant-oat01-e2e-%d", time.Now().UnixNano())
	stopWatch := watchCmdlines(token)
	out, errOut, code := e.bottle([]string{"CLAUDE_CODE_OAUTH_TOKEN=" + token},
		append(start, "claude", "--", "claude", "-p", "say hello")...)
	if code != 0 {
		t.Fatalf("claude -p: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if strings.TrimSpace(out) != fakeAnthropicText {
		t.Errorf("claude printed %q, want the fake server's %q\nstderr: %s", out, fakeAnthropicText, errOut)
	}
	var messages int
	for _, h := range up.headers() {
		messages++
		if got := h.Get("Authorization"); got != "Bearer "+token {
			t.Errorf("upstream got Authorization %q, want the real credential", got)
		}
		if strings.Contains(fmt.Sprint(h), "egress-proxy-placeholder") {
			t.Error("the agent's placeholder reached the upstream")
		}
	}
	if messages == 0 {
		t.Fatal("the fake Messages API saw no request")
	}
	if stopWatch() {
		t.Error("the credential appeared on a host process's command line")
	}
	if ps := e.ps(); len(ps) != 0 {
		t.Errorf("--rm left bottles: %+v", ps)
	}
}

// TestClaudeWritesRootOwnedWorkspace is the README's main job in a root-owned directory:
// the real Claude Code, as root with --dangerously-skip-permissions (bottle sets
// IS_SANDBOX=1 and a HOME root can write), follows the fake Messages API's Write tool
// call; the file appears in the workspace, owned by root on the host.
func TestClaudeWritesRootOwnedWorkspace(t *testing.T) {
	e, _, start := claudeEnv(t)
	ws := t.TempDir() // root's, as a checkout made by root
	cmd := e.command([]string{"CLAUDE_CODE_OAUTH_TOKEN=sk-ant-oat01-e2e-write"},
		append(start, "claude", "--", "claude", "-p", "--dangerously-skip-permissions", fakeToolMarker+": write the file")...)
	cmd.Dir = ws
	out, errOut, code := runCmd(t, cmd)
	if code != 0 {
		t.Fatalf("claude -p: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	host := filepath.Join(ws, filepath.Base(fakeToolFile))
	b, err := os.ReadFile(host)
	if err != nil || string(b) != fakeToolText {
		t.Fatalf("Claude Code's Write did not reach the workspace: %q %v\nstdout: %s\nstderr: %s", b, err, out, errOut)
	}
	if uid, gid := ownerOf(t, host); uid != 0 || gid != 0 {
		t.Errorf("%s belongs to %d:%d on the host, want the workspace's owner 0:0", host, uid, gid)
	}
}

// claudeEnv prepares a run of the real Claude Code: the agent image, the example
// manifest and the fake Messages API as api.anthropic.com. start is `start --rm` with
// the flags that make the bottle reach that fake.
func claudeEnv(t *testing.T) (e *env, up *upstream, start []string) {
	t.Helper()
	e = newEnv(t)
	ensureAgentImage(t, e)
	up = newUpstream(t)
	example, err := os.ReadFile("../examples/claude.toml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.manifest, example, 0o644); err != nil {
		t.Fatal(err)
	}
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+dnsAddr.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return e, up, []string{"start", "--rm", "--ca-file", up.caFile, "--resolv-conf", resolv,
		"--add-host", "api.anthropic.com:" + upstreamAddr.Addr().String()}
}
