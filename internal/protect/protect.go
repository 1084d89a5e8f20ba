// Package protect keeps a workspace from attacking its host through git: it decides
// which workspace paths the agent gets read-only (.git/hooks and .git/config by default,
// what the manifest's `protect` adds), checking on the host that no link leads a mount
// out of the workspace, and it finds hooks and dangerous git config keys in a tree
// before a person runs git on it or copies them out.
package protect

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"
)

// Default are the paths read-only in the agent unless the manifest sets protect = [].
var Default = []string{".git/hooks", ".git/config"}

// maxModules bounds the submodules whose hooks and config are protected.
const maxModules = 64

// maxModuleDepth bounds the walk of .git/modules (names with slashes, nested submodules).
const maxModuleDepth = 16

// Mount is one workspace path the agent gets as its own mount.
type Mount struct {
	// Path is relative to the workspace.
	Path string `json:"path"`
	// ReadOnly false is .git itself: a mount point only, so that renaming or removing
	// it (to recreate it with hooks) fails with EBUSY.
	ReadOnly bool `json:"read_only"`
}

// Layout is what the agent's workspace mounts protect.
type Layout struct {
	// Mounts in the order they must be mounted (a parent before what is beneath it).
	Mounts []Mount `json:"mounts,omitempty"`
	// Create are missing directories to create empty (on the host, before the agent
	// starts) so they can be mounted read-only: a missing .git/hooks.
	Create []string `json:"create,omitempty"`
	// Warnings for the person starting the bottle.
	Warnings []string `json:"warnings,omitempty"`
}

// Plan inspects the workspace dir on the host and decides its protection. paths is the
// manifest's protect: nil is the default, empty turns protection off, others add to the
// default. A link anywhere on a protected path is an error: a hostile workspace must not
// make bottle mount a host path outside it.
func Plan(dir string, paths *[]string) (Layout, error) {
	var l Layout
	if paths != nil && len(*paths) == 0 {
		l.Warnings = append(l.Warnings, "protect = [] turns off the workspace protection: the agent can write .git/hooks and .git/config, which run code on the host at the next git command there")
		return l, nil
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return l, fmt.Errorf("workspace %s: %w", dir, err)
	}
	defer root.Close()
	want := []string{}
	git, exists, err := kind(root, ".git")
	switch {
	case err != nil:
		return l, fmt.Errorf("workspace %s: %w", dir, err)
	case exists && git == fs.ModeDir:
		l.Mounts = append(l.Mounts, Mount{Path: ".git"})
		want = append(want, Default...)
		for _, extra := range []string{".git/config.worktree"} {
			if _, ok, err := kind(root, extra); err != nil {
				return l, fmt.Errorf("workspace %s: %w", dir, err)
			} else if ok {
				want = append(want, extra)
			}
		}
		modules, err := submodules(root)
		if err != nil {
			return l, fmt.Errorf("workspace %s: %w", dir, err)
		}
		want = append(want, modules...)
	case exists && git == 0:
		// A worktree's link file ("gitdir: ..."): its hooks and config are outside the
		// workspace, out of the agent's reach; the link itself must not be redirected.
		want = append(want, ".git")
	}
	if paths != nil {
		want = append(want, *paths...)
	}
	seen := map[string]bool{}
	for _, p := range want {
		if seen[p] {
			continue
		}
		seen[p] = true
		k, exists, err := kind(root, p)
		switch {
		case err != nil:
			return l, fmt.Errorf("workspace %s: protect %s: %w", dir, p, err)
		case !exists && (p == ".git/hooks" || (strings.HasPrefix(p, ".git/modules/") && strings.HasSuffix(p, "/hooks"))):
			l.Create = append(l.Create, p)
		case !exists:
			if !slices.Contains(Default, p) {
				l.Warnings = append(l.Warnings, fmt.Sprintf("protect: %s is not in the workspace, so it stays writable if the agent creates it", p))
			}
			continue
		case k != 0 && k != fs.ModeDir:
			return l, fmt.Errorf("workspace %s: protect %s: not a regular file or directory", dir, p)
		}
		l.Mounts = append(l.Mounts, Mount{Path: p, ReadOnly: true})
	}
	return l, nil
}

