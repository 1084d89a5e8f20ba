package e2e

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

// selfTestFailed finds the identity named by a failed self-test's error.
var selfTestFailed = regexp.MustCompile(`bottle ([a-z][a-z0-9-]*-[0-9a-f]{6}) failed its self-test: check (\w+)`)

// TestSelfTest: every start proves from inside the agent's sandbox that the bottle is
// sealed before the agent's command runs. It passes on a sound bottle (attached and
// detached); each fault hook breaks the seal before the agent's task starts, and the
// start then fails naming the check, the command never runs, and nothing is left;
// --no-self-test skips it, saying so.
func TestSelfTest(t *testing.T) {
	e := newEnv(t)
	e.writeManifest("st")
	const ran = "agent-command-ran-$((40+2))"
	script := []string{"--", "/bin/sh", "-c", "echo " + ran}

	timed := func(extraEnv []string, args ...string) (string, string, int, time.Duration) {
		t0 := time.Now()
		out, errOut, code := e.bottle(extraEnv, args...)
		return out, errOut, code, time.Since(t0)
	}

	t.Run("passes", func(t *testing.T) {
		out, errOut, code, took := timed(nil, append([]string{"start", "--rm", "st"}, script...)...)
		if code != 0 || !strings.Contains(out, "agent-command-ran-42") {
			t.Fatalf("start: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		if !strings.Contains(errOut, "self-test passed") || !strings.Contains(errOut, `"passed":true`) {
			t.Errorf("no self-test result in the log:\n%s", errOut)
		}
		for _, check := range []string{"route", "resolver", "gateway", "filter", "firewall", "canary"} {
			if !strings.Contains(errOut, `"name":"`+check+`","ok":true`) {
				t.Errorf("check %s did not pass in the log:\n%s", check, errOut)
			}
		}
		// Cost: alternate warm starts with and without the self-test; the fastest of each.
		best := map[bool]time.Duration{}
		for range 3 {
			for _, with := range []bool{true, false} {
				args := []string{"start", "--rm", "st"}
				if !with {
					args = append(args, "--no-self-test")
				}
				_, errOut, code, took := timed(nil, append(args, script...)...)
				if code != 0 {
					t.Fatalf("start (self-test %v): exit %d: %s", with, code, errOut)
				}
				if b, ok := best[with]; !ok || took < b {
					best[with] = took
				}
			}
		}
		t.Logf("attached start --rm of a one-line command, fastest of 3: %v with the self-test, %v without (first start %v)",
			best[true].Round(time.Millisecond), best[false].Round(time.Millisecond), took.Round(time.Millisecond))
	})

	t.Run("detached", func(t *testing.T) {
		out, errOut, code := e.bottle(nil, "start", "-d", "st", "--", "/bin/sh", "-c", "sleep 600")
		if code != 0 || !strings.Contains(errOut, "self-test passed") {
			t.Fatalf("start -d: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		id := e.identityOf("st")
		e.must("rm", "-f", id)
		e.assertNothingLeft(id)
	})

	t.Run("no-self-test", func(t *testing.T) {
		out, errOut, code := e.bottle(nil, append([]string{"start", "--rm", "--no-self-test", "st"}, script...)...)
		if code != 0 || !strings.Contains(out, "agent-command-ran-42") {
			t.Fatalf("start --no-self-test: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		if !strings.Contains(errOut, "WITHOUT proving it is sealed") || strings.Contains(errOut, "self-test passed") {
			t.Errorf("--no-self-test did not say what it skips, or ran the self-test:\n%s", errOut)
		}
	})

	for _, tc := range []struct{ fault, check string }{
		{"remove-firewall", "firewall"},
		{"default-route", "route"},
	} {
		for _, mode := range []string{"attached", "detached"} {
			t.Run(tc.fault+"/"+mode, func(t *testing.T) {
				args := []string{"start", "--rm", "st"}
				if mode == "detached" {
					args = []string{"start", "-d", "st"}
				}
				out, errOut, code := e.bottle([]string{"BOTTLE_TEST_FAULT=" + tc.fault}, append(args, script...)...)
				if code == 0 {
					t.Fatalf("start with fault %s succeeded\nstdout: %s\nstderr: %s", tc.fault, out, errOut)
				}
				if strings.Contains(out, "agent-command-ran-42") {
					t.Errorf("the agent's command ran despite fault %s:\n%s", tc.fault, out)
				}
				m := selfTestFailed.FindStringSubmatch(errOut)
				if m == nil || m[2] != tc.check {
					t.Fatalf("fault %s: want the start to fail naming check %s, got exit %d:\n%s", tc.fault, tc.check, code, errOut)
				}
				if list := e.ps(); len(list) != 0 {
					t.Errorf("bottles left after a failed self-test: %+v", list)
				}
				failed := e.t.Failed()
				e.assertNothingLeft(m[1])
				if !failed && e.t.Failed() {
					t.Logf("what the start printed:\n%s", errOut)
				}
				// The failed self-test stays in the audit trail until pruned.
				trail := e.must("audit", m[1], "--json")
				if !strings.Contains(trail, `"kind":"selftest"`) || !strings.Contains(trail, `"failed":"`+tc.check+`"`) {
					t.Errorf("the audit trail of %s has no failed self-test (check %s):\n%s", m[1], tc.check, trail)
				}
				e.must("audit", "prune", m[1])
			})
		}
	}
}
