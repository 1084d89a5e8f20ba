package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"slices"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/protect"
	"github.com/bottle-dev/bottle/internal/state"
)

// invokingGitUser is the git config, outside any repository, of the person who runs
// bottle (the one behind sudo): who runs git on the workspace afterwards.
func invokingGitUser() protect.User {
	home, _ := os.UserHomeDir()
	xdg := os.Getenv("XDG_CONFIG_HOME")
	if sudoUser := os.Getenv("SUDO_USER"); sudoUser != "" {
		if u, err := user.Lookup(sudoUser); err == nil {
			home, xdg = u.HomeDir, ""
		}
	}
	return protect.User{Home: home, Configs: protect.UserGitConfigs(home, xdg)}
}

// gitFindings lists the hooks and dangerous git config beneath rel of dir that the
// original (when not "") does not have at the same place.
func gitFindings(dir, rel, original string) ([]protect.Finding, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	after, err := protect.Scan(root, rel)
	if err != nil || original == "" {
		return after, err
	}
	orig, err := os.OpenRoot(original)
	if err != nil {
		return after, nil // the original is gone: everything counts
	}
	defer orig.Close()
	before, err := protect.Scan(orig, rel)
	if err != nil {
		return after, nil
	}
	return protect.Appeared(before, after), nil
}

// What a scan's findings may add to the log and to the trail: a workspace the agent
// filled with findings must not flood either.
const (
	maxLoggedFindings  = 50
	maxAuditedFindings = 200
)

// warnFindings tells the person what could run on the host at their next git command
// (the first maxLoggedFindings findings, and how many more).
func warnFindings(log *slog.Logger, what string, found []protect.Finding, err error) {
	if err != nil {
		log.Warn(what+": could not look for git hooks and config that run code", "error", err)
	}
	lines, more := findingLines(found, maxLoggedFindings)
	for _, l := range lines {
		log.Warn(fmt.Sprintf("%s: %s; it can run code at the next git command where it lands: inspect it before you run git there", what, l))
	}
	if more > 0 {
		log.Warn(fmt.Sprintf("%s: %d more git hooks or config that run code, not listed", what, more))
	}
}

// findingLines are the first n findings as text, and how many more there are.
func findingLines(found []protect.Finding, n int) (lines []string, more int) {
	for _, f := range found[:min(n, len(found))] {
		lines = append(lines, f.String())
	}
	return lines, len(found) - len(lines)
}

// warnCopyFindings warns, once the agent of a --cwd copy has exited, about the hooks and
// dangerous git config that appeared in the copy, before a person copies them out.
func (e *Engine) warnCopyFindings(id names.Identity, copyDir, original string) {
	found, err := gitFindings(copyDir, ".", original)
	warnFindings(e.log, fmt.Sprintf("the workspace copy of bottle %s holds new git hook or config", id), found, err)
}

// auditWorkspace is a host record: hooks and dangerous git config that appeared in a
// bottle's (direct) workspace while its agent ran.
const auditWorkspace = "workspace"

// protectRecordName is the file in a bottle's dir that keeps, for a direct workspace,
// what protect made there and what the workspace held before the agent first ran.
const protectRecordName = "protect.json"

// protectRecord is what a bottle keeps about the protection of its direct workspace.
type protectRecord struct {
	// Commondir: the workspace's .git/commondir is bottle's ("."), removed with the
	// bottle (when no other bottle on the checkout has it).
	Commondir bool `json:"commondir,omitempty"`
	// Created are the empty dirs bottle made to mount them (a missing .git/hooks),
	// removed with the bottle while still empty (when no other bottle binds the checkout).
	Created []string `json:"created,omitempty"`
	// CreatedFiles are the empty files bottle made to mount them (a .git/config.worktree
	// git would read), removed like Created while still empty.
	CreatedFiles []string `json:"created_files,omitempty"`
	// Scanned: Baseline is the scan of the workspace before the agent first ran.
	Scanned  bool              `json:"scanned,omitempty"`
	Baseline []protect.Finding `json:"baseline,omitempty"`
}

