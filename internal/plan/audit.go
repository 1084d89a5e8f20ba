package plan

import (
	"github.com/bottle-dev/bottle/internal/audit"
)

// recordingKind is a sidecar kind whose server writes audit records: bottle's own
// sidecars (pipelock keeps its own log instead).
type recordingKind interface{ records() }

// withAuditTrail gives a recording sidecar its part of the bottle's audit trail: the
// host dir its records go to (the runtime creates it owned by SidecarUID), the writable
// mount of that dir alone, and the argument naming its file. The agent never gets a
// mount of the trail.
func (b *builder) withAuditTrail(c *Container) {
	c.AuditDir = audit.SidecarDir(b.p.AuditDir, c.Role)
	c.Spec.Mounts = append(c.Spec.Mounts, bind(c.AuditDir, audit.SidecarMount, false))
	c.Spec.Process.Args = append(c.Spec.Process.Args, "--audit", audit.SidecarFile)
}
