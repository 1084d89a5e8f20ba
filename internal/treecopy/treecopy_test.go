package treecopy

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bottle-dev/bottle/internal/testutil"
)

func TestWorkspacePath(t *testing.T) {
	for in, want := range map[string]string{
		"": ".", "/workspace": ".", "/workspace/": ".", "/workspace/a/b": "a/b", "a/b": "a/b",
		"./a": "a", "a/../b": "b", "/workspace/a/../b": "b",
	} {
		if got, err := WorkspacePath(in); err != nil || got != want {
			t.Errorf("WorkspacePath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"..", "../x", "a/../../x", "/workspace/..", "/workspace/../etc", "/etc/passwd", "/workspacex/a", "/"} {
		if got, err := WorkspacePath(in); err == nil {
			t.Errorf("WorkspacePath(%q) = %q, want it refused", in, got)
		}
	}
}

func roots(t *testing.T) (src, dst string, srcRoot, dstRoot *os.Root) {
	t.Helper()
	src, dst = t.TempDir(), t.TempDir()
	var err error
	if srcRoot, err = os.OpenRoot(src); err != nil {
		t.Fatal(err)
	}
	if dstRoot, err = os.OpenRoot(dst); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srcRoot.Close(); dstRoot.Close() })
	return src, dst, srcRoot, dstRoot
}

func write(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// TestCopyHostileTree: links out of the tree are left out (not followed), links inside
// it are kept as links, FIFOs are skipped, setuid bits dropped, a path through a link
// out of the root is refused.
func TestCopyHostileTree(t *testing.T) {
	src, dst, sr, dr := roots(t)
	outside := t.TempDir()
	write(t, filepath.Join(outside, "secret"), "host secret", 0o644)
	write(t, filepath.Join(src, "w/a.txt"), "hello", 0o4755)
	write(t, filepath.Join(src, "w/sub/b.txt"), "world", 0o600)
	for target, name := range map[string]string{
		"/etc": "w/evil", outside: "w/evil2", "../../" + filepath.Base(outside): "w/evil3", "sub/b.txt": "w/good", "../w/a.txt": "w/sub/good2",
	} {
		if err := os.Symlink(target, filepath.Join(src, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(src, "w/fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	rep, err := Copy(sr, "w", dr, "out", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Files != 2 || rep.Dirs != 2 || rep.Links != 2 || len(rep.Skipped) != 4 {
		t.Errorf("report %s, want 2 files, 2 dirs, 2 links, 4 skipped", rep)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "out/sub/b.txt")); err != nil || string(b) != "world" {
		t.Errorf("out/sub/b.txt: %q %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(dst, "out/a.txt")); err != nil || fi.Mode().Perm() != 0o755 || fi.Mode()&os.ModeSetuid != 0 {
		t.Errorf("out/a.txt mode %v %v, want 0755 without setuid", fi.Mode(), err)
	}
	for _, name := range []string{"evil", "evil2", "evil3", "fifo"} {
		if _, err := os.Lstat(filepath.Join(dst, "out", name)); err == nil {
			t.Errorf("out/%s copied, want it skipped", name)
		}
	}
	if target, err := os.Readlink(filepath.Join(dst, "out/good")); err != nil || target != "sub/b.txt" {
		t.Errorf("out/good: %q %v, want the link kept", target, err)
	}
	// A path through a link out of the tree is refused, not followed.
	for _, p := range []string{"w/evil/passwd", "w/evil2/secret", "w/evil3/secret"} {
		if _, err := Copy(sr, p, dr, "x", Options{}); err == nil {
			t.Errorf("Copy(%s) followed a link out of the tree", p)
		}
	}
	if _, err := Copy(sr, "../x", dr, "x", Options{}); err == nil || !strings.Contains(err.Error(), "not a path inside") {
		t.Errorf("Copy(../x): %v, want it refused", err)
	}
}

// TestCopyIntoHostileTree: writing into a tree whose links point out writes nothing
// outside it, and never writes through a link.
func TestCopyIntoHostileTree(t *testing.T) {
	src, dst, sr, dr := roots(t)
	outside := t.TempDir()
	write(t, filepath.Join(src, "f"), "new", 0o644)
	write(t, filepath.Join(outside, "f"), "host", 0o644)
	if err := os.Symlink(outside, filepath.Join(dst, "out")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "f"), filepath.Join(dst, "f")); err != nil {
		t.Fatal(err)
	}
	if _, err := Copy(sr, "f", dr, "out/f", Options{}); err == nil {
		t.Error("copy through a link out of the tree succeeded")
	}
	if _, err := Copy(sr, "f", dr, "f", Options{}); err == nil {
		t.Error("copy onto a link succeeded")
	}
	if b, _ := os.ReadFile(filepath.Join(outside, "f")); string(b) != "host" {
		t.Errorf("the file outside the tree was changed: %q", b)
	}
}

func TestCopyLimits(t *testing.T) {
	src, _, sr, dr := roots(t)
	write(t, filepath.Join(src, "d/a"), "12345", 0o644)
	write(t, filepath.Join(src, "d/b"), "12345", 0o644)
	if _, err := Copy(sr, "d", dr, "o1", Options{Limits: Limits{MaxBytes: 8, MaxEntries: 10, MaxDepth: 5}}); err == nil {
		t.Error("MaxBytes not enforced")
	}
	if _, err := Copy(sr, "d", dr, "o2", Options{Limits: Limits{MaxBytes: 100, MaxEntries: 2, MaxDepth: 5}}); err == nil {
		t.Error("MaxEntries not enforced")
	}
	if rep, err := Copy(sr, "d", dr, "o3", Options{Limits: Limits{MaxBytes: 10, MaxEntries: 3, MaxDepth: 5}}); err != nil || rep.Bytes != 10 {
		t.Errorf("copy within the limits: %s %v", rep, err)
	}
}

func TestCopyChown(t *testing.T) {
	testutil.RequireRoot(t) // chown needs root
	src, dst, sr, dr := roots(t)
	write(t, filepath.Join(src, "d/a"), "x", 0o644)
	if _, err := Copy(sr, "d", dr, "d", Options{Chown: true, UID: 1234, GID: 4321}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"d", "d/a"} {
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(dst, p), &st); err != nil || st.Uid != 1234 || st.Gid != 4321 {
			t.Errorf("%s owned by %d:%d (%v), want 1234:4321", p, st.Uid, st.Gid, err)
		}
	}
}
