package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/names"
)

func TestAuditTimeFlags(t *testing.T) {
	for in, want := range map[string]time.Duration{"30d": 30 * 24 * time.Hour, "0d": 0, "90m": 90 * time.Minute, "1h30m": 90 * time.Minute} {
		if got, err := parseAge(in); err != nil || got != want {
			t.Errorf("parseAge(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "d", "-1d", "-5m", "xd", "1y"} {
		if _, err := parseAge(bad); err == nil {
			t.Errorf("parseAge(%q) accepted", bad)
		}
	}
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	if got, err := parseSince("1h", now); err != nil || !got.Equal(now.Add(-time.Hour)) {
		t.Errorf("--since 1h: %v %v", got, err)
	}
	if got, err := parseSince("2026-11-29T10:00:00Z", now); err != nil || !got.Equal(time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)) {
		t.Errorf("--since RFC 3339: %v %v", got, err)
	}
	if _, err := parseSince("yesterday", now); err == nil {
		t.Error("--since yesterday accepted")
	}
}

// TestAuditPrune: prune removes the trails of removed bottles only (--all), an existing
// bottle's trail stays until rm, --older-than keeps fresh trails, and the flags of
// prune go with prune.
func TestAuditPrune(t *testing.T) {
	state := t.TempDir()
	live, gone := names.Identity("claude-aaaaaa"), names.Identity("claude-bbbbbb")
	for _, id := range []names.Identity{live, gone} {
		if err := audit.Open(audit.Dir(state, id)).Append(audit.SourceHost, audit.KindLifecycle, audit.Lifecycle{Event: "start", User: "u"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(state, "bottles", live.String()), 0o700); err != nil {
		t.Fatal(err)
	}
	bottle := func(args ...string) (string, string, int) {
		return run(t, t.TempDir(), nil, append([]string{"--state-dir", state, "audit"}, args...)...)
	}
	if _, errOut, code := bottle("prune", live.String()); code == 0 || !strings.Contains(errOut, "still exists") {
		t.Errorf("prune of an existing bottle's trail: exit %d %s", code, errOut)
	}
	if _, errOut, code := bottle(live.String(), "--all"); code != 2 {
		t.Errorf("--all without prune: exit %d %s", code, errOut)
	}
	if out, _, code := bottle("prune", "--all", "--older-than", "1d"); code != 0 || out != "" {
		t.Errorf("prune of fresh trails: exit %d %q", code, out)
	}
	if out, errOut, code := bottle("prune", "--all"); code != 0 || out != "pruned the audit trail of "+gone.String()+"\n" {
		t.Errorf("prune --all: exit %d %q %s", code, out, errOut)
	}
	ids, err := audit.Trails(state)
	if err != nil || len(ids) != 1 || ids[0] != live {
		t.Errorf("trails left: %v %v", ids, err)
	}
	if out, _, code := bottle(live.String()); code != 0 || !strings.Contains(out, "host         start by u") {
		t.Errorf("audit of the kept trail: exit %d %q", code, out)
	}
}
