package runtime

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/names"
)

// TestStartProtectsWorkspace: a start on a git checkout makes bottle's .git/commondir,
// gives the agent's spec the protected paths as pin points that are the checked objects
// while the container is made (and are gone once it started), scans the workspace before the agent
// runs; rm warns about (and records) what appeared since, with its path, not about what
// was there before, and removes bottle's commondir; a start taken back removes it too.
func TestStartProtectsWorkspace(t *testing.T) {
	st := newStartTest(t)
	ws := t.TempDir()
	for _, d := range []string{".git/hooks", ".git/objects", ".git/refs/heads"} {
		if err := os.MkdirAll(filepath.Join(ws, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for f, c := range map[string]string{".git/HEAD": "ref: refs/heads/main\n", ".git/config": "[core]\n\tpager = less\n", ".git/hooks/pre-commit": "#!/bin/sh\n"} {
		if err := os.WriteFile(filepath.Join(ws, f), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	st.so.Workspace = ws
	var logs bytes.Buffer
	st.e.log = slog.New(slog.NewTextHandler(&logs, nil))
	checked := 0
	st.host.hook["create agent"] = func() {
		for _, m := range st.host.specs[names.RoleAgent].Mounts {
			rel, ok := strings.CutPrefix(m.Destination, "/workspace/")
			if !ok {
				continue
			}
			if !strings.HasPrefix(m.Source, filepath.Join(st.host.stateDir, "pins")+"/") {
				t.Errorf("mount %s: source %s, want a pin point in the state dir", m.Destination, m.Source)
				continue
			}
			var pinned, path syscall.Stat_t
			if err := syscall.Stat(m.Source, &pinned); err != nil {
				t.Errorf("mount %s: %v", m.Destination, err)
				continue
			}
			if err := syscall.Lstat(filepath.Join(ws, rel), &path); err != nil || pinned.Ino != path.Ino || pinned.Dev != path.Dev {
				t.Errorf("mount %s: the pin is not the workspace's %s (%v)", m.Destination, rel, err)
			}
			checked++
		}
	}
	if code, err := st.e.Start(context.Background(), st.so); code != 0 || err != nil {
		t.Fatalf("start: %d, %v", code, err)
	}
	if checked < 6 { // .git, objects, refs, hooks, config, commondir
		t.Errorf("%d pinned workspace mounts checked, want 6", checked)
	}
	if _, err := os.Stat(filepath.Join(st.host.stateDir, "pins")); err == nil {
		if left, _ := os.ReadDir(filepath.Join(st.host.stateDir, "pins")); len(left) != 0 {
			t.Errorf("pin points left after the start: %v", left)
		}
	}
	if b, err := os.ReadFile(filepath.Join(ws, ".git/commondir")); err != nil || string(b) != ".\n" {
		t.Errorf("commondir %q, %v", b, err)
	}
	id := names.Identity(st.bottles()[0])
	// The agent leaves a hook and a submodule git dir that runs code.
	for f, c := range map[string]string{".git/hooks/post-checkout": "#!/bin/sh\nevil\n", "sub/.git/config": "[core]\n\tfsmonitor = evil\n"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(ws, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ws, f), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.e.Remove(context.Background(), id, true); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	for _, want := range []string{".git/hooks/post-checkout: hook", `sub/.git/config: config core.fsmonitor`, ws} {
		if !strings.Contains(out, want) {
			t.Errorf("rm does not warn about %s:\n%s", want, out)
		}
	}
	for _, old := range []string{"pre-commit", "core.pager", "commondir"} {
		if strings.Contains(out, old) {
			t.Errorf("rm warns about %s, which was there before:\n%s", old, out)
		}
	}
	if _, err := os.Lstat(filepath.Join(ws, ".git/commondir")); !os.IsNotExist(err) {
		t.Errorf("bottle's commondir is left after rm: %v", err)
	}
	var rec bytes.Buffer
	if _, err := audit.Read(context.Background(), audit.Dir(st.host.stateDir, id), audit.Options{}, func(r audit.Record) error {
		return audit.WriteJSON(&rec, r)
	}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rec.String(), `"kind":"workspace"`) || !strings.Contains(rec.String(), "post-checkout") {
		t.Errorf("no workspace record in the trail:\n%s", rec.String())
	}

	// A start taken back takes bottle's commondir, and the empty .git/hooks it made,
	// back with it.
	if err := os.RemoveAll(filepath.Join(ws, ".git/hooks")); err != nil {
		t.Fatal(err)
	}
	st = newStartTest(t)
	st.so.Workspace = ws
	st.host.fail["start filter"] = os.ErrPermission
	if _, err := st.e.Start(context.Background(), st.so); err == nil {
		t.Fatal("the start did not fail")
	}
	if _, err := os.Lstat(filepath.Join(ws, ".git/commondir")); !os.IsNotExist(err) {
		t.Errorf("a failed start left bottle's commondir: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(ws, ".git/hooks")); !os.IsNotExist(err) {
		t.Errorf("a failed start left the empty .git/hooks it made: %v", err)
	}
}

// TestBareRepositoryCheck: doctor warns, with the command that fixes it, until the
// invoking user's git config sets safe.bareRepository = explicit.
func TestBareRepositoryCheck(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("SUDO_USER", "")
	t.Setenv("XDG_CONFIG_HOME", "")
	if c := bareRepositoryCheck(context.Background()); c.Status != CheckWarn || !strings.Contains(c.Fix, "safe.bareRepository explicit") {
		t.Errorf("without the setting: %+v, want a warning with the fix", c)
	}
	if err := os.WriteFile(filepath.Join(home, ".gitconfig"), []byte("[safe]\n\tbareRepository = explicit\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if c := bareRepositoryCheck(context.Background()); c.Status != CheckOK {
		t.Errorf("with safe.bareRepository = explicit: %+v, want ok", c)
	}
}

// TestCleanupSweepsOrphanedPins: a pin dir under the state dir whose bottle has no
// record (a start killed by SIGKILL) is unmounted and removed by cleanup, with the
// person's dir it pinned left as it was; a recorded bottle's pin dir and what is not
// named like a bottle stay.
func TestCleanupSweepsOrphanedPins(t *testing.T) {
	st := newStartTest(t)
	ws := t.TempDir()
	if err := os.MkdirAll(filepath.Join(ws, ".git/hooks"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ws, ".git/hooks/keep"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	st.so.Workspace = ws
	if code, err := st.e.Start(context.Background(), st.so); code != 0 || err != nil {
		t.Fatalf("start: %d, %v", code, err)
	}
	recorded := names.Identity(st.bottles()[0])
	orphan := names.Identity("a-000001")
	pins := filepath.Join(st.host.stateDir, "pins")
	for _, d := range []string{string(recorded), "not-a-bottle"} {
		if err := os.MkdirAll(filepath.Join(pins, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// What a killed start leaves: its dir bound on itself, a pin mounted beneath.
	dir := st.e.pinDir(orphan)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := privateMount(dir); err != nil {
		t.Fatal(err)
	}
	point := filepath.Join(dir, "0")
	if err := os.Mkdir(point, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(filepath.Join(ws, ".git/hooks"), point, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(point, syscall.MNT_DETACH); _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	rep, err := st.e.Cleanup(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	if want := "pins/" + orphan.String(); len(rep.Pins) != 1 || rep.Pins[0] != want {
		t.Errorf("cleanup took down pins %v, want [%s]", rep.Pins, want)
	}
	if !strings.Contains(rep.String(), "workspace pins: "+"pins/"+orphan.String()) {
		t.Errorf("the report does not name the pin:\n%s", rep)
	}
	if _, err := os.Lstat(dir); !os.IsNotExist(err) {
		t.Errorf("the orphaned pin dir is left: %v", err)
	}
	for _, d := range []string{string(recorded), "not-a-bottle"} {
		if _, err := os.Stat(filepath.Join(pins, d)); err != nil {
			t.Errorf("cleanup removed pins/%s: %v", d, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(ws, ".git/hooks/keep")); err != nil || string(b) != "x" {
		t.Errorf("the pinned dir changed: %q, %v", b, err)
	}
}
