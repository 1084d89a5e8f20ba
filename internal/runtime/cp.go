package runtime

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/state"
	"github.com/bottle-dev/bottle/internal/treecopy"
)

// workspaceDir is the host directory at a bottle's /workspace: its --cwd copy, or the
// directory it was started on.
func (e *Engine) workspaceDir(m *state.Meta) string {
	if m.CopyCwd {
		return plan.WorkspaceCopyDir(e.opts.StateDir, m.Identity)
	}
	return m.Workspace
}

// CopyOut copies PATH of bottle id's /workspace (treecopy.WorkspacePath) to dest on the
// host: into dest when it is a directory, else as dest. What it makes belongs to the
// invoking user. It needs no containerd: it works on the workspace's host side, also
// while the bottle runs.
func CopyOut(opts Options, id names.Identity, path, dest string) (treecopy.Report, error) {
	ws, rel, m, err := openWorkspace(opts, id, path)
	if err != nil {
		return treecopy.Report{}, err
	}
	defer ws.Close()
	name := filepath.Base(rel)
	if rel == "." {
		name = "workspace"
	}
	dst, dstRel, err := openDest(dest, name)
	if err != nil {
		return treecopy.Report{}, err
	}
	defer dst.Close()
	rep, err := treecopy.Copy(ws, rel, dst, dstRel, treecopy.Options{})
	if err != nil {
		return rep, fmt.Errorf("copy %s:%s to %s: %w", id, path, dest, err)
	}
	// What a copy's agent added is news; in a bound workspace everything copied is.
	original := ""
	if m.CopyCwd {
		original = m.Workspace
	}
	found, err := gitFindings(ws.Name(), rel, original)
	warnFindings(opts.withDefaults().Log, fmt.Sprintf("copied out of bottle %s to %s, a git hook or config", id, dest), found, err)
	return rep, nil
}

// CopyIn copies src from the host into bottle id's /workspace at PATH (into it when it
// is a directory, else as it). What it makes belongs to the workspace directory's owner,
// so the agent (who runs as that owner, or owns its copy) can edit it.
func CopyIn(opts Options, src string, id names.Identity, path string) (treecopy.Report, error) {
	abs, err := filepath.Abs(src)
	if err != nil {
		return treecopy.Report{}, err
	}
	from, err := os.OpenRoot(filepath.Dir(abs))
	if err != nil {
		return treecopy.Report{}, err
	}
	defer from.Close()
	ws, rel, _, err := openWorkspace(opts, id, path)
	if err != nil {
		return treecopy.Report{}, err
	}
	defer ws.Close()
	if fi, err := ws.Lstat(rel); err == nil && fi.IsDir() {
		rel = filepath.Join(rel, filepath.Base(abs))
	}
	top, err := ws.Stat(".")
	if err != nil {
		return treecopy.Report{}, err
	}
	st := top.Sys().(*syscall.Stat_t)
	rep, err := treecopy.Copy(from, filepath.Base(abs), ws, rel, treecopy.Options{Chown: true, UID: int(st.Uid), GID: int(st.Gid)})
	if err != nil {
		return rep, fmt.Errorf("copy %s to %s:%s: %w", src, id, path, err)
	}
	return rep, nil
}

// openWorkspace opens the host side of bottle id's /workspace as a root and turns PATH
// into a path beneath it; m is the bottle's record.
func openWorkspace(opts Options, id names.Identity, path string) (root *os.Root, rel string, m *state.Meta, err error) {
	if rel, err = treecopy.WorkspacePath(path); err != nil {
		return nil, "", nil, err
	}
	e := newEngine(opts.withDefaults(), nil, nil)
	if m, err = e.store.Load(id); err != nil {
		return nil, "", nil, err
	}
	if root, err = os.OpenRoot(e.workspaceDir(m)); err != nil {
		return nil, "", nil, fmt.Errorf("workspace of bottle %s: %w", id, err)
	}
	return root, rel, m, nil
}

// openDest opens where a copy out goes: into dest when it is a directory (as name),
// else dest itself in its parent directory.
func openDest(dest, name string) (*os.Root, string, error) {
	fi, err := os.Stat(dest)
	switch {
	case err == nil && fi.IsDir():
		r, err := os.OpenRoot(dest)
		return r, name, err
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, "", err
	}
	abs, err := filepath.Abs(dest)
	if err != nil {
		return nil, "", err
	}
	r, err := os.OpenRoot(filepath.Dir(abs))
	return r, filepath.Base(abs), err
}

// lchownTree gives dir and everything beneath it to uid:gid, following no link. (Only
// for a tree bottle just made, before any agent ran in it.)
func lchownTree(dir string, uid, gid int) error {
	return filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}
