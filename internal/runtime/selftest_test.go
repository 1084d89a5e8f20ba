package runtime

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/selftest"
)

// TestSelfTestHostSide: the host side of the self-test passes a passing report once it
// appears, and fails naming the check for a failed report, a firewall chain not in
// force, a canary that saw a connection, and a report that is not one; each result is
// one JSON line in the log.
func TestSelfTestHostSide(t *testing.T) {
	id := names.Identity("st-a1b2c3")
	passed := selftest.Result{Passed: true, Checks: []selftest.Check{{Name: selftest.CheckRoute, OK: true}}}
	failed := selftest.Result{Failed: selftest.CheckRoute, Checks: []selftest.Check{{Name: selftest.CheckRoute, Detail: "default route"}}}
	for _, tc := range []struct {
		name     string
		report   *selftest.Result // nil: write raw instead
		raw      string
		firewall error
		hits     int64
		want     string // "" passes; else a substring of the error
	}{
		{name: "passes", report: &passed},
		{name: "agent side failed", report: &failed, want: "check route: default route"},
		{name: "firewall gone", report: &passed, firewall: errors.New("chain missing"), want: "check firewall: chain missing"},
		{name: "canary hit", report: &passed, hits: 1, want: "check canary"},
		{name: "not a report", raw: `{"passed":true}`, want: "inconsistent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logBuf bytes.Buffer
			e := newEngine(Options{StateDir: t.TempDir(), Log: slog.New(slog.NewTextHandler(&logBuf, nil))}.withDefaults(), nil, nil)
			st := &selfTest{report: filepath.Join(t.TempDir(), "selftest.json"), firewall: func() error { return tc.firewall }}
			if err := selftest.ResetReport(st.report); err != nil {
				t.Fatal(err)
			}
			st.hits.Store(tc.hits)
			err := st.beforeStart(e, id)
			if err == nil {
				// The report appears a little after the agent's task started.
				go func() {
					time.Sleep(20 * time.Millisecond)
					if tc.report != nil {
						_ = selftest.WriteReport(st.report, *tc.report)
					} else {
						_ = os.WriteFile(st.report, []byte(tc.raw), 0o644)
					}
				}()
				err = st.await(context.Background(), e, id)
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("failed: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err %v, want one saying %q", err, tc.want)
			}
			if lines := strings.Count(logBuf.String(), "\n"); lines != 1 || !strings.Contains(logBuf.String(), "msg=\"self-test ") {
				t.Errorf("%d log lines about the self-test, want 1:\n%s", lines, logBuf.String())
			}
		})
	}
}
