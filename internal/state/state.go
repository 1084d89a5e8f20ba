// Package state keeps each bottle's recorded metadata under the state dir, so bottles can be
// listed, resumed and cleaned up by identity after the process that started them is gone.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bottle-dev/bottle/internal/names"
)

// Phases of a bottle's life.
const (
	// PhaseStarting: start is in progress; if its process is gone, the bottle is an orphan.
	PhaseStarting = "starting"
	// PhaseRunning: the agent runs (attached to Pid's process, or detached when Pid is 0).
	PhaseRunning = "running"
	// PhaseStopped: tasks and networks are gone; containers and metadata stay for resume.
	PhaseStopped = "stopped"
)

// Meta is what bottle records about one bottle. It holds no secret.
type Meta struct {
	Identity     names.Identity `json:"identity"`
	Agent        string         `json:"agent"`
	ManifestPath string         `json:"manifest_path"`
	Workspace    string         `json:"workspace"`
	CopyCwd      bool           `json:"copy_cwd"`
	Command      []string       `json:"command,omitempty"`
	Slot         int            `json:"slot"`
	Pool         string         `json:"pool"`
	Runtime      string         `json:"runtime"`
	Filter       string         `json:"filter"`
	Phase        string         `json:"phase"`
	Detached     bool           `json:"detached"`
	Pid          int            `json:"pid,omitempty"`
	PidStart     uint64         `json:"pid_start,omitempty"`
	CreatedAt    time.Time      `json:"created_at"`
	StartedAt    time.Time      `json:"started_at"`
	// Sidecars are the sidecars' outside settings given at start (none secret), reused
	// by resume unless given again.
	Sidecars SidecarSettings `json:"sidecars"`
	// Containers are recorded before any is created, so teardown finds them all.
	Containers []Container `json:"containers"`
	// Reason says why bottle stopped it by itself (e.g. a sidecar that kept exiting).
	Reason string `json:"reason,omitempty"`
	// AgentImage is the bottle's own agent image (built from an approved Dockerfile);
	// it wins over the manifest's image. AgentImageSeq counts the builds, naming each.
	AgentImage    string `json:"agent_image,omitempty"`
	AgentImageSeq int    `json:"agent_image_seq,omitempty"`
}

// SidecarSettings are how the sidecars that leave the bottle reach the outside.
type SidecarSettings struct {
	ResolvConf string            `json:"resolv_conf,omitempty"`
	Hosts      []names.HostEntry `json:"hosts,omitempty"`
	ExtraCA    string            `json:"extra_ca,omitempty"`
}

// Container is one recorded container of a bottle.
type Container struct {
	Name        string             `json:"name"`
	Role        string             `json:"role"`
	Attachments []names.Attachment `json:"attachments"`
}

// Store is the state dir.
type Store struct{ Dir string }

// BottleDir is where one bottle's files live.
func (s Store) BottleDir(identity names.Identity) string {
	return filepath.Join(s.Dir, "bottles", identity.String())
}

// LogDir holds the bottle's container logs. (It takes the plan's untyped identity.)
func (s Store) LogDir(identity names.Identity) string {
	return filepath.Join(s.BottleDir(names.Identity(identity)), "logs")
}

func (s Store) metaPath(identity names.Identity) string {
	return filepath.Join(s.BottleDir(identity), "meta.json")
}

// ErrNotFound means no bottle with that identity is recorded.
var ErrNotFound = errors.New("bottle not found")

// Create records a new bottle: it makes the bottle's dir (0700), which must not exist yet,
// and writes the metadata. On failure nothing of it is left.
func (s Store) Create(m *Meta) (err error) {
	if err := os.MkdirAll(filepath.Join(s.Dir, "bottles"), 0o700); err != nil {
		return fmt.Errorf("create bottles dir in %s: %w", s.Dir, err)
	}
	dir := s.BottleDir(m.Identity)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("create bottle dir %s: %w", dir, err)
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	return s.Save(m)
}

// Save replaces the metadata of a recorded bottle atomically (0600). A bottle removed
// meanwhile is not recreated: that is an error errors.Is(err, ErrNotFound) recognizes.
func (s Store) Save(m *Meta) error {
	if _, err := os.Stat(s.BottleDir(m.Identity)); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("write metadata of %s: %w (removed meanwhile)", m.Identity, ErrNotFound)
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := WriteFile(s.metaPath(m.Identity), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write metadata of %s: %w", m.Identity, err)
	}
	return nil
}

