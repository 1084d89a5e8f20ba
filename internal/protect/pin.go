package protect

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Pin opens each mount of a layout in the workspace dir as an O_PATH descriptor, in the
// layout's order, after Prepare. The runtime mounts the descriptor (its /proc magic
// link, PinPath), not the path: whatever replaces a path after Pin (another bottle's agent on the
// same checkout swapping .git/hooks for a link) is not what the agent gets. Each object
// is opened beneath the workspace without following a link at its end, checked to be
// what Plan saw (a dir or a regular file), and checked once more by path after the open:
// no link on the way, the same inode. The caller closes the files once the agent's task
// runs.
func Pin(dir string, l Layout) (files []*os.File, err error) {
	if len(l.Mounts) == 0 {
		return nil, nil
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	defer func() {
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			files = nil
		}
	}()
	for _, m := range l.Mounts {
		f, err := root.OpenFile(m.Path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return files, fmt.Errorf("protect %s: %w", m.Path, err)
		}
		files = append(files, f)
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			return files, fmt.Errorf("protect %s: %w", m.Path, err)
		}
		if t := st.Mode & unix.S_IFMT; t != unix.S_IFDIR && t != unix.S_IFREG {
			return files, fmt.Errorf("protect %s: changed since bottle looked: not a regular file or directory now (a link?)", m.Path)
		}
		if _, _, err := kind(root, m.Path); err != nil {
			return files, fmt.Errorf("protect %s: %w", m.Path, err)
		}
		fi, err := root.Lstat(m.Path)
		if err != nil {
			return files, fmt.Errorf("protect %s: %w", m.Path, err)
		}
		if now, ok := fi.Sys().(*syscall.Stat_t); !ok || now.Dev != st.Dev || now.Ino != st.Ino {
			return files, fmt.Errorf("protect %s: %w", m.Path, errChanged)
		}
	}
	return files, nil
}

var errChanged = errors.New("replaced while bottle opened it (is another bottle's agent on this checkout changing it?)")

// PinPath is the path under /proc by which this process reaches pinned file f: a bind
// mount of it follows the magic link to the object itself.
func PinPath(f *os.File) string { return fmt.Sprintf("/proc/self/fd/%d", f.Fd()) }
