package protect

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestHooksPathIn: a relative core.hooksPath is the worktree root's, "~/" the home's,
// and only what lands in the workspace counts.
func TestHooksPathIn(t *testing.T) {
	dir := t.TempDir()
	home := t.TempDir()
	for _, c := range []struct{ v, home, want string }{
		{"", home, ""},
		{".husky/_", home, ".husky/_"},
		{"./hooks/../githooks", home, "githooks"},
		{filepath.Join(dir, "tools/hooks"), home, "tools/hooks"},
		{".", home, "."},
		{"../elsewhere", home, ""},
		{"/usr/share/git-hooks", home, ""},
		{"~/hooks", home, ""},
		{"~/hooks", "", ""},
		{"~/" + filepath.Base(dir) + "/h", filepath.Dir(dir), "h"},
	} {
		if got := hooksPathIn(dir, c.v, c.home); got != c.want {
			t.Errorf("hooksPathIn(%q, home %q) = %q, want %q", c.v, c.home, got, c.want)
		}
	}
	// ~ at the workspace itself.
	if got := hooksPathIn(dir, "~/.githooks", dir); got != ".githooks" {
		t.Errorf("hooksPathIn(~/.githooks) with home = workspace: %q, want .githooks", got)
	}
	// A link outside the workspace (the person's) into it.
	link := filepath.Join(t.TempDir(), "hooks")
	if err := os.MkdirAll(filepath.Join(dir, "h"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "h"), link); err != nil {
		t.Fatal(err)
	}
	if got := hooksPathIn(dir, link, home); got != "h" {
		t.Errorf("hooksPathIn(link into the workspace) = %q, want h", got)
	}
}

// TestPlanHooksPath: core.hooksPath in the workspace, set in the repository's config, in
// config.worktree (read only with extensions.worktreeConfig) or in the person's global
// config (the last that sets it wins), is mounted read-only, made with its parents when
// missing, and removed again while empty; outside the workspace nothing changes.
func TestPlanHooksPath(t *testing.T) {
	global := filepath.Join(t.TempDir(), "gitconfig")
	for _, c := range []struct {
		name, repo, worktree, global string
		want                         string // the mounted hooks dir, "" for none
	}{
		{"repo", "[core]\n\thooksPath = .husky/_\n", "", "", ".husky/_"},
		{"global relative", "", "", "[core]\n\thooksPath = .githooks\n", ".githooks"},
		{"repo over global", "[core]\n\thooksPath = repo-hooks\n", "", "[core]\n\thooksPath = .githooks\n", "repo-hooks"},
		{"config.worktree", "[extensions]\n\tworktreeConfig = true\n", "[core]\n\thooksPath = wt-hooks\n", "", "wt-hooks"},
		{"config.worktree unread without the extension", "", "[core]\n\thooksPath = wt-hooks\n", "", ""},
		{"outside", "[core]\n\thooksPath = /usr/share/hooks\n", "", "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := mkTree(t, ".git/hooks/", ".git/objects/", ".git/refs/")
			writeFile(t, filepath.Join(dir, ".git/config"), c.repo)
			if c.worktree != "" {
				writeFile(t, filepath.Join(dir, ".git/config.worktree"), c.worktree)
			}
			writeFile(t, global, c.global)
			l, err := Plan(dir, nil, User{Home: t.TempDir(), Configs: []string{filepath.Join(t.TempDir(), "none"), global}})
			if err != nil {
				t.Fatal(err)
			}
			got := paths(l)
			var extra []string
			for _, p := range got {
				if !strings.HasPrefix(p, ".git/") && !strings.HasPrefix(p, ".git:") {
					extra = append(extra, p)
				}
			}
			if c.want == "" {
				if len(extra) != 0 {
					t.Errorf("mounts %v, want nothing beyond .git", got)
				}
				return
			}
			if !slices.Equal(extra, []string{c.want + ":ro"}) {
				t.Fatalf("mounts %v, want %s read-only", got, c.want)
			}
			// Missing: made with its parents, in order, then removed while empty.
			wantCreate := []string{}
			parts := strings.Split(c.want, "/")
			for i := range parts {
				wantCreate = append(wantCreate, strings.Join(parts[:i+1], "/"))
			}
			if !slices.Equal(l.Create, wantCreate) {
				t.Errorf("create %v, want %v", l.Create, wantCreate)
			}
			if err := Prepare(dir, l); err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Lstat(filepath.Join(dir, c.want)); err != nil || !fi.IsDir() {
				t.Fatalf("%s not made: %v", c.want, err)
			}
			if _, err := Pin(dir, l); err != nil {
				t.Errorf("pin: %v", err)
			}
			if err := RemoveEmptyDirs(dir, l.Create); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(filepath.Join(dir, parts[0])); !os.IsNotExist(err) {
				t.Errorf("%s left after removal: %v", parts[0], err)
			}
		})
	}
}

