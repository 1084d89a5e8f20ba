package state

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestSaveLoadListRemove(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	if metas, broken, err := s.List(); err != nil || len(metas)+len(broken) != 0 {
		t.Fatalf("empty store: %v %v %v", metas, broken, err)
	}
	m := &Meta{Identity: "a-000001", Agent: "a", Phase: PhaseStarting, CreatedAt: time.Unix(1, 0).UTC(),
		Containers: []Container{{Name: "bottle-a-000001-agent", Role: "agent", Attachments: []Attachment{{Network: "internal", IfName: "eth0", Address: "10.0.0.10"}}}}}
	if err := s.Save(m); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(filepath.Join(s.BottleDir(m.Identity), "meta.json"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("meta.json mode %v, %v; want 0600", info.Mode(), err)
	}
	got, err := s.Load(m.Identity)
	if err != nil || got.Containers[0].Attachments[0].Address != "10.0.0.10" {
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
		{Meta{Phase: PhaseRunning, Pid: reused.Pid, PidStart: reused.PidStart}, true},
		{Meta{Phase: PhaseRunning, Pid: alive.Pid, PidStart: alive.PidStart}, false},
		{Meta{Phase: PhaseStopped}, false},
	} {
		if got := Orphaned(&tc.m); got != tc.want {
			t.Errorf("Orphaned(%+v) = %v, want %v", tc.m, got, tc.want)
		}
	}
}
