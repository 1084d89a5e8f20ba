package runtime

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// dirWatch wakes a wait as soon as a file appears in a directory (inotify). A sidecar
// creates its ready file through a bind mount of a host directory, so the host sees the
// creation at once: start neither waits out a poll interval nor asks containerd about
// the task every few milliseconds while the sandboxes boot.
type dirWatch struct{ f *os.File }

// watchDir watches dir for files created, moved in or written.
func watchDir(dir string) (*dirWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", dir, err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watch %s: %w", dir, err)
	}
	// Non-blocking: the file goes through Go's poller, so a read deadline bounds a wait.
	return &dirWatch{f: os.NewFile(uintptr(fd), "inotify "+dir)}, nil
}

// wait returns once something happened in the directory since the last wait, or after d.
func (w *dirWatch) wait(d time.Duration) {
	if err := w.f.SetReadDeadline(time.Now().Add(d)); err != nil {
		time.Sleep(d)
		return
	}
	// One read takes every queued event: what happened does not matter, the caller looks.
	var buf [4096]byte
	_, _ = w.f.Read(buf[:])
}

func (w *dirWatch) close() { w.f.Close() }