// failpoint lets tests fail a write step ("create", "write", "sync", "chmod", "close", "rename").
var failpoint = func(step, path string) error { return nil }

// WriteFile writes data to path atomically: a temporary file next to it is written,
// synced and renamed over path, so path holds the old or the new content, never a part.
// On failure the temporary file is removed and path is unchanged.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	return writeFile(path, data, perm, os.Rename)
}

// CreateFile is WriteFile that never replaces: the whole file is linked to path, and an
// existing path is an error satisfying errors.Is(err, fs.ErrExist).
func CreateFile(path string, data []byte, perm os.FileMode) error {
	return writeFile(path, data, perm, func(tmp, path string) error {
		err := os.Link(tmp, path)
		return errors.Join(err, os.Remove(tmp))
	})
}

// writeFile writes data to a temporary file next to path and puts it in place.
func writeFile(path string, data []byte, perm os.FileMode, place func(tmp, path string) error) (err error) {
	if err := failpoint("create", path); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	for _, step := range []struct {
		name string
		fn   func() error
	}{
		{"write", func() error { _, err := tmp.Write(data); return err }},
		{"sync", tmp.Sync},
		{"chmod", func() error { return tmp.Chmod(perm) }},
		{"close", tmp.Close},
		{"rename", func() error { return place(tmp.Name(), path) }},
	} {
		if err := failpoint(step.name, path); err != nil {
			return err
		}
		if err := step.fn(); err != nil {
			return err
		}
	}
	return nil
}

// Load reads one bottle's metadata; ErrNotFound when it has none.
func (s Store) Load(identity names.Identity) (*Meta, error) {
	data, err := os.ReadFile(s.metaPath(identity))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s (list bottles with `bottle ps`)", ErrNotFound, identity)
	}
	if err != nil {
		return nil, fmt.Errorf("read metadata of %s: %w", identity, err)
	}
	var m Meta
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("metadata of %s is corrupt (%v); remove it with `bottle rm %s`", identity, err, identity)
	}
	return &m, nil
}

// List returns every recorded bottle, sorted by identity. Unreadable entries are
// returned as identities in broken so cleanup can still remove them.
func (s Store) List() (metas []*Meta, broken []string, err error) {
	entries, err := os.ReadDir(filepath.Join(s.Dir, "bottles"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list bottles in %s: %w", s.Dir, err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		m, err := s.Load(names.Identity(e.Name()))
		if err != nil {
			broken = append(broken, e.Name())
			continue
		}
		metas = append(metas, m)
	}
	sort.Slice(metas, func(i, j int) bool { return metas[i].Identity < metas[j].Identity })
	return metas, broken, nil
}

// Remove deletes the bottle's dir (metadata, stage files, logs, workspace copy).
func (s Store) Remove(identity names.Identity) error {
	if identity == "" || strings.ContainsAny(identity.String(), "/.") {
		return fmt.Errorf("refusing to remove bottle dir for identity %q", identity)
	}
	if err := os.RemoveAll(s.BottleDir(identity)); err != nil {
		return fmt.Errorf("remove bottle dir of %s: %w", identity, err)
	}
	return nil
}

// ProcessStart returns a process's start time (clock ticks since boot), to tell a live
// process from a reused pid.
func ProcessStart(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces and parentheses: fields start after the last ')'.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// OwnerAlive reports whether the process recorded in m (the one that started or is
// attached to the bottle) still runs.
func OwnerAlive(m *Meta) bool {
	if m.Pid == 0 {
		return false
	}
	start, err := ProcessStart(m.Pid)
	return err == nil && start == m.PidStart
}

// Orphaned reports whether a start was abandoned part way: its process is gone before the
// bottle ran. Nothing of it is worth keeping.
func Orphaned(m *Meta) bool {
	return m.Phase == PhaseStarting && !OwnerAlive(m)
}

// Unattended reports whether a bottle ran attached to a process that is gone: its tasks
// (if any still run) have nobody to stop them, but the bottle itself is worth resuming.
func Unattended(m *Meta) bool {
	return m.Phase == PhaseRunning && !m.Detached && !OwnerAlive(m)
}
