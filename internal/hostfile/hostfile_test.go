package hostfile

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// read runs Read in a goroutine so that a regression that blocks fails the test
// instead of hanging it.
func read(t *testing.T, path string, limit int64) ([]byte, error) {
	t.Helper()
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		data, err := Read(path, limit)
		done <- result{data, err}
	}()
	select {
	case r := <-done:
		return r.data, r.err
	case <-time.After(10 * time.Second):
		t.Fatalf("Read(%s) blocks", path)
		return nil, nil
	}
}

func wantRefused(t *testing.T, path string, limit int64, want string) {
	t.Helper()
	data, err := read(t, path, limit)
	if err == nil {
		t.Fatalf("Read(%s) = %d bytes, want an error", path, len(data))
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), want) {
		t.Errorf("Read(%s): %v; want an error naming the path and saying %q", path, err, want)
	}
}

func TestRegularFileAndSymlink(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "key")
	content := []byte("-----BEGIN OPENSSH PRIVATE KEY-----\n")
	if err := os.WriteFile(file, content, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, link} {
		data, err := read(t, p, int64(len(content)))
		if err != nil || !bytes.Equal(data, content) {
			t.Errorf("Read(%s) = %q, %v; want the content", p, data, err)
		}
	}
	if _, err := read(t, filepath.Join(dir, "missing"), 100); !os.IsNotExist(err) {
		t.Errorf("missing file: %v, want not-exist", err)
	}
}

func TestFIFORefusedWithoutBlocking(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, fifo, MaxPEM, "named pipe")
	// A symbolic link does not hide it.
	link := fifo + ".link"
	if err := os.Symlink(fifo, link); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, link, MaxPEM, "named pipe")
}

func TestDevicesAndDirectoriesRefused(t *testing.T) {
	wantRefused(t, "/dev/zero", MaxManifest, "character device")
	wantRefused(t, t.TempDir(), MaxManifest, "a directory")
}

func TestOversizeRefused(t *testing.T) {
	file := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(file, make([]byte, 64<<10+1), 0o644); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, file, MaxResolvConf, "larger than 64 KiB")
	if data, err := read(t, file, 64<<10+1); err != nil || len(data) != 64<<10+1 {
		t.Errorf("a file of exactly the cap: %d bytes, %v", len(data), err)
	}
}
