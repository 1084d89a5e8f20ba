package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/hostenv"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
)

// lifecycleEvents reads the trail of id as "event by user" lines, after verifying it.
func lifecycleEvents(t *testing.T, stateDir string, id names.Identity) []string {
	t.Helper()
	dir := audit.Dir(stateDir, id)
	if _, problems, err := audit.Verify(dir); err != nil || len(problems) > 0 {
		t.Fatalf("verify: %v %v", problems, err)
	}
	var out []string
	if _, err := audit.Read(context.Background(), dir, audit.Options{}, func(r audit.Record) error {
		var l audit.Lifecycle
		if err := json.Unmarshal(r.Fields, &l); err != nil {
			return err
		}
		out = append(out, l.Event+" by "+l.User)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestLifecycleRecordedInTheTrail: start, stop, resume and rm each add one record, by
// the host user (SUDO_USER first); the filter's dir of the trail belongs to the sidecars'
// user; the trail outlives rm (and cleanup, which it records); a start that fails leaves
// no trail.
func TestLifecycleRecordedInTheTrail(t *testing.T) {
	st := newStartTest(t)
	st.env["SUDO_USER"] = "alice"
	ctx := context.Background()
	if _, err := st.e.Start(ctx, st.so); err != nil {
		t.Fatal(err)
	}
	id := names.Identity(st.bottles()[0])
	dir := audit.Dir(st.host.stateDir, id)
	if uid, _, perm, ok := hostenv.Dir(audit.SidecarDir(dir, names.RoleFilter)); !ok || uid != plan.SidecarUID || perm != 0o700 {
		t.Errorf("filter's trail dir: uid %d perm %o (%v), want %d 0700", uid, perm, ok, plan.SidecarUID)
	}
	if err := st.e.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	load := func(string) (*manifest.Manifest, string, plan.HostFiles, error) {
		return st.so.Manifest, st.so.ManifestPath, nil, nil
	}
	if _, err := st.e.Resume(ctx, id, load, true, Stdio{}); err != nil {
		t.Fatal(err)
	}
	if err := st.e.Remove(ctx, id, true); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(lifecycleEvents(t, st.host.stateDir, id), "\n")
	want := "start by alice (sudo)\nstop by alice (sudo)\nresume by alice (sudo)\nrm by alice (sudo)"
	if got != want {
		t.Errorf("lifecycle records:\n%s\nwant\n%s", got, want)
	}
	if _, err := os.Stat(filepath.Join(st.host.stateDir, "bottles", id.String())); err == nil {
		t.Error("rm left the bottle's dir")
	}

	// cleanup --all removes a running bottle and says so in its trail.
	st = newStartTest(t)
	if _, err := st.e.Start(ctx, st.so); err != nil {
		t.Fatal(err)
	}
	id = names.Identity(st.bottles()[0])
	if _, err := st.e.Cleanup(ctx, true); err != nil {
		t.Fatal(err)
	}
	if got := lifecycleEvents(t, st.host.stateDir, id); len(got) != 2 || !strings.HasPrefix(got[1], "cleanup by ") {
		t.Errorf("after cleanup: %q", got)
	}

	failed := newStartTest(t)
	failed.host.fail["start agent"] = errors.New("boom")
	if _, err := failed.e.Start(ctx, failed.so); err == nil {
		t.Fatal("start succeeded")
	}
	if ids, err := audit.Trails(failed.host.stateDir); err != nil || len(ids) != 0 {
		t.Errorf("a failed start left trails %v (%v)", ids, err)
	}
}
