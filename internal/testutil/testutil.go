// Package testutil holds helpers shared by end-to-end tests.
package testutil

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// InCI reports whether the tests run under CI, where a missing prerequisite is a failure.
func InCI() bool { return os.Getenv("CI") == "true" }

// Missing fails the test under CI and skips it otherwise; the message says what is missing.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("prerequisite missing under CI: "+format, args...)
	}
	t.Skipf("prerequisite missing (run as root with the test harness, `sudo make test`): "+format, args...)
}

// RequireRoot skips (or fails under CI) unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "root privileges")
	}
}

// RequireBinary returns the path of name on PATH, or skips/fails.
func RequireBinary(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, "binary %q not on PATH", name)
	}
	return p
}

// ContainerdAddress returns the socket of the test containerd started by the harness
// (env BOTTLE_TEST_CONTAINERD_ADDRESS), or skips/fails.
func ContainerdAddress(t testing.TB) string {
	t.Helper()
	a := os.Getenv("BOTTLE_TEST_CONTAINERD_ADDRESS")
	if a == "" {
		Missing(t, "BOTTLE_TEST_CONTAINERD_ADDRESS (the harness scripts/test.sh starts a private containerd and sets it)")
	}
	if _, err := os.Stat(a); err != nil {
		Missing(t, "containerd socket %s: %v", a, err)
	}
	return a
}

// SyncBuffer is a goroutine-safe buffer, e.g. a log sink written by concurrent handlers.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// IP runs `ip ARGS...` and fails the test when it fails.
func IP(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v: %s", args, err, out)
	}
}

// WaitLinkLocal waits until dev has a usable (not tentative) IPv6 link-local address.
func WaitLinkLocal(t testing.TB, dev string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		out, _ := exec.Command("ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link").Output()
		if f := strings.Fields(string(out)); len(f) > 3 && !strings.Contains(string(out), "tentative") {
			return strings.Split(f[3], "/")[0]
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no link-local address on %s after enabling IPv6", dev)
	return ""
}
