package gitgate

import (
	"log/slog"

	"github.com/bottle-dev/bottle/internal/audit"
)

// recording is the Gate's part that hands its decisions to the audit trail.
type recording struct{ rec audit.Recorder }

// record hands a push decision to the audit trail: the refs with their old and new
// ids, allow or deny, and why (a refused ref's reason, or the error).
func (g *recording) record(remote, verdict string, req *pushRequest, extra []slog.Attr) {
	if g.rec == nil {
		return
	}
	p := audit.Push{Remote: remote, Verdict: "allow", Refs: []audit.RefUpdate{}}
	if verdict != "allowed" {
		p.Verdict = "deny"
	}
	if req != nil {
		for _, u := range req.updates {
			p.Refs = append(p.Refs, audit.RefUpdate{Ref: u.Ref, Old: u.Old, New: u.New})
			if p.Reason == "" && u.Verdict == "refused" && u.Reason != reasonOtherRefused {
				p.Reason = u.Ref + ": " + u.Reason
			}
		}
	}
	for _, a := range extra {
		if a.Key == "error" {
			p.Reason = a.Value.String()
		}
	}
	g.rec.Record(p)
}
