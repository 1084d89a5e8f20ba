package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/testutil"
)

// claudeVersionLine is what `claude --version` prints, e.g. "2.1.197 (Claude Code)".
var claudeVersionLine = regexp.MustCompile(`^(\d+\.\d+\.\d+) \(Claude Code\)$`)

// TestAgentImage builds the Claude Code agent image with scripts/build-agent-image.sh
// (Debian packages and the npm registry; cached under /var/cache/bottle/agent-image after
// the first build), imports it into the test namespace and runs it under runsc with the
// example manifest.
func TestAgentImage(t *testing.T) {
	e := newEnv(t)
	ensureAgentImage(t, e)
	want := pinnedClaudeCodeVersion(t)

	example, err := os.ReadFile("../examples/claude.toml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.manifest, example, 0o644); err != nil {
		t.Fatal(err)
	}
	// The route's token is read at start; this one never leaves the test's bottle.
	token := []string{"CLAUDE_CODE_OAUTH_TOKEN=test-token-not-real"}
	// The agent runs as the workspace's owner: the image's own user here (root's
	// workspace: TestReadmeMainPathWritesWorkspace).
	if err := os.Chown(filepath.Dir(e.manifest), 1000, 1000); err != nil {
		t.Fatal(err)
	}

	stdout, stderr, code := e.bottle(token, "start", "claude", "--", "claude", "--version")
	if code != 0 {
		t.Fatalf("start claude -- claude --version: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	line := strings.TrimSpace(stdout)
	m := claudeVersionLine.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("claude --version printed %q, want \"X.Y.Z (Claude Code)\"\nstderr: %s", stdout, stderr)
	}
	if m[1] != want {
		t.Errorf("claude --version is %s, want the pinned %s", m[1], want)
	}
	versionID := e.identityOf("claude")

	// The image's user, home, workdir and tools, as the Dockerfile describes them.
	probe := `id -u; id -g; echo "$HOME"; pwd; node --version; git --version; rg --version | head -n 1; ` +
		`case ":$PATH:" in *:/home/agent/.npm-global/bin:*) echo npm-global-bin-in-path;; esac; ` +
		`touch "$HOME/.written" && echo home-writable`
	stdout, stderr, code = e.bottle(token, "start", "claude", "--", "bash", "-c", probe)
	if code != 0 {
		t.Fatalf("start claude -- bash -c ...: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	got := strings.Split(strings.TrimSpace(stdout), "\n")
	wantPrefixes := []string{"1000", "1000", "/home/agent", "/workspace", "v", "git version ", "ripgrep ", "npm-global-bin-in-path", "home-writable"}
	if len(got) != len(wantPrefixes) {
		t.Fatalf("probe printed %d lines, want %d:\n%s\nstderr: %s", len(got), len(wantPrefixes), stdout, stderr)
	}
	for i, p := range wantPrefixes {
		if !strings.HasPrefix(got[i], p) {
			t.Errorf("probe line %d is %q, want it to start with %q", i+1, got[i], p)
		}
	}

	var ids []string
	for _, p := range e.ps() {
		if p.Agent == "claude" {
			ids = append(ids, p.Identity)
		}
	}
	if len(ids) != 2 || (ids[0] != versionID && ids[1] != versionID) {
		t.Fatalf("bottles of claude: %v, want two including %s", ids, versionID)
	}
	for _, id := range ids {
		e.must("rm", id)
	}
	if left := e.ps(); len(left) != 0 {
		t.Errorf("bottles left after rm: %+v", left)
	}
	e.assertNothingLeft(ids...)
}

var (
	agentImageOnce sync.Once
	agentImageErr  error
)

// ensureAgentImage builds the Claude Code agent image with scripts/build-agent-image.sh
// and imports it into the test namespace, once per test run. The test harness
// (scripts/test.sh) sets BOTTLE_TEST_BUILD_AGENT_IMAGE=1; run by hand without it, the
// tests that need the image skip.
func ensureAgentImage(t *testing.T, e *env) {
	t.Helper()
	if os.Getenv("BOTTLE_TEST_BUILD_AGENT_IMAGE") != "1" {
		testutil.Missing(t, "BOTTLE_TEST_BUILD_AGENT_IMAGE=1 (builds the Claude Code agent image with scripts/build-agent-image.sh: about 80 s cold with Debian and npm reachable, seconds when cached)")
	}
	agentImageOnce.Do(func() {
		script, err := filepath.Abs("../scripts/build-agent-image.sh")
		if err != nil {
			agentImageErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		build := exec.CommandContext(ctx, script, "--address", e.address, "--namespace", namespace, "--bottle", bottleBin)
		// The script's own environment: proxies, CLAUDE_CODE_VERSION or DEBIAN_MIRROR overrides.
		build.Env = os.Environ()
		start := time.Now()
		out, err := build.CombinedOutput()
		if err != nil {
			agentImageErr = fmt.Errorf("build-agent-image.sh: %v\n%s", err, out)
			return
		}
		t.Logf("build-agent-image.sh took %s:\n%s", time.Since(start).Round(time.Second), out)
	})
	if agentImageErr != nil {
		t.Fatal(agentImageErr)
	}
}

// pinnedClaudeCodeVersion is the version the script installs: $CLAUDE_CODE_VERSION, else
// the Dockerfile's ARG default.
func pinnedClaudeCodeVersion(t *testing.T) string {
	t.Helper()
	if v := os.Getenv("CLAUDE_CODE_VERSION"); v != "" {
		return v
	}
	dockerfile, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^ARG CLAUDE_CODE_VERSION="([^"]+)"$`).FindSubmatch(dockerfile)
	if m == nil {
		t.Fatal(`Dockerfile has no line ARG CLAUDE_CODE_VERSION="..."`)
	}
	return string(m[1])
}
