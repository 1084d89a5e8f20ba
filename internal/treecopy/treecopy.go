// Package treecopy copies a file tree out of or into a directory whose content may be
// hostile (an agent's workspace): every path is opened beneath its root (os.Root), so no
// symbolic link or `..` leads out of it, even when the tree changes during the copy.
package treecopy

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
)

// Limits bound one copy, so a tree an agent made cannot fill the host's disk unasked.
type Limits struct {
	MaxBytes   int64
	MaxEntries int
	MaxDepth   int
}

// DefaultLimits are generous for a source tree and its build output.
var DefaultLimits = Limits{MaxBytes: 64 << 30, MaxEntries: 1_000_000, MaxDepth: 256}

// Options of one copy.
type Options struct {
	Limits Limits
	// Chown gives every entry made to UID:GID (as root); false leaves them the copier's.
	Chown    bool
	UID, GID int
}

// Report says what a copy did, and what it left out and why.
type Report struct {
	Files, Dirs, Links int
	Bytes              int64
	Skipped            []string
}

func (r Report) String() string {
	s := fmt.Sprintf("%d files (%d bytes), %d directories, %d links", r.Files, r.Bytes, r.Dirs, r.Links)
	if len(r.Skipped) > 0 {
		s += "; skipped: " + strings.Join(r.Skipped, ", ")
	}
	return s
}

// Copy copies src (a local path beneath srcRoot, "." for all of it) to dst (a local path
// beneath dstRoot). Directories and regular files are copied with their permission bits
// (no setuid, setgid or sticky bit); symbolic links are copied as links, never followed,
// and only when they point inside the copied tree; devices, FIFOs and sockets are
// skipped. An entry that exists at the destination is replaced if it is of the same
// kind (a regular file is written again, never through a link).
func Copy(srcRoot *os.Root, src string, dstRoot *os.Root, dst string, opt Options) (Report, error) {
	if opt.Limits == (Limits{}) {
		opt.Limits = DefaultLimits
	}
	for _, p := range []string{src, dst} {
		if !filepath.IsLocal(p) {
			return Report{}, fmt.Errorf("copy: %q is not a path inside its tree", p)
		}
	}
	c := &copier{src: srcRoot, dst: dstRoot, opt: opt, top: src}
	err := c.copy(src, dst, 0)
	return c.rep, err
}

type copier struct {
	src, dst *os.Root
	opt      Options
	top      string
	rep      Report
	entries  int
}

func (c *copier) copy(src, dst string, depth int) error {
	if c.entries++; c.entries > c.opt.Limits.MaxEntries {
		return fmt.Errorf("copy: more than %d entries; copy a smaller part", c.opt.Limits.MaxEntries)
	}
	if depth > c.opt.Limits.MaxDepth {
		return fmt.Errorf("copy %s: deeper than %d directories", src, c.opt.Limits.MaxDepth)
	}
	fi, err := c.src.Lstat(src)
	if err != nil {
		return err
	}
	switch mode := fi.Mode(); {
	case mode.IsDir():
		return c.dir(src, dst, fi.Mode().Perm(), depth)
	case mode.IsRegular():
		return c.file(src, dst)
	case mode&fs.ModeSymlink != 0:
		return c.link(src, dst)
	default:
		c.rep.Skipped = append(c.rep.Skipped, src+" (not a file, directory or link)")
		return nil
	}
}

func (c *copier) dir(src, dst string, perm fs.FileMode, depth int) error {
	if err := c.dst.Mkdir(dst, 0o700); err != nil {
		if !errors.Is(err, fs.ErrExist) {
			return err
		}
		if fi, err := c.dst.Lstat(dst); err != nil || !fi.IsDir() {
			return fmt.Errorf("copy %s: %s exists and is not a directory", src, dst)
		}
	}
	c.rep.Dirs++
	// The source is read through a handle opened beneath its root: if the agent swaps the
	// directory for a link meanwhile, the open fails or stays inside the tree.
	d, err := c.src.Open(src)
	if err != nil {
		return err
	}
	ents, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("read directory %s: %w", src, err)
	}
	for _, ent := range ents {
		if err := c.copy(path.Join(src, ent.Name()), path.Join(dst, ent.Name()), depth+1); err != nil {
			return err
		}
	}
	return c.finish(dst, perm)
}

func (c *copier) file(src, dst string) error {
	// O_NONBLOCK: a FIFO swapped in after Lstat cannot stall the copy.
	in, err := c.src.OpenFile(src, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		c.rep.Skipped = append(c.rep.Skipped, src+" (changed while copied)")
		return nil
	}
	if c.rep.Bytes+fi.Size() > c.opt.Limits.MaxBytes {
		return fmt.Errorf("copy %s: more than %d bytes in all; copy a smaller part", src, c.opt.Limits.MaxBytes)
	}
	out, err := c.dst.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		return err
	}
	if ofi, err := out.Stat(); err != nil || !ofi.Mode().IsRegular() {
		out.Close()
		return fmt.Errorf("copy %s: %s exists and is not a regular file", src, dst)
	}
	// At most the size seen at open: a file the agent keeps growing ends there.
	n, err := io.Copy(out, io.LimitReader(in, fi.Size()))
	c.rep.Bytes += n
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	c.rep.Files++
	return c.finish(dst, fi.Mode().Perm())
}

func (c *copier) link(src, dst string) error {
	target, err := c.src.Readlink(src)
	if err != nil {
		return err
	}
	// Only links that stay inside the copied tree: one to /etc is left out, not followed.
	rel, err := filepath.Rel(c.top, path.Join(path.Dir(src), target))
	if path.IsAbs(target) || err != nil || !filepath.IsLocal(rel) || src == c.top {
		c.rep.Skipped = append(c.rep.Skipped, src+" (link to "+target+", outside the copied tree)")
		return nil
	}
	if err := c.dst.Symlink(target, dst); err != nil {
		return err
	}
	c.rep.Links++
	if c.opt.Chown {
		return c.dst.Lchown(dst, c.opt.UID, c.opt.GID)
	}
	return nil
}

// finish sets an entry's owner and permission bits once its content is in place.
func (c *copier) finish(dst string, perm fs.FileMode) error {
	if c.opt.Chown {
		if err := c.dst.Lchown(dst, c.opt.UID, c.opt.GID); err != nil {
			return err
		}
	}
	return c.dst.Chmod(dst, perm)
}

// WorkspacePath turns the PATH of `ID:PATH` into a local path beneath the workspace:
// "/workspace/x", "/workspace" or a path relative to /workspace. It refuses every other
// absolute path and every path that climbs out with `..`.
func WorkspacePath(p string) (string, error) {
	const ws = "/workspace"
	if p == "" {
		return ".", nil
	}
	if path.IsAbs(p) {
		c := path.Clean(p)
		if c == ws {
			return ".", nil
		}
		if !strings.HasPrefix(c, ws+"/") {
			return "", fmt.Errorf("%s is not in /workspace (bottle cp reaches only the workspace)", p)
		}
		p = strings.TrimPrefix(c, ws+"/")
	}
	c := path.Clean(p)
	if !filepath.IsLocal(c) {
		return "", fmt.Errorf("%s climbs out of /workspace", p)
	}
	return c, nil
}
