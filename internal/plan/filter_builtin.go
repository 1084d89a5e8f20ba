package plan

import (
	"fmt"
	"path"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/supervise"
)

// FilterBuiltin names bottle's own allowlist filter (internal/egress).
const FilterBuiltin = "builtin"

type builtinFilter struct{}

func (builtinFilter) name() string           { return FilterBuiltin }
func (builtinFilter) role() string           { return names.RoleFilter }
func (builtinFilter) wanted(b *builder) bool { return b.p.Filter == FilterBuiltin }
func (builtinFilter) records()               {}
func (builtinFilter) container(b *builder) (*Container, error) {
	c := b.newContainer(names.RoleFilter, b.in.SidecarImage, true)
	cfg := egress.FilterConfig{
		Listen:    fmt.Sprintf("%s:%d", b.addr(names.RoleFilter, names.NetInternal), FilterPort),
		Allowlist: b.p.Allowlist,
		Internal:  egress.DefaultInternal,
		Ports:     []uint16{443, 80},
	}
	var mounts []specs.Mount
	if b.bottle.Supervise {
		// Approved allowlist changes: a directory, so the host's atomic rewrites of the
		// file (a rename) are seen inside the sandbox.
		cfg.ChangesFile = path.Join(changesDir, supervise.FilterChangesFile)
		mounts = append(mounts, b.changesMount())
	}
	mount, err := b.stageJSON("filter/filter.json", "/etc/bottle/filter.json", cfg)
	if err != nil {
		return nil, err
	}
	c.Spec, err = b.sidecarSpec(names.RoleFilter, []string{"/bottle", "sidecar", "filter", "--config", "/etc/bottle/filter.json"}, nil, append([]specs.Mount{mount}, mounts...))
	c.Ready = b.readyFiles(names.RoleFilter)
	return c, err
}
