package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var bottleBin string

// TestMain builds the real binary once; the tests run it as a user would.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bottle-cli-test")
	if err != nil {
		panic(err)
	}
	bottleBin = filepath.Join(dir, "bottle")
	build := exec.Command("go", "build", "-o", bottleBin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build bottle:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run runs bottle in dir with only the given environment (plus PATH).
func run(t *testing.T, dir string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(bottleBin, args...)
	cmd.Dir = dir
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func repo(t *testing.T, rel string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("../..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHelpListsCommands(t *testing.T) {
	out, _, code := run(t, t.TempDir(), nil, "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, c := range []string{"plan", "manifest", "version"} {
		if !strings.Contains(out, "\n   "+c) {
			t.Errorf("--help does not list %q:\n%s", c, out)
		}
	}
}

func TestPlanJSONRedactsToken(t *testing.T) {
	const token = "sk-test-123"
	out, errOut, code := run(t, t.TempDir(), []string{"CLAUDE_CODE_OAUTH_TOKEN=" + token},
		"plan", "--manifest", repo(t, "examples/claude.toml"), "claude", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if strings.Contains(out+errOut, token) {
		t.Fatal("token in plan output")
	}
	var p struct {
		Containers []struct {
			Role string          `json:"role"`
			Spec json.RawMessage `json:"spec"`
		} `json:"containers"`
	}
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("plan is not JSON: %v", err)
	}
	roles := map[string]bool{}
	for _, c := range p.Containers {
		if len(c.Spec) < 100 || !bytes.Contains(c.Spec, []byte(`"ociVersion"`)) {
			t.Errorf("%s: no OCI spec", c.Role)
		}
		roles[c.Role] = true
	}
	if !roles["agent"] || !roles["filter"] || !roles["egress-proxy"] || len(p.Containers) != 3 {
		t.Errorf("containers %v, want agent, filter, egress-proxy", roles)
	}
	if !strings.Contains(out, "CLAUDE_CODE_OAUTH_TOKEN=<redacted>") {
		t.Error("egress-proxy credential not shown as <redacted>")
	}
}

func TestPlanUsesEmbeddedDefault(t *testing.T) {
	out, errOut, code := run(t, t.TempDir(), nil, "plan")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "manifest <embedded default>") || !strings.Contains(out, "agent claude") {
		t.Errorf("plan without a manifest around does not use the embedded default:\n%s", out)
	}
}

func TestManifestPrintsDefault(t *testing.T) {
	dir := t.TempDir()
	out, _, code := run(t, dir, nil, "manifest")
	if code != 0 || !strings.Contains(out, "[agents.claude]") {
		t.Fatalf("exit %d, output:\n%s", code, out)
	}
	// The printed file is a valid starting manifest.
	if err := os.WriteFile(filepath.Join(dir, "bottle.toml"), []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := run(t, dir, nil, "plan")
	if code != 0 || !strings.Contains(out, "manifest bottle.toml") {
		t.Fatalf("plan with the printed manifest: exit %d %s\n%s", code, errOut, out)
	}
}

func TestInvalidManifestsExit2(t *testing.T) {
	files, _ := filepath.Glob(repo(t, "testdata/invalid/*.toml"))
	if len(files) < 15 {
		t.Fatalf("found %d invalid manifests, want >= 15", len(files))
	}
	for _, f := range files {
		data, _ := os.ReadFile(f)
		var path string
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "# path: "); ok {
				path = v
			}
		}
		t.Run(filepath.Base(f), func(t *testing.T) {
			out, errOut, code := run(t, t.TempDir(), nil, "plan", "--manifest", f)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if out != "" {
				t.Errorf("printed a plan for an invalid manifest:\n%s", out)
			}
			if !strings.Contains(errOut, f) || !strings.Contains(errOut, path) {
				t.Errorf("error does not name file %s and field %s:\n%s", f, path, errOut)
			}
		})
	}
}

func TestBadInvocationsExit2(t *testing.T) {
	for _, args := range [][]string{
		{"plan", "nosuch"},
		{"plan", "--manifest", "/nonexistent/bottle.toml"},
		{"plan", "--runtime", "docker"},
		{"--manifest", "../../examples/team.toml", "plan"}, // two agents: must name one
	} {
		_, errOut, code := run(t, ".", nil, args...)
		if code != 2 || !strings.HasPrefix(errOut, "bottle: ") {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 with a one-line error", args, code, errOut)
		}
	}
}

func TestSidecarBadListenAddress(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "filter.json")
	os.WriteFile(cfg, []byte(`{"listen":"127.0.0.1:not-a-port","allowlist":["example.test"]}`), 0o644)
	ready := filepath.Join(dir, "ready")
	_, errOut, code := run(t, dir, nil, "sidecar", "filter", "--config", cfg, "--ready-file", ready)
	if code == 0 || !strings.Contains(errOut, "listen on 127.0.0.1:not-a-port") {
		t.Errorf("exit %d, stderr %q; want a listen error", code, errOut)
	}
	if _, err := os.Stat(ready); err == nil {
		t.Error("a sidecar that does not serve reported ready")
	}
	// The reason waits for the start next to the ready file.
	if reason, err := os.ReadFile(filepath.Join(dir, "error")); err != nil || !strings.Contains(string(reason), "listen on 127.0.0.1:not-a-port") {
		t.Errorf("error file: %q, %v", reason, err)
	}
}