// TestPlanHooksPathLink: core.hooksPath through a link in the workspace is refused like
// any protected path with a link on the way; one that is the workspace itself is warned
// about.
func TestPlanHooksPathLink(t *testing.T) {
	dir := mkTree(t, ".git/hooks/", "real/")
	writeFile(t, filepath.Join(dir, ".git/config"), "[core]\n\thooksPath = .husky/_\n")
	if err := os.Symlink("real", filepath.Join(dir, ".husky")); err != nil {
		t.Fatal(err)
	}
	if _, err := Plan(dir, nil, User{}); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("plan with core.hooksPath through a link: %v, want a refusal", err)
	}
	writeFile(t, filepath.Join(dir, ".git/config"), "[core]\n\thooksPath = .\n")
	l, err := Plan(dir, nil, User{})
	if err != nil || !strings.Contains(strings.Join(l.Warnings, "\n"), "core.hooksPath is the workspace itself") {
		t.Errorf("plan with core.hooksPath = .: %v %v, want a warning", l.Warnings, err)
	}
}

// TestPlanConfigWorktree: with extensions.worktreeConfig and no .git/config.worktree,
// bottle makes it empty to mount it read-only, and removes it again while empty; what
// the person wrote in it stays.
func TestPlanConfigWorktree(t *testing.T) {
	dir := mkTree(t, ".git/hooks/")
	writeFile(t, filepath.Join(dir, ".git/config"), "[extensions]\n\tworktreeConfig = true\n")
	l, err := Plan(dir, nil, User{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(l.CreateFiles, []string{".git/config.worktree"}) || !slices.Contains(paths(l), ".git/config.worktree:ro") {
		t.Fatalf("create files %v, mounts %v: want .git/config.worktree made and read-only", l.CreateFiles, paths(l))
	}
	if err := Prepare(dir, l); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, ".git/config.worktree")
	if fi, err := os.Lstat(p); err != nil || !fi.Mode().IsRegular() || fi.Size() != 0 {
		t.Fatalf("config.worktree after prepare: %v, %v; want an empty file", fi, err)
	}
	if _, err := Pin(dir, l); err != nil {
		t.Errorf("pin: %v", err)
	}
	if err := RemoveEmptyFiles(dir, l.CreateFiles); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(p); !os.IsNotExist(err) {
		t.Errorf("config.worktree left after removal: %v", err)
	}
	writeFile(t, p, "[core]\n\tfsmonitor = x\n")
	if err := RemoveEmptyFiles(dir, l.CreateFiles); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Errorf("a written config.worktree was removed: %v", err)
	}
	// Without the extension nothing is made.
	writeFile(t, filepath.Join(dir, ".git/config"), "[core]\n\tbare = false\n")
	os.Remove(p)
	if l, err := Plan(dir, nil, User{}); err != nil || len(l.CreateFiles) != 0 {
		t.Errorf("without extensions.worktreeConfig: create files %v, %v; want none", l.CreateFiles, err)
	}
}

// TestPlanHooksPathLinkedWorktree: in a linked worktree (.git a link file) core.hooksPath
// comes from the repository's config where .git and its commondir point, and the
// worktree's config.worktree with extensions.worktreeConfig; a relative one lands in the
// worktree, the workspace.
func TestPlanHooksPathLinkedWorktree(t *testing.T) {
	repo := t.TempDir()
	admin := filepath.Join(repo, ".git/worktrees/wt")
	writeFile(t, filepath.Join(admin, "commondir"), "../..\n")
	for _, c := range []struct{ name, config, worktree, want string }{
		{"repository config", "[core]\n\thooksPath = .husky/_\n", "", ".husky/_"},
		{"config.worktree", "[extensions]\n\tworktreeConfig = true\n", "[core]\n\thooksPath = wt-hooks\n", "wt-hooks"},
		{"none", "[core]\n\tbare = false\n", "[core]\n\thooksPath = wt-hooks\n", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			writeFile(t, filepath.Join(repo, ".git/config"), c.config)
			writeFile(t, filepath.Join(admin, "config.worktree"), c.worktree)
			ws := t.TempDir()
			writeFile(t, filepath.Join(ws, ".git"), "gitdir: "+admin+"\n")
			l, err := Plan(ws, nil, User{})
			if err != nil {
				t.Fatal(err)
			}
			want := []string{".git:ro"}
			if c.want != "" {
				want = append(want, c.want+":ro")
			}
			if got := paths(l); !slices.Equal(got, want) {
				t.Errorf("mounts %v, want %v", got, want)
			}
		})
	}
}

// TestReadUserConfigOnlyRegular: a config path that is a FIFO or a device is refused
// (hostfile's TestReadNeverOpensANonRegularFile shows it is not even opened).
func TestReadUserConfigOnlyRegular(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "config")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{fifo, "/dev/null"} {
		if _, err := readUserConfig(p); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("%s: %v, want refused as not a regular file", p, err)
		}
	}
	missing, err := readUserConfig(filepath.Join(t.TempDir(), "nosuch"))
	if err != nil || missing != nil {
		t.Errorf("a missing config: %q, %v; want nothing, no error", missing, err)
	}
}
