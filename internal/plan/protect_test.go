package plan

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/protect"
)

// TestProtectMounts: the protection the host found becomes the agent's mounts right
// after /workspace, .git itself first (writable, a mount point), then the read-only
// paths beneath it, from the workspace the agent gets (its --cwd copy when it has one);
// the protection's warnings are the plan's.
func TestProtectMounts(t *testing.T) {
	m := load(t, filepath.Join("../../examples", "minimal.toml"))
	for _, copyWS := range []bool{false, true} {
		in := input(m, m.AgentNames()[0], nil)
		in.CopyWorkspace = copyWS
		in.Protect = protect.Layout{
			Mounts:   []protect.Mount{{Path: ".git"}, {Path: ".git/hooks", ReadOnly: true}, {Path: ".git/config", ReadOnly: true}},
			Warnings: []string{"protect: x is not in the workspace"},
		}
		p, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, mt := range p.Container(names.RoleAgent).Spec.Mounts {
			if strings.HasPrefix(mt.Destination, "/workspace") {
				mode := "rw"
				if slices.Contains(mt.Options, "ro") {
					mode = "ro"
				}
				got = append(got, strings.TrimPrefix(mt.Source, p.Workspace.Source)+" "+mt.Destination+" "+mode)
			}
		}
		want := []string{" /workspace rw", "/.git /workspace/.git rw", "/.git/hooks /workspace/.git/hooks ro", "/.git/config /workspace/.git/config ro"}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("copy %v: workspace mounts\n%s\nwant\n%s", copyWS, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if copyWS && p.Workspace.Source == in.Workspace {
			t.Errorf("copy: mounts come from the host workspace, not the copy")
		}
		if !slices.Contains(p.Warnings, "protect: x is not in the workspace") {
			t.Errorf("warnings %v lack the protection's", p.Warnings)
		}
	}
}
