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
	start := func(workspace, manifest string, env ...string) (string, string, int) {
		t.Helper()
		if err := os.WriteFile(e.manifest, []byte(manifest), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := e.command(append([]string{"GIT_E2E_TOKEN=" + forge.token}, env...), "start", "--detach",
			"--ca-file", forge.caFile, "--resolv-conf", resolv, "--add-host", gitHost+":"+upstreamAddr.Addr().String(), "gitgate")
		cmd.Dir = workspace
		return runCmd(t, cmd)
	}
	// started starts the bottle and returns its identity and start's stderr.
	started := func(t *testing.T, workspace, manifest string, env ...string) (string, string) {
		t.Helper()
		out, stderr, code := start(workspace, manifest, env...)
		if code != 0 {
			t.Fatalf("start: exit %d\nstdout: %s\nstderr: %s", code, out, stderr)
		}
		return e.identityOf("gitgate"), stderr
	}
	agent := func(id, script string) (string, error) {
		out, err := e.command(nil, "exec", id, "--", "bash", "-c", "cd /workspace && "+script).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	manifest := gitManifest(forge.keyFile, forge.knownHosts, gitHTTPSURL)
	// refused checks that each attack fails from inside the agent of bottle id.
	refused := func(t *testing.T, id string, attacks []attack) {
		t.Helper()
		for _, a := range attacks {
			if out, err := agent(id, a.script); err == nil {
				t.Errorf("%s: worked from inside the agent:\n%s", a.what, out)
			} else {
				t.Logf("%s: refused: %s", a.what, out)
			}
		}
	}

	chown := func(dirs ...string) {
		t.Helper()
		if out, err := exec.Command("chown", append([]string{"-R", "1000:1000"}, dirs...)...).CombinedOutput(); err != nil {
			t.Fatalf("chown: %v: %s", err, out)
		}
	}
	// hostGit runs the host's git in dir, as the person who owns the checkout would
	// after the agent; it must never be run where the agent planted what runs code.
	hostGit := func(dir string, args ...string) (string, error) {
		cmd := exec.Command("git", append([]string{"-c", "safe.directory=*", "-C", dir}, args...)...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "GIT_CONFIG_NOSYSTEM=1"}
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}

	t.Run("protected", func(t *testing.T) {
		ws := checkout()
		// A linked worktree gives the checkout a .git/worktrees admin dir.
		wt2 := filepath.Join(filepath.Dir(ws), "wt2")
		if out, err := hostGit(ws, "worktree", "add", "-q", "-b", "side", wt2); err != nil {
			t.Fatalf("git worktree add: %v\n%s", err, out)
		}
		// The probe runs from the workspace: the agent image has none of its own.
		copyFile(t, probeBin, filepath.Join(ws, "probe-bin"), 0o755)
		chown(ws, wt2)
		configBefore, err := os.ReadFile(filepath.Join(ws, ".git/config"))
		if err != nil {
			t.Fatal(err)
		}
		id, _ := started(t, ws, manifest)
		defer e.bottle(nil, "rm", "-f", id) // (removed below; this is for a failure)
		refused(t, id, []attack{
			{"write a hook", "echo 'touch /tmp/pwned' > .git/hooks/post-checkout"},
			{"write a hook by another name", "printf '#!/bin/sh\\n' > .git/hooks/x"},
			{"set core.fsmonitor", "git config core.fsmonitor 'touch /tmp/pwned'"},
			{"append to .git/config", "printf '[core]\\n\\thooksPath = /tmp\\n' >> .git/config"},
			{"remove .git/config", "rm -f .git/config"},
			{"rename .git/hooks", "mv .git/hooks .git/hooks-old"},
			{"rename .git", "mv .git .git-old"},
			{"remove .git", "rmdir .git"},
			// git takes config and hooks from where commondir points.
			{"write .git/commondir", "printf '../evil\\n' > .git/commondir"},
			{"remove .git/commondir", "rm -f .git/commondir"},
			{"write a worktree's commondir", "printf '../../../evil\\n' > .git/worktrees/wt2/commondir"},
			{"add a worktree admin dir", "mkdir .git/worktrees/evil"},
			// Without objects or refs .git is no repository, and git falls back to a bare
			// layout at the workspace root.
			{"rename .git/objects", "mv .git/objects .git/objects-old"},
			{"rename .git/refs", "mv .git/refs .git/refs-old"},
		})
		// Root in a user namespace of its own, with a mount namespace, the agent could
		// otherwise unmount the read-only mounts, or bind the workspace without them.
		userns, err := agent(id, "/workspace/probe-bin userns /workspace")
		t.Logf("probe userns in the agent: %v\n%s", err, userns)
		for _, line := range strings.Split(userns, "\n") {
			what, result, _ := strings.Cut(line, " ")
			switch {
			case what == "CLONE" && strings.HasPrefix(result, "REFUSED"):
			case what == "INNER" || what == "ERROR" || what == "probe:":
				t.Errorf("probe userns: %s", line)
			case strings.HasPrefix(what, "umount") || strings.HasPrefix(what, "bind-") || strings.HasPrefix(what, "remount") ||
				strings.HasPrefix(what, "write-") && what != "write-hook-after-tmpfs": // that tmpfs is the agent's own
				if !strings.HasPrefix(result, "REFUSED") {
					t.Errorf("in a user namespace the agent could %s", what)
				}
			}
		}
		if !strings.Contains(userns, "CLONE REFUSED") && !strings.Contains(userns, "umount-hooks") {
			t.Errorf("probe userns tried nothing:\n%s", userns)
		}
		// bottle's commondir is "." (the git dir itself), and the host's git works with it.
		if b, err := os.ReadFile(filepath.Join(ws, ".git/commondir")); err != nil || string(b) != ".\n" {
			t.Errorf("the host's .git/commondir while the bottle runs: %q, %v; want \".\\n\"", b, err)
		}
		if out, err := hostGit(ws, "rev-parse", "--git-common-dir"); err != nil || out != filepath.Join(ws, ".git") {
			t.Errorf("host git rev-parse --git-common-dir: %q, %v; want %s", out, err, filepath.Join(ws, ".git"))
		}
		if out, err := hostGit(ws, "status", "--short"); err != nil {
			t.Errorf("host git status with bottle's commondir: %v\n%s", err, out)
		}
		// The agent's git reads the worktrees; pruning them fails without harm.
		if out, err := agent(id, "git worktree list"); err != nil || !strings.Contains(out, "wt2") {
			t.Errorf("git worktree list in the agent: %v\n%s", err, out)
		}
		pruned, perr := agent(id, "git worktree prune; echo rc=$?")
		t.Logf("git worktree prune in the agent: %v: %s", perr, pruned)
		if _, err := os.Stat(filepath.Join(ws, ".git/worktrees/wt2")); err != nil {
			t.Errorf("the agent removed the host's worktree admin dir: %v", err)
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
		if out, err := hostGit(wt2, "status", "--short"); err != nil {
			t.Errorf("host git status in the linked worktree: %v\n%s", err, out)
		}
		e.must("rm", "-f", id)
		if _, err := os.Lstat(filepath.Join(ws, ".git/commondir")); !os.IsNotExist(err) {
			t.Errorf("bottle's .git/commondir is left after rm: %v", err)
		}
	})

	t.Run("what the agent leaves is warned about at stop and recorded", func(t *testing.T) {
		ws := checkout()
		// Without .git/hooks bottle makes it (empty, to mount it read-only).
		if err := os.RemoveAll(filepath.Join(ws, ".git/hooks")); err != nil {
			t.Fatal(err)
		}
		id, _ := started(t, ws, manifest)
		defer e.bottle(nil, "rm", "-f", id) // (removed below; this is for a failure)
		// What the host's git would run: a gitlink in the index whose git dir sets
		// core.fsmonitor (git status goes into it), and a bare layout at the workspace
		// root with core.pager (git falls back to it once .git is broken, or runs it
		// when git is run from there).
		plant := "git update-index --add --cacheinfo 160000,$(git rev-parse HEAD),sub && mkdir -p sub/.git && " +
			"printf '[core]\\n\\tfsmonitor = touch /tmp/pwned\\n' > sub/.git/config && " +
			"printf 'ref: refs/heads/main\\n' > HEAD && mkdir -p objects refs && printf '[core]\\n\\tpager = touch /tmp/pwned\\n' > config && echo planted"
		if out, err := agent(id, plant); err != nil || !strings.HasSuffix(out, "planted") {
			t.Fatalf("plant: %v\n%s", err, out)
		}
		_, stopErr, code := e.bottle(nil, "stop", id)
		if code != 0 {
			t.Fatalf("stop: exit %d\n%s", code, stopErr)
		}
		for _, want := range []string{`.git/index: gitlink "sub"`, `sub/.git/config: config core.fsmonitor`, "HEAD: bare repository layout", `config: config core.pager`, "safe.bareRepository explicit"} {
			if !strings.Contains(stopErr, want) {
				t.Errorf("stop does not warn about %s:\n%s", want, stopErr)
			}
		}
		for _, old := range []string{": .git/hooks", ": .git/config:", "commondir"} {
			if strings.Contains(stopErr, old) {
				t.Errorf("stop warns about %s, which the agent did not add:\n%s", old, stopErr)
			}
		}
		trail := e.must("audit", id, "--json")
		if !strings.Contains(trail, `"kind":"workspace"`) || !strings.Contains(trail, "core.fsmonitor") {
			t.Errorf("the trail has no workspace record:\n%s", trail)
		}
		if _, errOut, code := e.bottle(nil, "audit", id, "--verify"); code != 0 {
			t.Errorf("audit --verify: exit %d\n%s", code, errOut)
		}
		_, rmErr, code := e.bottle(nil, "rm", id)
		if code != 0 || !strings.Contains(rmErr, "sub/.git/config: config core.fsmonitor") {
			t.Errorf("rm: exit %d, want it to warn again:\n%s", code, rmErr)
		}
		// What bottle made is gone; what the agent left stays for the person.
		for _, made := range []string{".git/hooks", ".git/commondir"} {
			if _, err := os.Lstat(filepath.Join(ws, made)); !os.IsNotExist(err) {
				t.Errorf("%s that bottle made is left after rm: %v", made, err)
			}
		}
		if _, err := os.Stat(filepath.Join(ws, "sub/.git/config")); err != nil {
			t.Errorf("rm removed what the agent left: %v", err)
		}
	})

	t.Run("core.hooksPath and config.worktree", func(t *testing.T) {
		// husky's layout: core.hooksPath in the workspace, which git runs hooks from
		// instead of .git/hooks; and a per-worktree config git reads once
		// extensions.worktreeConfig is on. bottle makes both (missing here) and mounts
		// them read-only, and removes them again at rm while empty.
		ws := checkout()
		for _, kv := range [][2]string{{"core.hooksPath", ".husky"}, {"extensions.worktreeConfig", "true"}} {
			if out, err := hostGit(ws, "config", kv[0], kv[1]); err != nil {
				t.Fatalf("git config %s: %v\n%s", kv[0], err, out)
			}
		}
		chown(ws)
		id, _ := started(t, ws, manifest)
		defer e.bottle(nil, "rm", "-f", id) // (removed below; this is for a failure)
		refused(t, id, []attack{
			{"write a hook in core.hooksPath", "mkdir -p .husky && printf '#!/bin/sh\\ntouch /tmp/pwned\\n' > .husky/pre-commit"},
			{"rename core.hooksPath", "mv .husky/ .husky-old"},
			{"write .git/config.worktree", "printf '[core]\\n\\tfsmonitor = touch /tmp/pwned\\n' > .git/config.worktree"},
			{"git config --worktree", "git config --worktree core.fsmonitor 'touch /tmp/pwned'"},
		})
		if entries, err := os.ReadDir(filepath.Join(ws, ".husky")); err != nil || len(entries) != 0 {
			t.Errorf("the host's .husky: %v, %v; want the empty dir bottle made", entries, err)
		}
		if b, err := os.ReadFile(filepath.Join(ws, ".git/config.worktree")); err != nil || len(b) != 0 {
			t.Errorf("the host's .git/config.worktree: %q, %v; want the empty file bottle made", b, err)
		}
		if out, err := hostGit(ws, "status", "--short"); err != nil {
			t.Errorf("host git status with bottle's config.worktree: %v\n%s", err, out)
		}
		e.must("rm", "-f", id)
		for _, made := range []string{".husky", ".git/config.worktree"} {
			if _, err := os.Lstat(filepath.Join(ws, made)); !os.IsNotExist(err) {
				t.Errorf("%s that bottle made is left after rm: %v", made, err)
			}
		}
	})

	t.Run("a protected path swapped after bottle's check", func(t *testing.T) {
		// Another agent on the same checkout could swap .git/hooks for a link between
		// bottle's check and the runtime's mount; the fault hook does that swap right
		// after bottle opened the paths: the agent still gets what bottle checked.
		ws := checkout()
		for p, content := range map[string]string{".git/hooks/marker": "original\n", "decoy-hooks/marker": "decoy\n"} {
			if err := os.MkdirAll(filepath.Join(ws, filepath.Dir(p)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(ws, p), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		chown(ws)
		id, _ := started(t, ws, manifest, "BOTTLE_TEST_FAULT=swap-git-hooks")
		defer e.must("rm", "-f", id)
		if target, err := os.Readlink(filepath.Join(ws, ".git/hooks")); err != nil || target != "../decoy-hooks" {
			t.Fatalf("the fault did not swap .git/hooks: %q, %v", target, err)
		}
		if out, err := agent(id, "cat .git/hooks/marker"); err != nil || out != "original" {
			t.Errorf("the agent's .git/hooks after the swap: %q, %v; want the original", out, err)
		}
		if out, err := agent(id, "echo x > .git/hooks/y"); err == nil {
			t.Errorf("writing a hook worked after the swap: %s", out)
		}
	})

	t.Run("protect = [] warns and turns it off", func(t *testing.T) {
		ws := checkout()
		off := strings.Replace(manifest, "filter = \"builtin\"\n", "filter = \"builtin\"\nprotect = []\n", 1)
		id, stderr := started(t, ws, off)
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

// attack is a script the agent runs to plant what runs on the host.
type attack struct{ what, script string }

// copyFile copies the host file from to to, with mode.
func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}
