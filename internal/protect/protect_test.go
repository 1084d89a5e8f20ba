package protect

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// mkTree makes files (content "x"; a name ending in "/" is a dir) under a temp dir.
func mkTree(t *testing.T, paths ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, p := range paths {
		full := filepath.Join(dir, p)
		if strings.HasSuffix(p, "/") {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func paths(l Layout) []string {
	var out []string
	for _, m := range l.Mounts {
		mode := "ro"
		if !m.ReadOnly {
			mode = "rw"
		}
		out = append(out, m.Path+":"+mode)
	}
	return out
}

func TestPlanDefault(t *testing.T) {
	dir := mkTree(t, ".git/hooks/", ".git/config", ".git/config.worktree", ".git/objects/", ".git/refs/", ".git/worktrees/wt/gitdir",
		".git/modules/sub/hooks/", ".git/modules/sub/config", ".git/modules/sub/HEAD", "src/a.go")
	l, err := Plan(dir, nil, User{})
	if err != nil {
		t.Fatal(err)
	}
	// .git, objects and refs first (mount points: they cannot be renamed or removed),
	// then what is beneath, read-only.
	want := []string{".git:rw", ".git/objects:rw", ".git/refs:rw", ".git/hooks:ro", ".git/config:ro", ".git/config.worktree:ro", ".git/worktrees:ro",
		".git/commondir:ro", ".git/modules/sub/hooks:ro", ".git/modules/sub/config:ro"}
	if got := paths(l); !reflect.DeepEqual(got, want) {
		t.Errorf("mounts %v, want %v", got, want)
	}
	if len(l.Create) != 0 || len(l.Warnings) != 0 || !l.Commondir {
		t.Errorf("create %v, warnings %v, commondir %v: want none, none, bottle's own", l.Create, l.Warnings, l.Commondir)
	}
}

func TestPlanMissingHooksAndExtras(t *testing.T) {
	dir := mkTree(t, ".git/config", ".github/workflows/ci.yml", "Makefile")
	extra := []string{".github/workflows", "Makefile", "no/such/file"}
	l, err := Plan(dir, &extra, User{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{".git:rw", ".git/hooks:ro", ".git/config:ro", ".git/commondir:ro", ".github/workflows:ro", "Makefile:ro"}
	if got := paths(l); !reflect.DeepEqual(got, want) {
		t.Errorf("mounts %v, want %v", got, want)
	}
	if !reflect.DeepEqual(l.Create, []string{".git/hooks"}) {
		t.Errorf("create %v, want the missing .git/hooks", l.Create)
	}
	if len(l.Warnings) != 1 || !strings.Contains(l.Warnings[0], "no/such/file") {
		t.Errorf("warnings %v, want one about no/such/file", l.Warnings)
	}
	if err := Prepare(dir, l); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(filepath.Join(dir, ".git/hooks")); err != nil || !fi.IsDir() {
		t.Errorf("Prepare did not make .git/hooks: %v", err)
	}
}

func TestPlanOff(t *testing.T) {
	dir := mkTree(t, ".git/hooks/", ".git/config")
	l, err := Plan(dir, &[]string{}, User{})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Mounts) != 0 || len(l.Warnings) != 1 || !strings.Contains(l.Warnings[0], "protect = []") {
		t.Errorf("protect = []: mounts %v, warnings %v; want none and a warning", l.Mounts, l.Warnings)
	}
}

func TestPlanWorktreeLinkAndNoRepo(t *testing.T) {
	dir := mkTree(t, ".git")
	l, err := Plan(dir, nil, User{})
	if err != nil {
		t.Fatal(err)
	}
	if got := paths(l); !reflect.DeepEqual(got, []string{".git:ro"}) {
		t.Errorf("a .git link file: mounts %v, want it read-only", got)
	}
	l, err = Plan(t.TempDir(), nil, User{})
	if err != nil || len(l.Mounts) != 0 {
		t.Errorf("no repository: mounts %v, err %v; want none", l.Mounts, err)
	}
}

// TestPlanRefusesLinks: a link anywhere on a protected path would make bottle mount
// whatever it points at (a host path outside the workspace).
func TestPlanRefusesLinks(t *testing.T) {
	outside := t.TempDir()
	for _, tc := range []struct{ link string }{
		{".git"}, {".git/hooks"}, {".git/config"}, {".git/config.worktree"}, {".git/modules/sub/hooks"}, {"docs"},
		{".git/objects"}, {".git/refs"}, {".git/worktrees"},
	} {
		dir := mkTree(t, ".git/hooks/", ".git/config", ".git/modules/sub/config", ".git/modules/sub/HEAD")
		full := filepath.Join(dir, tc.link)
		if err := os.RemoveAll(full); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, full); err != nil {
			t.Fatal(err)
		}
		extra := []string{"docs/x"}
		if _, err := Plan(dir, &extra, User{}); err == nil || !strings.Contains(err.Error(), "symbolic link") {
			t.Errorf("%s linked out: err %v, want a refusal naming the link", tc.link, err)
		}
	}
}

func TestCheckPath(t *testing.T) {
	for _, ok := range []string{".github/workflows", "Makefile", "a/b/c", "..foo"} {
		if err := CheckPath(ok); err != nil {
			t.Errorf("CheckPath(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "/etc", "../x", "..", "a/../../x", "a/./b", "a/", "a//b"} {
		if err := CheckPath(bad); err == nil {
			t.Errorf("CheckPath(%q) accepted", bad)
		}
	}
}

// TestPlanNestedSubmodules: a submodule named with a slash (.git/modules/vendor/lib) and a
// nested one (.git/modules/a/modules/b) are protected too; a missing hooks dir of one is
// created empty, so the agent cannot add it.
func TestPlanNestedSubmodules(t *testing.T) {
	dir := mkTree(t, ".git/hooks/", ".git/config", ".git/modules/vendor/lib/HEAD", ".git/modules/vendor/lib/config",
		".git/modules/a/HEAD", ".git/modules/a/config", ".git/modules/a/hooks/", ".git/modules/a/modules/b/HEAD", ".git/modules/a/modules/b/config")
	l, err := Plan(dir, nil, User{})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(paths(l), " ")
	for _, want := range []string{".git/modules/vendor/lib/hooks:ro", ".git/modules/vendor/lib/config:ro", ".git/modules/a/hooks:ro", ".git/modules/a/config:ro",
		".git/modules/a/modules/b/hooks:ro", ".git/modules/a/modules/b/config:ro"} {
		if !strings.Contains(got, want) {
			t.Errorf("mounts %s lack %s", got, want)
		}
	}
	if c := strings.Join(l.Create, " "); !strings.Contains(c, ".git/modules/vendor/lib/hooks") || !strings.Contains(c, ".git/modules/a/modules/b/hooks") {
		t.Errorf("create %v: the missing submodule hooks dirs are not made", l.Create)
	}
}

// TestCommondir: a repository without .git/commondir gets bottle's "." (so it can be
// mounted read-only), made once, kept by a second plan (another bottle on the checkout,
// or a resume), and removed only while it is still bottle's; a repository's own
// commondir is mounted read-only as it is and never removed.
func TestCommondir(t *testing.T) {
	dir := mkTree(t, ".git/hooks/", ".git/config")
	cd := filepath.Join(dir, ".git/commondir")
	l, err := Plan(dir, nil, User{})
	if err != nil || !l.Commondir {
		t.Fatalf("plan: commondir %v, err %v; want bottle's own", l.Commondir, err)
	}
	if err := Prepare(dir, l); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(cd); err != nil || string(b) != ".\n" {
		t.Fatalf("commondir %q, %v; want \".\\n\"", b, err)
	}
	again, err := Plan(dir, nil, User{})
	if err != nil || !again.Commondir || !reflect.DeepEqual(paths(again), paths(l)) {
		t.Errorf("second plan: %v commondir %v err %v; want the same, bottle's own", paths(again), again.Commondir, err)
	}
	if err := Prepare(dir, again); err != nil {
		t.Errorf("second prepare: %v", err)
	}
	if err := RemoveCommondir(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(cd); !os.IsNotExist(err) {
		t.Errorf("bottle's commondir left: %v", err)
	}
	// Changed meanwhile (by the agent through another path, or by the person): kept.
	if err := os.WriteFile(cd, []byte("../elsewhere\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err = Plan(dir, nil, User{})
	if err != nil || l.Commondir || !strings.Contains(strings.Join(paths(l), " "), ".git/commondir:ro") {
		t.Errorf("a repository's own commondir: %v commondir %v err %v; want it read-only and not bottle's", paths(l), l.Commondir, err)
	}
	if err := Prepare(dir, l); err != nil {
		t.Fatal(err)
	}
	if err := RemoveCommondir(dir); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(cd); string(b) != "../elsewhere\n" {
		t.Errorf("a commondir that is not bottle's was changed: %q", b)
	}
	// A link there is refused like any protected path.
	if err := os.Remove(cd); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(t.TempDir(), cd); err != nil {
		t.Fatal(err)
	}
	if _, err := Plan(dir, nil, User{}); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("commondir linked out: err %v, want a refusal", err)
	}
	if err := RemoveCommondir(dir); err == nil {
		t.Errorf("RemoveCommondir followed or removed a link")
	}
}

// TestRemoveEmptyDirs: the dirs Prepare made go again while empty; one that got a file
// stays, and a link there is neither followed nor removed.
func TestRemoveEmptyDirs(t *testing.T) {
	dir := mkTree(t, ".git/config", ".git/modules/a/HEAD", ".git/modules/a/config")
	l, err := Plan(dir, nil, User{})
	if err != nil {
		t.Fatal(err)
	}
	if err := Prepare(dir, l); err != nil {
		t.Fatal(err)
	}
	write(t, dir, ".git/modules/a/hooks/post-checkout", "kept")
	if err := RemoveEmptyDirs(dir, l.Create); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dir, ".git/hooks")); !os.IsNotExist(err) {
		t.Errorf("the empty .git/hooks stays: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".git/modules/a/hooks/post-checkout")); err != nil {
		t.Errorf("a made dir with a file in it was removed: %v", err)
	}
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dir, ".git/hooks")); err != nil {
		t.Fatal(err)
	}
	if err := RemoveEmptyDirs(dir, []string{".git/hooks"}); err == nil {
		t.Error("a link was not refused")
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("the link's target is gone: %v", err)
	}
}
