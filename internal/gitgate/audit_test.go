package gitgate

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/bottle-dev/bottle/internal/audit"
)

type recorder struct {
	mu     sync.Mutex
	events []audit.Event
}

func (r *recorder) Record(e audit.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

// TestGateRecordsPushDecisions: an allowed and a refused push each leave one record
// with the ref, its old and new ids, the verdict and the reason; never the token.
func TestGateRecordsPushDecisions(t *testing.T) {
	f := newHTTPSFixture(t, nil)
	rec := &recorder{}
	cfg := f.cfg
	cfg.Recorder = rec
	f.gateURL, f.logs = f.startNew(cfg)
	work := f.clone(t)
	h := f.h
	h.run(work, "checkout", "-q", "-b", "feature", "origin/main")
	c := h.commit(work, "audit.txt", "audit\n")
	h.run(work, "push", "origin", "HEAD:refs/heads/bottle/audit")
	if out, err := h.try(work, "push", "origin", "HEAD:refs/heads/main"); err == nil {
		t.Fatalf("push to main passed:\n%s", out)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.events) != 2 {
		t.Fatalf("%d records, want 2: %+v", len(rec.events), rec.events)
	}
	ok, refused := rec.events[0].(audit.Push), rec.events[1].(audit.Push)
	if ok.Verdict != "allow" || ok.Remote != "origin" || len(ok.Refs) != 1 || ok.Refs[0].Ref != "refs/heads/bottle/audit" || ok.Refs[0].New != c || strings.Trim(ok.Refs[0].Old, "0") != "" {
		t.Errorf("allowed push recorded as %+v", ok)
	}
	if refused.Verdict != "deny" || len(refused.Refs) != 1 || refused.Refs[0].Ref != "refs/heads/main" || !strings.Contains(refused.Reason, "refs/heads/main: ") {
		t.Errorf("refused push recorded as %+v", refused)
	}
	for _, s := range f.secrets {
		if strings.Contains(fmt.Sprintf("%+v", rec.events), s) {
			t.Error("a record holds the credential")
		}
	}
}
