package plan

import (
	"path"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// protectMounts are the agent's mounts that protect the workspace (after /workspace, in
// the layout's order: .git itself first, a mount point so it cannot be renamed or
// removed, then the read-only paths beneath it). The host checked that no link is on
// any of these paths (protect.Plan).
func (b *builder) protectMounts() []specs.Mount {
	var out []specs.Mount
	for _, m := range b.in.Protect.Mounts {
		out = append(out, bind(path.Join(b.p.Workspace.Source, m.Path), path.Join("/workspace", m.Path), m.ReadOnly))
	}
	b.p.Warnings = append(b.p.Warnings, b.in.Protect.Warnings...)
	return out
}
