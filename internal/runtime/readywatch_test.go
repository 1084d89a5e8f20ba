package runtime

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A file created in the watched directory ends a wait at once, long before its bound.
func TestDirWatchWakesOnCreate(t *testing.T) {
	dir := t.TempDir()
	w, err := watchDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	go func() {
		time.Sleep(20 * time.Millisecond)
		if err := os.WriteFile(filepath.Join(dir, "ready"), nil, 0o644); err != nil {
			t.Error(err)
		}
	}()
	t0 := time.Now()
	w.wait(10 * time.Second)
	if took := time.Since(t0); took > 2*time.Second {
		t.Fatalf("wait took %s after the file was created", took)
	}
	if _, err := os.Stat(filepath.Join(dir, "ready")); err != nil {
		t.Fatalf("woken before the file exists: %v", err)
	}
}

// With nothing happening, a wait lasts its bound, and a later wait is not woken by the
// events an earlier one already took.
func TestDirWatchWaitsItsBound(t *testing.T) {
	dir := t.TempDir()
	w, err := watchDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if err := os.WriteFile(filepath.Join(dir, "other"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	w.wait(time.Second) // takes the create and close-write events
	t0 := time.Now()
	w.wait(50 * time.Millisecond)
	if took := time.Since(t0); took < 40*time.Millisecond {
		t.Fatalf("wait ended after %s with nothing happening", took)
	}
}
