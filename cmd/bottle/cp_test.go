package main

import (
	"strings"
	"testing"
)

// TestCpRefusesBadArguments: exactly one side is ID:PATH, and PATH stays in /workspace;
// each refusal exits 2 before anything is read.
func TestCpRefusesBadArguments(t *testing.T) {
	for _, args := range [][]string{
		{"cp", "a", "b"},
		{"cp", "claude-abc123:x", "claude-abc123:y"},
		{"cp", "claude-abc123:../x", "dest"},
		{"cp", "claude-abc123:/etc/passwd", "dest"},
		{"cp", "claude-abc123:/workspace/../etc", "dest"},
		{"cp", "src", "claude-abc123:a/../../x"},
		{"cp", "claude-abc123:x"},
	} {
		_, errOut, code := run(t, t.TempDir(), nil, args...)
		if code != 2 || !strings.HasPrefix(errOut, "bottle: ") {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 with a one-line error", args, code, errOut)
		}
	}
}

func TestBottlePath(t *testing.T) {
	for arg, want := range map[string]struct {
		id, path string
		ok       bool
	}{
		"claude-abc123:/workspace/x": {"claude-abc123", "/workspace/x", true},
		"claude-abc123:":             {"claude-abc123", "", true},
		"./file:with-colon":          {"", "", false},
		"/tmp/x":                     {"", "", false},
		"Claude-ABC123:x":            {"", "", false},
	} {
		id, path, ok := bottlePath(arg)
		if string(id) != want.id || path != want.path || ok != want.ok {
			t.Errorf("bottlePath(%q) = %q, %q, %v; want %+v", arg, id, path, ok, want)
		}
	}
}