// made reports whether bottle made anything in the workspace to protect it.
func (r protectRecord) made() bool {
	return r.Commondir || len(r.Created) > 0 || len(r.CreatedFiles) > 0
}

func (e *Engine) protectRecordPath(id names.Identity) string {
	return filepath.Join(e.store.BottleDir(id), protectRecordName)
}

// loadProtectRecord reads a bottle's protect record (written by bottle, in the state
// dir; missing for a --cwd bottle or one from before the record existed).
func (e *Engine) loadProtectRecord(id names.Identity) (protectRecord, error) {
	var r protectRecord
	b, err := os.ReadFile(e.protectRecordPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return r, err
	}
	return r, json.Unmarshal(b, &r)
}

// prepareProtect makes what the workspace protection mounts (protect.Prepare) and, for a
// direct workspace, scans it in the background for what already runs code there (a
// resumed bottle keeps its first scan); the returned wait must return before the agent
// starts. A new start taken back removes bottle's commondir again.
func (s *starter) prepareProtect() (wait func() error, err error) {
	e, p := s.e, s.p
	if err := protect.Prepare(p.Workspace.Source, p.Workspace.Protect); err != nil {
		return nil, fmt.Errorf("workspace protection of %s: %w", s.id, err)
	}
	if p.Workspace.Copy {
		return func() error { return nil }, nil // the copy goes with the bottle's dir
	}
	made := protectRecord{Commondir: p.Workspace.Protect.Commondir, Created: p.Workspace.Protect.Create, CreatedFiles: p.Workspace.Protect.CreateFiles}
	if s.prev == nil && made.made() {
		s.undo.push("remove what protect made", func(context.Context) error {
			e.removeMade(s.id, p.Workspace.Source, made)
			return nil
		})
	}
	return async(func() error {
		rec, err := e.loadProtectRecord(s.id)
		if err != nil {
			return fmt.Errorf("protect record of %s: %w", s.id, err)
		}
		rec.Commondir = rec.Commondir || made.Commondir
		for _, c := range made.Created {
			if !slices.Contains(rec.Created, c) {
				rec.Created = append(rec.Created, c)
			}
		}
		for _, c := range made.CreatedFiles {
			if !slices.Contains(rec.CreatedFiles, c) {
				rec.CreatedFiles = append(rec.CreatedFiles, c)
			}
		}
		if !rec.Scanned {
			found, err := gitFindings(p.Workspace.Source, ".", "")
			if err != nil {
				e.log.Warn(fmt.Sprintf("bottle %s: the workspace could not be scanned for git hooks and config that run code, so what the agent adds there is not warned about", s.id), "error", err)
			}
			rec.Scanned, rec.Baseline = err == nil, found
		}
		b, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return os.WriteFile(e.protectRecordPath(s.id), b, 0o600)
	}), nil
}

// removeMade removes what protect made in a direct workspace (rec: bottle's commondir,
// the empty dirs), unless another recorded bottle binds the same checkout (it is then
// that bottle's to remove).
func (e *Engine) removeMade(id names.Identity, workspace string, rec protectRecord) {
	if !rec.made() {
		return
	}
	metas, _, err := e.store.List()
	if err == nil {
		for _, m := range metas {
			if m.Identity != id && !m.CopyCwd && m.Workspace == workspace {
				return
			}
		}
		if rec.Commondir {
			err = protect.RemoveCommondir(workspace)
		}
		err = errors.Join(err, protect.RemoveEmptyDirs(workspace, rec.Created), protect.RemoveEmptyFiles(workspace, rec.CreatedFiles))
	}
	if err != nil {
		e.log.Warn("what bottle made in the workspace to protect it is left there (its .git/commondir, an empty .git/hooks or hooks dir, or an empty .git/config.worktree)", "workspace", workspace, "error", err)
	}
}

