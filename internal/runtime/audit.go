package runtime

import (
	"os"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/hostenv"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
)

// Lifecycle events in a bottle's audit trail.
const (
	auditStart  = "start"
	auditResume = "resume"
	auditStop   = "stop"
	auditRemove = "rm"
	// auditCleanup: `bottle cleanup` removed the bottle.
	auditCleanup = "cleanup"
	// auditSelfTest is a start's self-test result (selftest.Result).
	auditSelfTest = "selftest"
)

// prepareAudit creates the bottle's audit trail before its sidecars start: its dir and,
// owned by the sidecars' user, the dir of each sidecar that writes records.
func prepareAudit(p *plan.Plan) error {
	var roles []string
	for _, c := range p.Containers {
		if c.AuditDir != "" {
			roles = append(roles, c.Role)
		}
	}
	return audit.Prepare(p.AuditDir, roles, plan.SidecarUID)
}

// recordLifecycle adds a lifecycle record to the bottle's trail, by the host user,
// sealing each sidecar's records as they are now.
func (e *Engine) recordLifecycle(id names.Identity, event string) {
	heads, err := audit.Heads(audit.Dir(e.opts.StateDir, id))
	if err != nil {
		e.log.Warn("audit record not written", "identity", id, "event", event, "error", err)
		return
	}
	e.recordHost(id, audit.KindLifecycle, audit.Lifecycle{Event: event, User: hostenv.HostUser(e.lookupEnv), Heads: heads})
}

// recordHost adds a host record of kind to the bottle's trail (the self-test's result and
// supervise's decisions too); a trail that cannot be written is warned about, never fatal.
func (e *Engine) recordHost(id names.Identity, kind string, fields any) error {
	err := audit.Open(audit.Dir(e.opts.StateDir, id)).Append(audit.SourceHost, kind, fields)
	if err != nil {
		e.log.Warn("audit record not written", "identity", id, "kind", kind, "error", err)
	}
	return err
}

// startEvent is the lifecycle event of this start: a start or a resume.
func (s *starter) startEvent() string {
	if s.prev != nil {
		return auditResume
	}
	return auditStart
}

// endEvent is the lifecycle event of an attached start whose agent exited.
func endEvent(remove bool) string {
	if remove {
		return auditRemove
	}
	return auditStop
}

// recordCleanup records that cleanup removed a bottle, in the trail it has (a start
// killed before it made its trail has none, and gets none).
func (e *Engine) recordCleanup(id names.Identity) {
	if _, err := os.Stat(audit.Dir(e.opts.StateDir, id)); err == nil {
		e.recordLifecycle(id, auditCleanup)
	}
}

// removeTrail removes the trail of a start taken back: its agent never ran.
func (e *Engine) removeTrail(id names.Identity) error { return audit.Remove(e.opts.StateDir, id) }
