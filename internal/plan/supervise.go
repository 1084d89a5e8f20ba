package plan

import "github.com/bottle-dev/bottle/internal/names"

// supervise is planned from bottle's own image; its configuration is added by the
// feature that implements it.
type supervise struct{}

func (supervise) role() string           { return names.RoleSupervise }
func (supervise) wanted(b *builder) bool { return b.bottle.Supervise }
func (supervise) container(b *builder) (*Container, error) {
	c := b.newContainer(names.RoleSupervise, b.in.SidecarImage, false)
	spec, err := b.sidecarSpec(names.RoleSupervise, []string{"/bottle", "sidecar", names.RoleSupervise}, nil, nil)
	c.Spec = spec
	c.Ready = b.readyFiles(names.RoleSupervise)
	return c, err
}
