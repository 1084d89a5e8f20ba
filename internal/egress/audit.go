package egress

import (
	"net/http"
	"time"

	"github.com/bottle-dev/bottle/internal/audit"
)

// record hands a filter decision to the audit trail.
func (f *Filter) record(d *decision, verdict string) {
	if f.rec == nil {
		return
	}
	f.rec.Record(audit.FilterDecision{
		Method: d.method, Host: d.host, Port: d.port, Verdict: verdict, Reason: d.reason,
		Status: d.status, BytesUp: d.up, BytesDown: d.down, DurationMS: time.Since(d.start).Milliseconds(),
	})
}

// record hands an egress-proxy request to the audit trail: the path without its query
// (path is the escaped path, which never holds one), and whether the credential was
// injected, never its value.
func (p *EgressProxy) record(r *http.Request, route, path string, status int, in, out int64, took time.Duration, errText string, injected bool) {
	if p.rec == nil {
		return
	}
	p.rec.Record(audit.ProxyRequest{
		Route: route, Method: r.Method, Path: path, Status: status, BytesIn: in, BytesOut: out,
		DurationMS: took.Milliseconds(), Credential: injected, Error: errText,
	})
}
