// Package protect keeps a workspace from attacking its host through git: it decides
// which workspace paths the agent gets read-only (.git/hooks and .git/config by default,
// what the manifest's `protect` adds), checking on the host that no link leads a mount
// out of the workspace, and it finds hooks and dangerous git config keys in a tree
// before a person runs git on it or copies them out.
package protect

import (
	"errors"
	"fmt"
	"io"
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
	// starts) so they can be mounted read-only: a missing .git/hooks, or core.hooksPath
	// in the workspace (with its missing parents, in order).
	Create []string `json:"create,omitempty"`
	// CreateFiles are missing files to create empty, to mount them read-only: a
	// .git/config.worktree that git would read (extensions.worktreeConfig).
	CreateFiles []string `json:"create_files,omitempty"`
	// Commondir: bottle gives .git a commondir of "." (the repository itself, which is
	// what git assumes without one), made before the agent starts when it is missing and
	// removed again by `bottle rm`, so that it can be mounted read-only: a commondir the
	// agent writes would point the host's git at a config and hooks of its making.
	Commondir bool `json:"commondir,omitempty"`
	// Warnings for the person starting the bottle.
	Warnings []string `json:"warnings,omitempty"`
}

// Plan inspects the workspace dir on the host and decides its protection. paths is the
// manifest's protect: nil is the default, empty turns protection off, others add to the
// default. u is the person's git config outside the repository (for core.hooksPath). A
// link anywhere on a protected path is an error: a hostile workspace must not make
// bottle mount a host path outside it.
func Plan(dir string, paths *[]string, u User) (Layout, error) {
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
	createDirs := map[string]bool{}
	git, exists, err := kind(root, ".git")
	if err != nil {
		return l, fmt.Errorf("workspace %s: %w", dir, err)
	}
	var cfg repoConfig
	if exists {
		if cfg, err = readRepoConfig(root, u); err != nil {
			return l, fmt.Errorf("workspace %s: %w", dir, err)
		}
	}
	switch {
	case exists && git == fs.ModeDir:
		l.Mounts = append(l.Mounts, Mount{Path: ".git"})
		// objects and refs are mount points too: renamed away they would make .git
		// invalid, and git would then take a bare layout the agent made at the workspace
		// root (its config included) for the repository.
		for _, point := range []string{".git/objects", ".git/refs"} {
			if k, ok, err := kind(root, point); err != nil {
				return l, fmt.Errorf("workspace %s: %w", dir, err)
			} else if ok && k == fs.ModeDir {
				l.Mounts = append(l.Mounts, Mount{Path: point})
			}
		}
		want = append(want, Default...)
		for _, extra := range []string{configWorktree, ".git/worktrees"} {
			if _, ok, err := kind(root, extra); err != nil {
				return l, fmt.Errorf("workspace %s: %w", dir, err)
			} else if ok {
				want = append(want, extra)
			} else if extra == configWorktree && cfg.worktreeConfig {
				// git would read one the agent makes: bottle makes it, empty, to mount it.
				l.CreateFiles = append(l.CreateFiles, extra)
				want = append(want, extra)
			}
		}
		own, err := ownCommondir(root)
		if err != nil {
			return l, fmt.Errorf("workspace %s: %w", dir, err)
		}
		l.Commondir = own
		want = append(want, commondir)
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
	// Hooks where core.hooksPath points (husky's .husky/_): in the workspace they are
	// protected like .git/hooks, made when missing.
	if hp := hooksPathIn(dir, cfg.hooksPath, u.Home); exists && hp == "." {
		l.Warnings = append(l.Warnings, "core.hooksPath is the workspace itself: the agent can write the hooks your next git command there runs")
	} else if exists && hp != "" {
		if err := CheckPath(hp); err != nil {
			return l, fmt.Errorf("workspace %s: core.hooksPath: %w", dir, err)
		}
		parts := strings.Split(hp, "/")
		for i := range parts {
			sub := strings.Join(parts[:i+1], "/")
			if _, ok, err := kind(root, sub); err != nil {
				return l, fmt.Errorf("workspace %s: core.hooksPath %s: %w", dir, hp, err)
			} else if !ok {
				createDirs[sub] = true
				if i < len(parts)-1 {
					l.Create = append(l.Create, sub) // a parent, made but not mounted
				}
			}
		}
		want = append(want, hp)
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
		case !exists && (p == commondir && l.Commondir || slices.Contains(l.CreateFiles, p)):
			// made by Prepare
		case !exists && (createDirs[p] || p == ".git/hooks" || (strings.HasPrefix(p, ".git/modules/") && strings.HasSuffix(p, "/hooks"))):
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

// Prepare makes what a layout mounts but the workspace dir lacks (not following links:
// a link on the way is an error): the missing dirs (Layout.Create) and files
// (Layout.CreateFiles), empty and owned like their parent, and bottle's commondir
// (Layout.Commondir).
func Prepare(dir string, l Layout) error {
	if len(l.Create) == 0 && len(l.CreateFiles) == 0 && !l.Commondir {
		return nil
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	if l.Commondir {
		if err := writeCommondir(root); err != nil {
			return err
		}
	}
	for _, p := range l.Create {
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
	for _, p := range l.CreateFiles {
		if err := createEmpty(root, p); err != nil {
			return err
		}
	}
	return nil
}

// createEmpty makes the empty file p owned like its parent, unless it exists.
func createEmpty(root *os.Root, p string) error {
	if _, _, err := kind(root, p); err != nil {
		return err
	}
	parent, err := root.Lstat(path.Dir(p))
	if err != nil {
		return err
	}
	f, err := root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o644)
	if errors.Is(err, fs.ErrExist) {
		return nil // the person's, or another bottle's on the same checkout
	}
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if st, ok := parent.Sys().(*syscall.Stat_t); ok {
		return root.Lchown(p, int(st.Uid), int(st.Gid))
	}
	return nil
}

// RemoveEmptyFiles removes the files of paths (a layout's CreateFiles, which Prepare
// made) from the workspace dir while they are still empty regular files.
func RemoveEmptyFiles(dir string, paths []string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	var errs []error
	for _, p := range paths {
		k, exists, err := kind(root, p)
		if err != nil || !exists || k != 0 {
			errs = append(errs, err)
			continue
		}
		if fi, err := root.Lstat(p); err != nil {
			errs = append(errs, err)
		} else if fi.Size() == 0 {
			errs = append(errs, root.Remove(p))
		}
	}
	return errors.Join(errs...)
}

// commondir is where a git dir names the dir it shares config, hooks, objects and refs
// with (a linked worktree's gitdir has one).
const commondir = ".git/commondir"

// ownCommondirContent is the commondir bottle makes: the git dir itself, which is what
// git assumes when there is none (git dies on an empty one, so none cannot be mounted).
const ownCommondirContent = ".\n"

// ownCommondir reports whether .git/commondir is missing or bottle's own (so bottle
// makes it and removes it again); a repository's own commondir is kept, read-only.
func ownCommondir(root *os.Root) (bool, error) {
	k, exists, err := kind(root, commondir)
	if err != nil || !exists {
		return !exists, err
	}
	if k != 0 {
		return false, nil // Plan refuses what is not a regular file
	}
	f, err := root.OpenFile(commondir, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return false, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(len(ownCommondirContent))+1))
	return string(b) == ownCommondirContent, err
}

func writeCommondir(root *os.Root) error {
	if own, err := ownCommondir(root); err != nil || !own {
		return err
	}
	parent, err := root.Lstat(".git")
	if err != nil {
		return err
	}
	f, err := root.OpenFile(commondir, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o644)
	if errors.Is(err, fs.ErrExist) {
		return nil // bottle's own, or another bottle's on the same checkout
	}
	if err != nil {
		return err
	}
	_, err = f.WriteString(ownCommondirContent)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if st, ok := parent.Sys().(*syscall.Stat_t); ok && err == nil {
		err = root.Lchown(commondir, int(st.Uid), int(st.Gid))
	}
	return err
}

// RemoveCommondir removes bottle's commondir from the workspace dir when it is still
// bottle's (content "."): what else is there now is the person's, or the agent's, and
// stays for the person to look at.
func RemoveCommondir(dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	if k, exists, err := kind(root, commondir); err != nil || !exists || k != 0 {
		return err
	}
	if own, err := ownCommondir(root); err != nil || !own {
		return err
	}
	return root.Remove(commondir)
}

// RemoveEmptyDirs removes the dirs of paths (a layout's Create, which Prepare made) from
// the workspace dir while they are still empty dirs: what is in them now is the
// person's to look at.
func RemoveEmptyDirs(dir string, paths []string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	var errs []error
	for _, p := range slices.Backward(paths) {
		k, exists, err := kind(root, p)
		if err != nil || !exists || k != fs.ModeDir {
			errs = append(errs, err)
			continue
		}
		f, err := root.Open(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		names, _ := f.Readdirnames(1)
		f.Close()
		if len(names) == 0 {
			errs = append(errs, root.Remove(p))
		}
	}
	return errors.Join(errs...)
}
