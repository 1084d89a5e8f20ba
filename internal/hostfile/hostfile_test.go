package hostfile

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// TestReadNeverOpensANonRegularFile: a FIFO is refused without being opened at all
// (inotify sees no open), so the same holds for a device, whose open can act by itself.
func TestReadNeverOpensANonRegularFile(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "config")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(in)
	if _, err := unix.InotifyAddWatch(in, fifo, unix.IN_OPEN); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(fifo, 1<<20); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("Read of a FIFO: %v, want refused as not a regular file", err)
	}
	buf := make([]byte, 4096)
	if n, err := unix.Read(in, buf); n > 0 || err != unix.EAGAIN {
		t.Errorf("the FIFO was opened (inotify read %d bytes, %v)", n, err)
	}
	// The control: an open of it is seen.
	f, err := os.OpenFile(fifo, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if n, _ := unix.Read(in, buf); n <= 0 {
		t.Error("inotify saw no open even of a real open: the check above proves nothing")
	}
}
