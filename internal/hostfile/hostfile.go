// Package hostfile reads the host files a manifest or a flag names (the manifest itself,
// ssh_key, CA bundles, resolv.conf) without ever blocking on them and within a size cap:
// a named pipe, a device or a directory is refused with an error naming the path, before
// bottle creates anything.
package hostfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// Size caps of the files bottle reads from the host. Real files are far smaller; the cap
// only keeps a wrong path (a log, an image, /dev/zero) from filling memory.
const (
	// MaxManifest caps a manifest: --manifest, $BOTTLE_MANIFEST, ./bottle.toml.
	MaxManifest = 1 << 20
	// MaxPEM caps a PEM file: a git remote's ssh_key, a CA bundle (--ca-file, ca_file).
	MaxPEM = 1 << 20
	// MaxResolvConf caps a resolver config: --resolv-conf, the host's resolv.conf.
	MaxResolvConf = 64 << 10
)

// ReadPEM reads an SSH private key or a CA bundle (at most MaxPEM bytes).
func ReadPEM(path string) ([]byte, error) { return Read(path, MaxPEM) }

// Read returns the content of the regular file at path, which may be a symbolic link to
// one (keys and configs are often linked from elsewhere). Anything else (a named pipe, a
// socket, a device, a directory) and a file larger than limit bytes is an error naming
// the path. Nothing blocks and nothing acts: the path is opened O_PATH (no open of the
// object itself: opening a FIFO waits for a writer, opening some devices has effects),
// checked, and only then that same object is opened for reading, non-blocking.
func Read(path string, limit int64) ([]byte, error) {
	pf, err := os.OpenFile(path, unix.O_PATH, 0) // os adds O_CLOEXEC
	if err != nil {
		return nil, err
	}
	defer pf.Close()
	st, err := pf.Stat()
	if err != nil {
		return nil, err
	}
	if err := check(path, st, limit); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", pf.Fd()), os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: errors.Unwrap(err)}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit { // it grew after the check
		return nil, tooLarge(path, limit)
	}
	return data, nil
}

func check(path string, st fs.FileInfo, limit int64) error {
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is %s, not a regular file; name a regular file (a symbolic link to one is fine)", path, kind(st.Mode()))
	}
	if st.Size() > limit {
		return tooLarge(path, limit)
	}
	return nil
}

func tooLarge(path string, limit int64) error {
	return fmt.Errorf("%s is larger than %s, more than such a file ever holds; check that the path names the right file", path, size(limit))
}

func kind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	}
	return "a special file"
}

func size(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
