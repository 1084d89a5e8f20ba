package state

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/names"
)

func TestSaveLoadListRemove(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	if metas, broken, err := s.List(); err != nil || len(metas)+len(broken) != 0 {
		t.Fatalf("empty store: %v %v %v", metas, broken, err)
	}
	m := &Meta{Identity: "a-000001", Agent: "a", Phase: PhaseStarting, CreatedAt: time.Unix(1, 0).UTC(),
		Containers: []Container{{Name: "bottle-a-000001-agent", Role: "agent", Attachments: []names.Attachment{{Network: names.NetInternal, IfName: "eth0", Address: netip.MustParseAddr("10.0.0.10")}}}}}
	if err := s.Create(m); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(m); err == nil {
		t.Error("Create of a recorded identity succeeded")
	}
	info, err := os.Stat(filepath.Join(s.BottleDir(m.Identity), "meta.json"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("meta.json mode %v, %v; want 0600", info.Mode(), err)
	}
	got, err := s.Load(m.Identity)
	if err != nil || got.Containers[0].Attachments[0].Address != netip.MustParseAddr("10.0.0.10") {
		t.Fatalf("load: %+v %v", got, err)
	}
	os.MkdirAll(s.BottleDir("b-000002"), 0o700)
	os.WriteFile(filepath.Join(s.BottleDir("b-000002"), "meta.json"), []byte("{broken"), 0o600)
	metas, broken, err := s.List()
	if err != nil || len(metas) != 1 || len(broken) != 1 || broken[0] != "b-000002" {
		t.Fatalf("list: %v %v %v", metas, broken, err)
	}
	if _, err := s.Load("c-000003"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing bottle: %v, want ErrNotFound", err)
	}
	if err := s.Remove("../x"); err == nil {
		t.Error("Remove accepted a path")
	}
	if err := s.Remove(m.Identity); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.BottleDir(m.Identity)); !os.IsNotExist(err) {
		t.Error("bottle dir still there after Remove")
	}
}

// TestMetaOfAnEarlierVersionReads: meta.json written when addresses were strings still
// loads, and is written back with the same field names and values.
func TestMetaOfAnEarlierVersionReads(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	old := `{"identity": "a-000001", "agent": "a", "phase": "stopped",
  "sidecars": {"resolv_conf": "nameserver 192.0.2.1\n", "hosts": [{"name": "git.test", "addr": "192.0.2.7"}]},
  "containers": [{"name": "bottle-a-000001-agent", "role": "agent", "attachments": [{"network": "internal", "ifname": "eth0", "address": "10.0.0.10"}]}]}`
	os.MkdirAll(s.BottleDir("a-000001"), 0o700)
	if err := os.WriteFile(filepath.Join(s.BottleDir("a-000001"), "meta.json"), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := s.Load("a-000001")
	if err != nil {
		t.Fatal(err)
	}
	if h := m.Sidecars.Hosts; len(h) != 1 || h[0] != (names.HostEntry{Name: "git.test", Addr: netip.MustParseAddr("192.0.2.7")}) {
		t.Errorf("hosts %+v", h)
	}
	if a := m.Containers[0].Attachments; len(a) != 1 || a[0] != (names.Attachment{Network: names.NetInternal, IfName: "eth0", Address: netip.MustParseAddr("10.0.0.10")}) {
		t.Errorf("attachments %+v", a)
	}
	if err := s.Save(m); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(s.BottleDir("a-000001"), "meta.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"addr": "192.0.2.7"`, `"address": "10.0.0.10"`, `"ifname": "eth0"`, `"network": "internal"`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("written meta.json lacks %s:\n%s", want, data)
		}
	}
}

