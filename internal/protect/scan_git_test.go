package protect

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// git runs git in dir with no user or system config and no repository looked for above
// the test's dirs, and returns its trimmed output.
func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, err := gitRun(dir, args...)
	if err != nil {
		t.Fatalf("git %v in %s: %v\n%s", args, dir, err, out)
	}
	return out
}

func gitRun(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1",
		"GIT_CEILING_DIRECTORIES="+filepath.Dir(filepath.Dir(dir)), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t",
		"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@t")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// gitRepo makes a repository with one commit in a new dir.
func gitRepo(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatal("git is needed (scripts/setup-host.sh installs it)")
	}
	ws := filepath.Join(t.TempDir(), "ws")
	git(t, filepath.Dir(ws), "init", "-q", "-b", "main", ws)
	write(t, ws, "a.go", "package a\n")
	git(t, ws, "add", ".")
	git(t, ws, "commit", "-q", "-m", "a")
	return ws
}

func mkdirs(t *testing.T, dir string, rels ...string) {
	t.Helper()
	for _, r := range rels {
		if err := os.MkdirAll(filepath.Join(dir, r), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func findingsText(found []Finding) string {
	var lines []string
	for _, f := range found {
		lines = append(lines, f.String())
	}
	return strings.Join(lines, "\n")
}

// TestScanRealLayoutsClean: what git itself lays out for an ordinary repository, one
// with a submodule, and one with a linked worktree in it gives no finding beyond the
// links git made on purpose (a submodule's or worktree's .git file, its gitlink, and the
// submodule's core.worktree), which the baseline of a start holds.
func TestScanRealLayoutsClean(t *testing.T) {
	ws := gitRepo(t)
	if f := scanDir(t, ws); len(f) != 0 {
		t.Errorf("an ordinary repository: findings\n%s", findingsText(f))
	}

	lib := gitRepo(t)
	git(t, ws, "-c", "protocol.file.allow=always", "submodule", "add", "-q", lib, "vendor/lib")
	git(t, ws, "commit", "-q", "-m", "sub")
	git(t, ws, "worktree", "add", "-q", "wt")
	git(t, ws, "-C", "wt", "status") // git writes the worktree's own index
	if got := git(t, filepath.Join(ws, "wt"), "rev-parse", "--git-common-dir"); got != filepath.Join(ws, ".git") {
		t.Fatalf("the linked worktree's common dir is %s", got)
	}
	for _, f := range scanDir(t, ws) {
		ok := f.Path == "vendor/lib/.git" && strings.HasPrefix(f.What, "git link (gitdir: ../../.git/modules/vendor/lib)") ||
			f.Path == "wt/.git" && strings.HasPrefix(f.What, "git link (gitdir: "+filepath.Join(ws, ".git/worktrees/wt")+")") ||
			(f.Path == ".git/index" || f.Path == ".git/worktrees/wt/index") && f.What == `gitlink "vendor/lib" (git goes into it as a submodule)` ||
			f.Path == ".git/modules/vendor/lib/config" && f.What == `config core.worktree = "../../../../vendor/lib"`
		if !ok {
			t.Errorf("a repository with a submodule and a linked worktree: finding %s", f)
		}
	}
}

// TestScanBareLayoutsGitUses: the layouts of the hostile review that git takes for its
// repository (checked with git rev-parse) are found, with the config git reads there:
// a bare layout whose objects and refs are links to the real ones, beside a .git whose
// HEAD is gone; one made of a commondir, beside a .git whose HEAD is a dir; one in a
// subdir; and a .git/commondir leading to a dir that is no repository.
func TestScanBareLayoutsGitUses(t *testing.T) {
	pager := "[core]\n\tpager = \"touch /tmp/PWNED; cat\"\n"
	cases := []struct {
		name   string
		in     string // where git runs
		gitDir string // what git rev-parse --git-dir says there
		make   func(t *testing.T, ws string)
		want   []string
	}{{
		name: "links", in: ".", gitDir: ".",
		make: func(t *testing.T, ws string) {
			if err := os.Remove(filepath.Join(ws, ".git/HEAD")); err != nil {
				t.Fatal(err)
			}
			write(t, ws, "HEAD", "ref: refs/heads/main\n")
			symlink(t, ".git/objects", filepath.Join(ws, "objects"))
			symlink(t, ".git/refs", filepath.Join(ws, "refs"))
			write(t, ws, "config", pager)
			write(t, ws, "hooks/post-checkout", "#!/bin/sh\nevil\n")
		},
		want: []string{".git/HEAD: missing or a dir", "HEAD: " + BareLayout, `config: config core.pager = "touch /tmp/PWNED; cat"`, "hooks/post-checkout: hook"},
	}, {
		name: "commondir", in: ".", gitDir: ".",
		make: func(t *testing.T, ws string) {
			if err := os.Remove(filepath.Join(ws, ".git/HEAD")); err != nil {
				t.Fatal(err)
			}
			mkdirs(t, ws, ".git/HEAD", "x/objects", "x/refs")
			write(t, ws, "HEAD", "ref: refs/heads/main\n")
			write(t, ws, "commondir", "x\n")
			write(t, ws, "x/config", pager)
			write(t, ws, "x/hooks/post-checkout", "#!/bin/sh\nevil\n")
		},
		want: []string{".git/HEAD: missing or a dir", "HEAD: " + BareLayout, "commondir: git dir link (x)", `x/config: config core.pager`, "x/hooks/post-checkout: hook"},
	}, {
		name: "subdir", in: "sub", gitDir: ".",
		make: func(t *testing.T, ws string) {
			mkdirs(t, ws, "sub")
			write(t, ws, "sub/HEAD", "ref: refs/heads/main\n")
			symlink(t, "../.git/objects", filepath.Join(ws, "sub/objects"))
			symlink(t, "../.git/refs", filepath.Join(ws, "sub/refs"))
			write(t, ws, "sub/config", pager)
		},
		want: []string{"sub/HEAD: " + BareLayout, "sub/config: config core.pager"},
	}, {
		name: "git dir commondir", in: ".", gitDir: ".git",
		make: func(t *testing.T, ws string) {
			mkdirs(t, ws, "x/objects", "x/refs")
			write(t, ws, ".git/commondir", "../x\n")
			write(t, ws, "x/config", pager)
		},
		want: []string{".git/commondir: git dir link (../x)", "x/config: config core.pager"},
	}, {
		// git reads only the first 40 hex digits of a HEAD, of either case.
		name: "hex HEAD", in: "s", gitDir: ".",
		make: func(t *testing.T, ws string) {
			mkdirs(t, ws, "s")
			write(t, ws, "s/HEAD", strings.ToUpper(git(t, ws, "rev-parse", "HEAD"))+" junk\n")
			symlink(t, "../.git/objects", filepath.Join(ws, "s/objects"))
			symlink(t, "../.git/refs", filepath.Join(ws, "s/refs"))
			write(t, ws, "s/config", pager)
		},
		want: []string{"s/HEAD: " + BareLayout, "s/config: config core.pager"},
	}, {
		// The scan skips object stores, but not a common dir there.
		name: "commondir into objects", in: ".", gitDir: ".git",
		make: func(t *testing.T, ws string) {
			mkdirs(t, ws, ".git/objects/evil/objects", ".git/objects/evil/refs")
			write(t, ws, ".git/commondir", "objects/evil\n")
			write(t, ws, ".git/objects/evil/config", pager)
			write(t, ws, ".git/objects/evil/hooks/pre-commit", "evil")
		},
		want: []string{".git/commondir: git dir link (objects/evil)", ".git/objects/evil/config: config core.pager", ".git/objects/evil/hooks/pre-commit: hook"},
	}, {
		// git follows a link at a repository's config.
		name: "config link", in: "sub", gitDir: ".git",
		make: func(t *testing.T, ws string) {
			git(t, ws, "init", "-q", "sub")
			if err := os.Remove(filepath.Join(ws, "sub/.git/config")); err != nil {
				t.Fatal(err)
			}
			write(t, ws, "evil.conf", pager)
			symlink(t, "../../evil.conf", filepath.Join(ws, "sub/.git/config"))
		},
		want: []string{"sub/.git/config: config that is no regular file"},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ws := gitRepo(t)
			before := scanDir(t, ws)
			c.make(t, ws)
			if got := git(t, filepath.Join(ws, c.in), "rev-parse", "--git-dir"); got != c.gitDir {
				t.Fatalf("git takes %s for its git dir, want %s: the layout is not the one git uses", got, c.gitDir)
			}
			if got := git(t, filepath.Join(ws, c.in), "config", "core.pager"); !strings.Contains(got, "PWNED") {
				t.Fatalf("git there does not read the agent's config: core.pager = %q", got)
			}
			all := findingsText(Appeared(before, scanDir(t, ws)))
			for _, w := range c.want {
				if !strings.Contains(all, w) {
					t.Errorf("findings lack %q:\n%s", w, all)
				}
			}
		})
	}
}

// TestScanRebaseInProgress: an interactive rebase stopped midway, with an exec line the
// agent added to its todo list, is found; git rebase --continue does run that line.
func TestScanRebaseInProgress(t *testing.T) {
	ws := gitRepo(t)
	for _, f := range []string{"b", "c"} {
		write(t, ws, f, f)
		git(t, ws, "add", f)
		git(t, ws, "commit", "-q", "-m", f)
	}
	if out, err := gitRun(ws, "-c", "sequence.editor=sed -i 1s/^pick/edit/", "rebase", "-q", "-i", "HEAD~2"); err != nil {
		t.Fatalf("rebase: %v\n%s", err, out)
	}
	before := scanDir(t, ws)
	if !strings.Contains(findingsText(before), ".git/rebase-merge: rebase, cherry-pick or revert in progress") {
		t.Errorf("a rebase in progress is not found:\n%s", findingsText(before))
	}
	todo := filepath.Join(ws, ".git/rebase-merge/git-rebase-todo")
	b, err := os.ReadFile(todo)
	if err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(t.TempDir(), "ran")
	if err := os.WriteFile(todo, append([]byte("exec touch "+marker+"\n"), b...), 0o644); err != nil {
		t.Fatal(err)
	}
	all := findingsText(Appeared(before, scanDir(t, ws)))
	if !strings.Contains(all, ".git/rebase-merge/git-rebase-todo: exec touch "+marker) {
		t.Errorf("the exec line is not found:\n%s", all)
	}
	git(t, ws, "rebase", "--continue")
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("git rebase --continue did not run the exec line (%v): the finding would be moot", err)
	}
}