// checkWorkspace warns about the hooks and dangerous git config that appeared in a
// bottle's direct workspace since its first start, and records them in its trail.
// event names the moment (stop, rm).
func (e *Engine) checkWorkspace(m *state.Meta, rec protectRecord, event string) {
	if m.CopyCwd || !rec.Scanned {
		return
	}
	root, err := os.OpenRoot(m.Workspace)
	if err != nil {
		e.log.Warn(fmt.Sprintf("bottle %s: its workspace could not be scanned for git hooks and config that run code", m.Identity), "error", err)
		return
	}
	defer root.Close()
	after, err := protect.Scan(root, ".")
	found := protect.Appeared(rec.Baseline, after)
	warnFindings(e.log, fmt.Sprintf("bottle %s left git hook or config in its workspace %s", m.Identity, m.Workspace), found, err)
	if slices.ContainsFunc(found, func(f protect.Finding) bool { return f.What == protect.BareLayout }) {
		e.log.Warn("git uses a bare repository layout, with its config, when run in it or when the .git above it is broken; `" + protect.BareRecommendation + "` (git >= 2.38) makes your git ignore it")
	}
	if len(found) > 0 || err != nil {
		lines, more := findingLines(found, maxAuditedFindings)
		fields := map[string]any{"event": event, "findings": lines}
		if more > 0 {
			fields["more"] = more
		}
		if err != nil { // a scan cut short (an agent can fill the workspace past the bounds)
			fields["error"] = err.Error()
		}
		_ = e.recordHost(m.Identity, auditWorkspace, fields)
	}
}

// FaultSwapHooks (tests only, Options.Fault) replaces the workspace's .git/hooks, once
// bottle has pinned it, by a link to the workspace's decoy-hooks: what another agent on
// the same checkout could do between bottle's check and the runtime's mount.
const FaultSwapHooks = "swap-git-hooks"

// pinProtect opens the workspace's protected paths (protect.Pin) and bind-mounts each
// opened object, through its descriptor, on a pin point in bottle's state dir (pinDir);
// the agent's spec mounts the pin points. So the runtime mounts what bottle checked even
// when a workspace path is swapped before the mount. (The runtime cannot take the
// /proc/PID/fd path itself: runsc's gofer mounts its own /proc before it binds the
// sources.) unpin takes the pin points down once the agent's task exists: its mounts
// stay.
func (s *starter) pinProtect(spec *specs.Spec) error {
	l := s.p.Workspace.Protect
	if len(l.Mounts) == 0 {
		return nil
	}
	files, err := protect.Pin(s.p.Workspace.Source, l)
	s.pins = append(s.pins, files...)
	if err != nil {
		return fmt.Errorf("workspace protection of %s: %w", s.id, err)
	}
	dir := s.e.pinDir(s.id)
	s.e.unmountPins(s.id) // a killed start's
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := privateMount(dir); err != nil {
		return fmt.Errorf("workspace protection of %s: %w", s.id, err)
	}
	for i, m := range l.Mounts {
		point := filepath.Join(dir, strconv.Itoa(i))
		if err := pinMount(files[i], point); err != nil {
			return fmt.Errorf("workspace protection of %s: pin %s: %w", s.id, m.Path, err)
		}
		s.pinPoints = append(s.pinPoints, point)
		src, dst := filepath.Join(s.p.Workspace.Source, m.Path), path.Join("/workspace", m.Path)
		found := false
		for j := range spec.Mounts {
			if spec.Mounts[j].Destination == dst && spec.Mounts[j].Source == src {
				spec.Mounts[j].Source, found = point, true
			}
		}
		if !found {
			return fmt.Errorf("workspace protection of %s: the agent's spec has no mount of %s", s.id, m.Path)
		}
	}
	if s.e.opts.Fault == FaultSwapHooks {
		hooks := filepath.Join(s.p.Workspace.Source, ".git/hooks")
		if err := os.Rename(hooks, hooks+".swapped"); err != nil {
			return err
		}
		return os.Symlink("../decoy-hooks", hooks)
	}
	return nil
}