func TestOrphaned(t *testing.T) {
	self := os.Getpid()
	start, err := ProcessStart(self)
	if err != nil {
		t.Fatal(err)
	}
	alive := Meta{Pid: self, PidStart: start}
	reused := Meta{Pid: self, PidStart: start + 1} // same pid, another process
	for _, tc := range []struct {
		m    Meta
		want bool
	}{
		{Meta{Phase: PhaseStarting, Pid: alive.Pid, PidStart: alive.PidStart}, false},
		{Meta{Phase: PhaseStarting, Pid: reused.Pid, PidStart: reused.PidStart}, true},
		{Meta{Phase: PhaseStarting}, true},
		{Meta{Phase: PhaseRunning, Detached: true}, false},
		// A bottle that ran is not abandoned part way, even when its process is gone.
		{Meta{Phase: PhaseRunning, Pid: reused.Pid, PidStart: reused.PidStart}, false},
		{Meta{Phase: PhaseRunning, Pid: alive.Pid, PidStart: alive.PidStart}, false},
		{Meta{Phase: PhaseStopped}, false},
	} {
		if got := Orphaned(&tc.m); got != tc.want {
			t.Errorf("Orphaned(%+v) = %v, want %v", tc.m, got, tc.want)
		}
	}
	for _, tc := range []struct {
		m    Meta
		want bool
	}{
		{Meta{Phase: PhaseRunning, Pid: reused.Pid, PidStart: reused.PidStart}, true},
		{Meta{Phase: PhaseRunning, Pid: alive.Pid, PidStart: alive.PidStart}, false},
		{Meta{Phase: PhaseRunning, Detached: true}, false},
		{Meta{Phase: PhaseStarting}, false},
		{Meta{Phase: PhaseStopped}, false},
	} {
		if got := Unattended(&tc.m); got != tc.want {
			t.Errorf("Unattended(%+v) = %v, want %v", tc.m, got, tc.want)
		}
	}
}

// failAt makes the named write step fail with ENOSPC until the test ends.
func failAt(t *testing.T, step string) {
	t.Helper()
	failpoint = func(s, _ string) error {
		if s == step {
			return &os.PathError{Op: s, Path: "test", Err: syscall.ENOSPC}
		}
		return nil
	}
	t.Cleanup(func() { failpoint = func(string, string) error { return nil } })
}

var writeSteps = []string{"create", "write", "sync", "chmod", "close", "rename"}

// entries lists every file and dir under dir (relative), to see what a failure left.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err == nil && p != dir {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

func TestCreateFailingAtEachWriteLeavesNothing(t *testing.T) {
	for _, step := range writeSteps {
		t.Run(step, func(t *testing.T) {
			s := Store{Dir: t.TempDir()}
			failAt(t, step)
			err := s.Create(&Meta{Identity: "a-000001", Phase: PhaseStarting})
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("Create with %s failing: %v, want ENOSPC", step, err)
			}
			if left := entries(t, filepath.Join(s.Dir, "bottles")); len(left) != 0 {
				t.Errorf("left after a failed Create: %v", left)
			}
		})
	}
}

func TestSaveFailingAtEachWriteKeepsTheRecord(t *testing.T) {
	for _, step := range writeSteps {
		t.Run(step, func(t *testing.T) {
			s := Store{Dir: t.TempDir()}
			if err := s.Create(&Meta{Identity: "a-000001", Phase: PhaseRunning}); err != nil {
				t.Fatal(err)
			}
			failAt(t, step)
			if err := s.Save(&Meta{Identity: "a-000001", Phase: PhaseStopped}); !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("Save with %s failing: %v, want ENOSPC", step, err)
			}
			if m, err := s.Load("a-000001"); err != nil || m.Phase != PhaseRunning {
				t.Errorf("after a failed Save: %+v, %v; want the old record", m, err)
			}
			if left := entries(t, s.BottleDir("a-000001")); !slices.Equal(left, []string{"meta.json"}) {
				t.Errorf("bottle dir after a failed Save: %v", left)
			}
		})
	}
}

func TestSaveDoesNotRecreateARemovedBottle(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	m := &Meta{Identity: "a-000001", Phase: PhaseRunning}
	if err := s.Create(m); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(m.Identity); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(m); !errors.Is(err, ErrNotFound) {
		t.Errorf("Save of a removed bottle: %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(s.BottleDir(m.Identity)); !os.IsNotExist(err) {
		t.Error("Save recreated a removed bottle")
	}
}

func TestWriteFileMode(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, %v; want 0644", st.Mode(), err)
	}
}

// TestCreateFileNeverReplaces: CreateFile makes a missing file whole and refuses an
// existing one, which keeps its content; no temporary file is left.
func TestCreateFileNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pin")
	if err := CreateFile(path, []byte("first"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CreateFile(path, []byte("second"), 0o644); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second create: %v, want ErrExist", err)
	}
	if got, err := os.ReadFile(path); err != nil || string(got) != "first" {
		t.Errorf("content %q, %v; want the first", got, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("files left: %v", entries)
	}
}
