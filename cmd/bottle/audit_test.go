package main

import (
	"testing"
	"time"
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