// kind is the type of workspace path p (fs.ModeDir, 0 for a regular file) and whether
// it exists. A link on the way or at the end is an error.
func kind(root *os.Root, p string) (fs.FileMode, bool, error) {
	if err := CheckPath(p); err != nil {
		return 0, false, err
	}
	parts := strings.Split(p, "/")
	for i := range parts {
		sub := strings.Join(parts[:i+1], "/")
		fi, err := root.Lstat(sub)
		if errors.Is(err, fs.ErrNotExist) {
			return 0, false, nil
		}
		if err != nil {
			return 0, false, err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return 0, false, fmt.Errorf("%s is a symbolic link; bottle mounts protected paths only when no link is on the way (replace the link, or set protect = [] in the manifest)", sub)
		}
		if i == len(parts)-1 {
			return fi.Mode().Type(), true, nil
		}
		if !fi.IsDir() {
			return 0, false, nil
		}
	}
	return 0, false, nil
}

// submodules lists the hooks and config of each submodule git dir under .git/modules:
// git keeps a submodule named a/b at .git/modules/a/b and a nested one at
// .git/modules/x/modules/y, so the walk goes down, recognising a git dir by its HEAD.
func submodules(root *os.Root) ([]string, error) {
	var out []string
	count := 0
	var walk func(dir string, depth int) error
	walk = func(dir string, depth int) error {
		k, exists, err := kind(root, dir)
		if err != nil || !exists || k != fs.ModeDir {
			return err
		}
		if depth > maxModuleDepth {
			return fmt.Errorf("%s is nested deeper than %d: bottle does not protect it (or set protect = [])", dir, maxModuleDepth)
		}
		f, err := root.Open(dir)
		if err != nil {
			return err
		}
		entries, err := f.ReadDir(maxModules + 1)
		f.Close()
		if err != nil && len(entries) == 0 {
			return nil
		}
		for _, e := range entries {
			if !e.IsDir() || CheckPath(e.Name()) != nil {
				continue
			}
			sub := dir + "/" + e.Name()
			if _, isGitDir, err := kind(root, sub+"/HEAD"); err != nil {
				return err
			} else if !isGitDir {
				if err := walk(sub, depth+1); err != nil { // a part of a name with slashes
					return err
				}
				continue
			}
			if count++; count > maxModules {
				return fmt.Errorf(".git/modules holds more than %d submodules; bottle protects at most %d (or set protect = [])", maxModules, maxModules)
			}
			out = append(out, sub+"/hooks", sub+"/config")
			if err := walk(sub+"/modules", depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	return out, walk(".git/modules", 0)
}

// CheckPath validates a protect path: relative to the workspace, clean, no "..".
func CheckPath(p string) error {
	switch {
	case p == "" || p == ".":
		return errors.New("empty path (the workspace itself cannot be protected)")
	case path.IsAbs(p):
		return fmt.Errorf("%q is absolute; use a path relative to the workspace", p)
	case strings.ContainsRune(p, 0):
		return fmt.Errorf("%q holds a NUL byte", p)
	case path.Clean(p) != p:
		return fmt.Errorf("%q is not clean (write it as %q)", p, path.Clean(p))
	case p == ".." || strings.HasPrefix(p, "../"):
		return fmt.Errorf("%q leads out of the workspace", p)
	}
	return nil
}

// Create makes the missing dirs of a layout (Layout.Create) in the workspace dir, empty,
// owned like their parent (not following links: a link on the way is an error).
func Create(dir string, paths []string) error {
	if len(paths) == 0 {
		return nil
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, p := range paths {
		if _, _, err := kind(root, p); err != nil {
			return err
		}
		parent, err := root.Lstat(path.Dir(p))
		if err != nil {
			return err
		}
		if err := root.Mkdir(p, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if st, ok := parent.Sys().(*syscall.Stat_t); ok {
			if err := root.Lchown(p, int(st.Uid), int(st.Gid)); err != nil {
				return err
			}
		}
	}
	return nil
}
