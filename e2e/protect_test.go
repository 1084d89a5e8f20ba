package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestProtectWorkspace: in a bound git checkout the agent cannot plant what runs on the
// host at the next git command (a hook, a config key), nor get around that by moving or
// removing .git, yet it commits and pushes through git-gate; protect = [] turns that
// off with a warning; a workspace whose .git/hooks is a link out of it is refused.
func TestProtectWorkspace(t *testing.T) {
	e := newEnv(t)
	ensureAgentImage(t, e)
	up := newUpstream(t)
	forge := newGitForge(t, up)
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+dnsAddr.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bare := filepath.Join(forge.httpsRoot, "repo.git")
	// checkout is a clone of the forge's repository whose origin is the remote the
	// manifest declares, owned by the agent image's user.
	checkout := func() string {
		dir := filepath.Join(t.TempDir(), "ws")
		forge.run("", "clone", "-q", bare, dir)
		forge.run(dir, "remote", "set-url", "origin", gitHTTPSURL)
		if out, err := exec.Command("chown", "-R", "1000:1000", dir).CombinedOutput(); err != nil {
			t.Fatalf("chown: %v: %s", err, out)
		}
		return dir
	}
	start := func(workspace, manifest string) (string, string, int) {
		t.Helper()
		if err := os.WriteFile(e.manifest, []byte(manifest), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := e.command([]string{"GIT_E2E_TOKEN=" + forge.token}, "start", "--detach",
			"--ca-file", forge.caFile, "--resolv-conf", resolv, "--add-host", gitHost+":"+upstreamAddr.Addr().String(), "gitgate")
		cmd.Dir = workspace
		return runCmd(t, cmd)
	}
	agent := func(id, script string) (string, error) {
		out, err := e.command(nil, "exec", id, "--", "bash", "-c", "cd /workspace && "+script).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	manifest := gitManifest(forge.keyFile, forge.knownHosts, gitHTTPSURL)

	t.Run("protected", func(t *testing.T) {
		ws := checkout()
		configBefore, err := os.ReadFile(filepath.Join(ws, ".git/config"))
		if err != nil {
			t.Fatal(err)
		}
		out, stderr, code := start(ws, manifest)
		if code != 0 {
			t.Fatalf("start: exit %d\nstdout: %s\nstderr: %s", code, out, stderr)
		}
		id := e.identityOf("gitgate")
		defer e.must("rm", "-f", id)
		for _, attack := range []struct{ what, script string }{
			{"write a hook", "echo 'touch /tmp/pwned' > .git/hooks/post-checkout"},
			{"write a hook by another name", "printf '#!/bin/sh\\n' > .git/hooks/x"},
			{"set core.fsmonitor", "git config core.fsmonitor 'touch /tmp/pwned'"},
			{"append to .git/config", "printf '[core]\\n\\thooksPath = /tmp\\n' >> .git/config"},
			{"remove .git/config", "rm -f .git/config"},
			{"rename .git/hooks", "mv .git/hooks .git/hooks-old"},
			{"rename .git", "mv .git .git-old"},
			{"remove .git", "rmdir .git"},
		} {
			if out, err := agent(id, attack.script); err == nil {
				t.Errorf("%s: worked from inside the agent:\n%s", attack.what, out)
			} else {
				t.Logf("%s: refused: %s", attack.what, out)
			}
		}
		// The agent still commits (identity by -c: its .git/config is read-only) and
		// pushes through git-gate.
		pushed, err := agent(id, "git checkout -q -b bottle/protected && echo p > p.txt && git add p.txt && "+
			"git -c user.name=Agent -c user.email=agent@bottle.invalid commit -q -m p && git push -q origin bottle/protected && git rev-parse HEAD")
		if err != nil {
			t.Fatalf("commit and push in the agent: %v\n%s", err, pushed)
		}
		if got := forge.ref(bare, "refs/heads/bottle/protected"); got != pushed {
			t.Errorf("push through git-gate: upstream has %q, want %s", got, pushed)
		}
		configAfter, err := os.ReadFile(filepath.Join(ws, ".git/config"))
		if err != nil || string(configAfter) != string(configBefore) {
			t.Errorf("the host's .git/config changed (%v):\n%s", err, configAfter)
		}
		hooks, _ := os.ReadDir(filepath.Join(ws, ".git/hooks"))
		for _, h := range hooks {
			if !strings.HasSuffix(h.Name(), ".sample") {
				t.Errorf("hook %s appeared on the host", h.Name())
			}
		}
	})

	t.Run("protect = [] warns and turns it off", func(t *testing.T) {
		ws := checkout()
		off := strings.Replace(manifest, "filter = \"builtin\"\n", "filter = \"builtin\"\nprotect = []\n", 1)
		out, stderr, code := start(ws, off)
		if code != 0 {
			t.Fatalf("start: exit %d\nstdout: %s\nstderr: %s", code, out, stderr)
		}
		id := e.identityOf("gitgate")
		defer e.must("rm", "-f", id)
		if !strings.Contains(stderr, "protect = [] turns off the workspace protection") {
			t.Errorf("no warning about protect = []:\n%s", stderr)
		}
		if out, err := agent(id, "printf '#!/bin/sh\\n' > .git/hooks/x"); err != nil {
			t.Errorf("with protect = [], writing a hook failed: %v: %s", err, out)
		}
	})

	t.Run("a link out of the workspace is refused", func(t *testing.T) {
		ws := checkout()
		outside := t.TempDir()
		hooks := filepath.Join(ws, ".git/hooks")
		if err := os.RemoveAll(hooks); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, hooks); err != nil {
			t.Fatal(err)
		}
		out, stderr, code := start(ws, manifest)
		if code == 0 || !strings.Contains(stderr, ".git/hooks is a symbolic link") {
			t.Fatalf("start with .git/hooks linked out: exit %d, want a refusal naming the link\nstdout: %s\nstderr: %s", code, out, stderr)
		}
		if ps := e.ps(); len(ps) != 0 {
			t.Errorf("bottles left: %+v", ps)
		}
	})
}

// TestCopyWarnsAboutGitHooks: with --cwd the copy is protected like a bound workspace,
// and what the agent plants where it can (a nested repository's hook and config) is
// warned about when the agent exits and again when `bottle cp` copies it out; what the
// original already had is not.
func TestCopyWarnsAboutGitHooks(t *testing.T) {
	e := newEnv(t)
	e.writeManifest("cpy")
	ws := t.TempDir()
	for name, content := range map[string]string{
		".git/config":            "[core]\n\tbare = false\n\tpager = less\n",
		".git/HEAD":              "ref: refs/heads/main\n",
		".git/hooks/pre-commit":  "#!/bin/sh\n# the user's own hook\n",
		"src/main.go":            "package main\n",
		".git/hooks/x.sample":    "sample\n",
		".git/refs/heads/.keep":  "",
		".git/objects/info/.kep": "",
	} {
		p := filepath.Join(ws, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	script := `if echo x > /workspace/.git/hooks/x 2>/dev/null; then echo hook-written; fi; ` +
		`mkdir -p /workspace/vendor/.git/hooks && echo evil > /workspace/vendor/.git/hooks/post-checkout && ` +
		`printf '[core]\n\tfsmonitor = evil\n' > /workspace/vendor/.git/config && echo planted`
	cmd := e.command(nil, "start", "--cwd", "cpy", "--", "/bin/sh", "-c", script)
	cmd.Dir = ws
	out, errOut, code := runCmd(t, cmd)
	if code != 0 || !strings.Contains(out, "planted") {
		t.Fatalf("start --cwd: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if strings.Contains(out, "hook-written") {
		t.Error("the agent wrote .git/hooks/x in its copy")
	}
	for _, want := range []string{"vendor/.git/hooks/post-checkout: hook", `vendor/.git/config: config core.fsmonitor = "evil"`} {
		if !strings.Contains(errOut, want) {
			t.Errorf("start does not warn about %q:\n%s", want, errOut)
		}
	}
	for _, old := range []string{".git/hooks/pre-commit", "core.pager"} {
		if strings.Contains(errOut, old) {
			t.Errorf("start warns about %s, which the original had:\n%s", old, errOut)
		}
	}
	id := e.identityOf("cpy")
	_, cpErr, code := e.bottle(nil, "cp", id+":vendor", t.TempDir())
	if code != 0 || !strings.Contains(cpErr, "copied out of bottle "+id) || !strings.Contains(cpErr, "post-checkout: hook") {
		t.Errorf("cp of vendor: exit %d, want a warning about its hook:\n%s", code, cpErr)
	}
	e.must("rm", id)
}
