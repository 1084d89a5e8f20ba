package netns

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// createNetnsFile creates a new network namespace, brings its loopback up and pins it by
// bind-mounting it onto path (which must not exist), like `ip netns add` and containerd.
// Hand-written: containerd's pkg/netns picks random file names and the plugins' ns package
// only enters namespaces, while a bottle's netns file is named after its container.
func createNetnsFile(path string) (err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create netns directory %s: %w", filepath.Dir(path), err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create netns file %s: %w (a leftover? run Teardown or `bottle cleanup`)", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close netns file %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = removeNetnsFile(path)
		}
	}()

	errCh := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it ends in the new namespace, so the runtime
		// discards it when this goroutine returns instead of reusing it elsewhere.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errCh <- fmt.Errorf("unshare network namespace for %s: %w", path, err)
			return
		}
		if err := loopbackUp(); err != nil {
			errCh <- fmt.Errorf("bring loopback up in new netns for %s: %w", path, err)
			return
		}
		src := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			errCh <- fmt.Errorf("bind-mount new netns onto %s: %w", path, err)
			return
		}
		errCh <- nil
	}()
	return <-errCh
}

// loopbackUp sets IFF_UP on lo in the calling thread's network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// removeNetnsFile unmounts and removes a netns file; missing or unmounted files are fine.
func removeNetnsFile(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns file %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove netns file %s: %w", path, err)
	}
	return nil
}

// isNetnsMount reports whether path is a bind-mounted network namespace.
func isNetnsMount(path string) bool {
	n, err := ns.GetNS(path)
	if err != nil {
		return false
	}
	n.Close()
	return true
}

// dropUnmounted removes the file at path if it exists but holds no network namespace.
func dropUnmounted(path string) error {
	n, err := ns.GetNS(path)
	if err == nil {
		return n.Close()
	}
	if _, notNS := errors.AsType[ns.NSPathNotNSErr](err); notNS {
		return removeNetnsFile(path)
	}
	return nil // missing

}
