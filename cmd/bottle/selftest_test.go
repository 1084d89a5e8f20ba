package main

import (
	"slices"
	"testing"

	"github.com/bottle-dev/bottle/internal/selftest"
)

// TestSelftestArgsUntouched: the agent's wrapped argv reaches the selftest command as
// written (its flags are its own, and the agent's command may have flags of any name).
func TestSelftestArgsUntouched(t *testing.T) {
	cfg := selftest.Config{Report: "/.bottle/report/selftest.json"}
	args := append([]string{"bottle"}, cfg.Args([]string{"claude", "--debug", "-p", "x"})[1:]...)
	if got := interspersed(newApp(), slices.Clone(args)); !slices.Equal(got, args) {
		t.Errorf("interspersed rewrote the self-test's argv:\n%q\nwant\n%q", got, args)
	}
}
