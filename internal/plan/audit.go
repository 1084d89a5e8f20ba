package plan

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/bottle-dev/bottle/internal/audit"
)

// auditTrail gives one of bottle's own sidecars its part of the bottle's audit trail:
// the host dir its records go to (the runtime creates it owned by SidecarUID), the
// writable mount of that dir alone, and the sidecar's argument naming its file. The
// agent never gets a mount of the trail.
func (b *builder) auditTrail(c *Container) (specs.Mount, []string) {
	c.AuditDir = audit.SidecarDir(b.p.AuditDir, c.Role)
	return bind(c.AuditDir, audit.SidecarMount, false), []string{"--audit", audit.SidecarFile}
}
