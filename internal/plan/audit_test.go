package plan

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/names"
)

// TestAuditTrailMounts: each of bottle's own sidecars gets its own dir of the trail,
// under the state dir but outside the bottle's dir (so rm leaves it), writable at
// audit.SidecarMount with the --audit argument; pipelock and the agent get no part of it.
func TestAuditTrailMounts(t *testing.T) {
	for _, pipelock := range []bool{false, true} {
		in := input(load(t, filepath.Join("../../examples", "team.toml")), "coder", map[string]string{"GITHUB_TOKEN": "x", "UPSTREAM_GIT_TOKEN": "y", "GITHUB_USER": "u", "file:/home/me/.ssh/bottle_ed25519": "key"})
		if pipelock {
			in.FilterOverride = FilterPipelock
		}
		p, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		if p.AuditDir != "/var/lib/bottle/audit/coder-abc123" || strings.HasPrefix(p.AuditDir, filepath.Dir(p.StageDir)) {
			t.Fatalf("audit dir %s: want it under the state dir, outside the bottle's dir", p.AuditDir)
		}
		var writers []string
		for _, c := range p.Containers {
			var trail []string
			for _, m := range c.Spec.Mounts {
				if strings.HasPrefix(m.Source, p.AuditDir) {
					trail = append(trail, m.Source)
					if m.Destination != audit.SidecarMount || !slices.Contains(m.Options, "rw") {
						t.Errorf("%s: trail mounted at %s %v, want rw at %s", c.Role, m.Destination, m.Options, audit.SidecarMount)
					}
				}
			}
			if c.AuditDir == "" {
				if len(trail) > 0 {
					t.Errorf("%s: mounts %v of the trail but writes none", c.Role, trail)
				}
				continue
			}
			writers = append(writers, c.Role)
			if want := filepath.Join(p.AuditDir, c.Role); c.AuditDir != want || !slices.Equal(trail, []string{want}) {
				t.Errorf("%s: audit dir %s, mounts %v; want only %s", c.Role, c.AuditDir, trail, want)
			}
			if args := c.Spec.Process.Args; !slices.Equal(args[len(args)-2:], []string{"--audit", audit.SidecarFile}) {
				t.Errorf("%s: args %v", c.Role, args)
			}
		}
		want := []string{names.RoleFilter, names.RoleEgressProxy, names.RoleGitGate, names.RoleSupervise}
		if pipelock {
			want = want[1:] // pipelock keeps its own log (README)
		}
		slices.Sort(want)
		slices.Sort(writers)
		if !slices.Equal(writers, want) {
			t.Errorf("pipelock=%v: sidecars writing the trail %v, want %v", pipelock, writers, want)
		}
	}
}

// stripAuditTrail removes the audit trail's mount and argument from a sidecar's spec,
// failing unless both are there as planned.
func stripAuditTrail(t *testing.T, key string, spec map[string]any) {
	t.Helper()
	process := spec["process"].(map[string]any)
	args := process["args"].([]any)
	if n := len(args); n < 2 || args[n-2] != "--audit" || args[n-1] != audit.SidecarFile {
		t.Errorf("%s: args %v do not end with --audit %s", key, args, audit.SidecarFile)
	} else {
		process["args"] = args[:n-2]
	}
	mounts := spec["mounts"].([]any)
	kept := slices.DeleteFunc(slices.Clone(mounts), func(m any) bool { return m.(map[string]any)["destination"] == audit.SidecarMount })
	if len(kept) != len(mounts)-1 {
		t.Errorf("%s: %d mounts at %s, want 1", key, len(mounts)-len(kept), audit.SidecarMount)
	}
	spec["mounts"] = kept
}
