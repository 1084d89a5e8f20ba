package runtime

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/state"
)

// TestWorkspaceFindingsCapped: a workspace the agent filled with hooks gives at most
// maxLoggedFindings warnings and maxAuditedFindings trail lines, each with how many
// more there are.
func TestWorkspaceFindingsCapped(t *testing.T) {
	st := newStartTest(t)
	var logs bytes.Buffer
	st.e.log = slog.New(slog.NewTextHandler(&logs, nil))
	ws := t.TempDir()
	const hooks = 500
	for i := range hooks {
		p := filepath.Join(ws, ".git/hooks", fmt.Sprintf("h%03d", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(ws, ".git/HEAD"), []byte("ref: refs/heads/main\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	id := "a-0a0b0c"
	st.e.checkWorkspace(&state.Meta{Identity: "a-0a0b0c", Workspace: ws}, protectRecord{Scanned: true}, "stop")

	if n := strings.Count(logs.String(), ": hook; it can run code"); n != maxLoggedFindings {
		t.Errorf("%d findings logged, want %d", n, maxLoggedFindings)
	}
	if want := fmt.Sprintf("%d more git hooks or config", hooks-maxLoggedFindings); !strings.Contains(logs.String(), want) {
		t.Errorf("the log does not say %q", want)
	}
	var rec bytes.Buffer
	if _, err := audit.Read(context.Background(), audit.Dir(st.host.stateDir, "a-0a0b0c"), audit.Options{}, func(r audit.Record) error {
		return audit.WriteJSON(&rec, r)
	}); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(rec.String(), ": hook"); n != maxAuditedFindings || !strings.Contains(rec.String(), fmt.Sprintf(`"more":%d`, hooks-maxAuditedFindings)) {
		t.Errorf("the trail of %s holds %d findings, want %d and the count of the rest:\n%.500s", id, n, maxAuditedFindings, rec.String())
	}
}