// pinMount bind-mounts pinned file f on point (made like f: a dir or an empty file), and
// checks that the mount is f's object.
func pinMount(f *os.File, point string) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		if err := os.Mkdir(point, 0o700); err != nil {
			return err
		}
	} else if err := os.WriteFile(point, nil, 0o600); err != nil {
		return err
	}
	if err := unix.Mount(protect.PinPath(f), point, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	// Out of the workspace mount's peer group: no mount event beneath the pin reaches
	// the person's mount, nor one from there the pin.
	if err := unix.Mount("", point, "", unix.MS_PRIVATE, ""); err != nil {
		return err
	}
	var got unix.Stat_t
	if err := unix.Stat(point, &got); err != nil || got.Dev != st.Dev || got.Ino != st.Ino {
		return fmt.Errorf("the pin point is not the opened object (%v)", err)
	}
	return nil
}

// privateMount makes a bottle's pin dir a mount of its own (bound on itself) with
// private propagation: a pin mounted beneath it is then never copied into another mount
// namespace (the peers and slaves of a shared /), where no unmount of bottle's would
// reach it and the person's .git would stay mounted there. (The copies those namespaces
// get of the empty dir's own bind go when the dir is removed.)
func privateMount(dir string) error {
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s on itself: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make %s private: %w", dir, err)
	}
	return nil
}

// sweepPins takes down the pin dirs under this state dir's pins/ whose bottle has no
// record (a start killed by SIGKILL before its undo ran, then its record removed):
// only dirs named like a bottle, never anything else. It returns those it took down.
func (e *Engine) sweepPins(recorded map[string]bool) []string {
	entries, err := os.ReadDir(filepath.Join(e.opts.StateDir, "pins"))
	if err != nil {
		return nil
	}
	var out []string
	for _, ent := range entries {
		id, err := names.ParseIdentity(ent.Name())
		if err != nil || !ent.IsDir() || recorded[id.String()] {
			continue
		}
		e.unmountPins(id)
		out = append(out, "pins/"+id.String())
	}
	return out
}

// pinDir holds a bottle's pin points: outside its bottle dir, so that no removal of that
// dir ever recurses through a pinned workspace dir.
func (e *Engine) pinDir(id names.Identity) string {
	return filepath.Join(e.opts.StateDir, "pins", id.String())
}

// unmountPins takes down what is left of a bottle's pin points (a killed start's),
// never removing anything recursively.
func (e *Engine) unmountPins(id names.Identity) {
	dir := e.pinDir(id)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, ent := range entries {
		point := filepath.Join(dir, ent.Name())
		_ = unix.Unmount(point, unix.MNT_DETACH)
		if err := os.Remove(point); err != nil {
			e.log.Warn("a pin point of the workspace protection is left", "path", point, "error", err)
		}
	}
	removePinDir(dir)
}

// removePinDir takes down a pin dir's bind on itself (privateMount) and removes the dir.
func removePinDir(dir string) {
	_ = unix.Unmount(dir, unix.MNT_DETACH)
	_ = os.Remove(dir)
}

// unpin closes what pinProtect opened and takes its pin points down (the agent's task,
// once created, has its own mounts of them).
func (s *starter) unpin() {
	for _, point := range s.pinPoints {
		if err := unix.Unmount(point, unix.MNT_DETACH); err != nil {
			s.e.log.Warn("a pin point of the workspace protection is left mounted", "path", point, "error", err)
			continue
		}
		_ = os.Remove(point)
	}
	if s.pinPoints != nil || s.pins != nil { // pinProtect may have failed after it bound the dir
		removePinDir(s.e.pinDir(s.id))
	}
	s.pinPoints = nil
	for _, f := range s.pins {
		f.Close()
	}
	s.pins = nil
}
