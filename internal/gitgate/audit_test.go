package gitgate

import (
	"fmt"
	"strings"
	"testing"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/testutil"
)

// TestGateRecordsPushDecisions: an allowed and a refused push each leave one record
// with the ref, its old and new ids, the verdict and the reason; never the token.
func TestGateRecordsPushDecisions(t *testing.T) {
	f := newHTTPSFixture(t, nil)
	rec := &testutil.Recorder{}
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
	events := rec.Wait(t, 2)
	ok, refused := events[0].(audit.Push), events[1].(audit.Push)
	if ok.Verdict != "allow" || ok.Remote != "origin" || len(ok.Refs) != 1 || ok.Refs[0].Ref != "refs/heads/bottle/audit" || ok.Refs[0].New != c || strings.Trim(ok.Refs[0].Old, "0") != "" {
		t.Errorf("allowed push recorded as %+v", ok)
	}
	if refused.Verdict != "deny" || len(refused.Refs) != 1 || refused.Refs[0].Ref != "refs/heads/main" || !strings.Contains(refused.Reason, "refs/heads/main: ") {
		t.Errorf("refused push recorded as %+v", refused)
	}
	for _, s := range f.secrets {
		if strings.Contains(fmt.Sprintf("%+v", events), s) {
			t.Error("a record holds the credential")
		}
	}
}
