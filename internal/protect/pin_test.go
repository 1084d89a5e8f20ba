package protect

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPinHoldsTheObject: what Pin opened stays what its /proc path reaches after the
// path is swapped for a link out of the workspace (the race of two bottles on one
// checkout), and a link already in place when Pin opens is refused.
func TestPinHoldsTheObject(t *testing.T) {
	dir := mkTree(t, ".git/hooks/", ".git/config")
	write(t, dir, ".git/hooks/marker", "original")
	outside := t.TempDir()
	write(t, outside, "marker", "outside")
	l, err := Plan(dir, nil, User{})
	if err != nil {
		t.Fatal(err)
	}
	if err := Prepare(dir, l); err != nil {
		t.Fatal(err)
	}
	files, err := Pin(dir, l)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if len(files) != len(l.Mounts) {
		t.Fatalf("%d files for %d mounts", len(files), len(l.Mounts))
	}
	hooks := filepath.Join(dir, ".git/hooks")
	if err := os.Rename(hooks, hooks+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, hooks); err != nil {
		t.Fatal(err)
	}
	for i, m := range l.Mounts {
		if m.Path != ".git/hooks" {
			continue
		}
		b, err := os.ReadFile(PinPath(files[i]) + "/marker")
		if err != nil || string(b) != "original" {
			t.Errorf("through the pin after the swap: %q, %v; want the original", b, err)
		}
	}
	if _, err := Pin(dir, l); err == nil || !strings.Contains(err.Error(), ".git/hooks") {
		t.Errorf("Pin with .git/hooks a link: err %v, want a refusal naming it", err)
	}
	// Neither is what is no file or dir (a FIFO would block a mount, or worse).
	if err := os.Remove(hooks); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(hooks, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Pin(dir, l); err == nil {
		t.Error("Pin opened a FIFO")
	}
}
