package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestPipelockFilter runs a bottle whose filter is the real pipelock, from an OCI archive
// named by BOTTLE_TEST_PIPELOCK_IMAGE (no registry is reachable, so the test cannot get
// it itself; `go run ./scripts/mkimage binary ...` makes one from a pipelock binary). It
// checks that the config bottle renders starts pipelock in strict mode as an unprivileged
// user on a read-only root, and that pipelock enforces the allowlist and SNI.
func TestPipelockFilter(t *testing.T) {
	archive := os.Getenv("BOTTLE_TEST_PIPELOCK_IMAGE")
	if archive == "" {
		t.Skip("BOTTLE_TEST_PIPELOCK_IMAGE not set: it names an OCI archive of pipelock (e.g. `go run ./scripts/mkimage binary ghcr.io/luckypipewrench/pipelock:vX.Y.Z pipelock.tar ./pipelock /pipelock`)")
	}
	e := newEnv(t)
	newUpstream(t)
	imported := strings.Fields(e.must("image", "import", archive))
	if len(imported) != 1 {
		t.Fatalf("import %s: images %q, want exactly one", archive, imported)
	}
	ref := imported[0]
	manifest := fmt.Sprintf(`[agents.piped]
bottle = "b"
image = %q
command = ["/bin/sleep", "600"]

[bottles.b]
runtime = "runsc-runc"
filter = "pipelock"
allowlist = ["api.allowed.test", %q]
`, testImage, internalName)
	if err := os.WriteFile(e.manifest, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"start", "--detach", "--pipelock-image", ref}
	for _, h := range []string{"api.allowed.test", "api.denied.test"} {
		args = append(args, "--add-host", h+":"+upstreamAddr.Addr().String())
	}
	args = append(args, internalTarget(t)...)
	if out, errOut, code := e.bottle(nil, append(args, "piped")...); code != 0 {
		t.Fatalf("start with pipelock %s: exit %d: %s %s", ref, code, out, errOut)
	}
	id := e.identityOf("piped")
	probe := func(args ...string) string { t.Helper(); return e.probe(id, args...) }
	expect := func(got, prefix, what string) { t.Helper(); expectPrefix(t, got, prefix, what) }

	expect(probe("get", "http://filter:8888", "http://api.allowed.test/hello"), "STATUS 200 UPSTREAM-ALLOWED host=api.allowed.test", "allowlisted host via pipelock")
	expect(probe("get", "http://filter:8888", "http://api.denied.test/hello"), "STATUS 403", "non-allowlisted host via pipelock")
	expect(probe("get", "http://filter:8888", "http://"+upstreamAddr.Addr().String()+"/hello"), "STATUS 403", "IP literal via pipelock")
	expect(probe("connect", "filter:8888", "api.allowed.test:443", "api.allowed.test"), "TLSOK", "CONNECT with matching SNI (control)")
	expect(probe("connect", "filter:8888", "api.denied.test:443", "api.denied.test"), "REFUSED 403", "CONNECT to a non-allowlisted host")
	expect(probe("connect", "filter:8888", "api.allowed.test:443", "evil.example"), "TLSFAIL", "CONNECT whose SNI differs from its host")
	expect(probe("connect", "filter:8888", internalName+":443", internalName), "REFUSED 403", "CONNECT to an allowlisted name inside 198.18.0.0/15")

	// pipelock logs its decisions as JSON lines, in strict mode.
	logs := e.must("logs", id, "--role", "filter")
	for _, want := range []string{`"mode":"strict"`, `"reason":"domain not in allowlist: api.denied.test"`, `"event":"sni_mismatch"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("pipelock log lacks %s:\n%s", want, logs)
		}
	}
	e.must("rm", "--force", id)
	e.assertNothingLeft(id)

	// An empty allowlist: pipelock's strict mode refuses to start without an entry, so
	// bottle renders a never-resolving stand-in, and nothing is reachable.
	if err := os.WriteFile(e.manifest, []byte(strings.Replace(manifest, fmt.Sprintf("allowlist = [\"api.allowed.test\", %q]", internalName), "allowlist = []", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := e.bottle(nil, append(args, "piped")...); code != 0 {
		t.Fatalf("start with pipelock and an empty allowlist: exit %d: %s %s", code, out, errOut)
	}
	id = e.identityOf("piped")
	expect(probe("get", "http://filter:8888", "http://api.allowed.test/hello"), "STATUS 403", "formerly allowlisted host, empty allowlist")
	expect(probe("connect", "filter:8888", "api.allowed.test:443", "api.allowed.test"), "REFUSED 403", "CONNECT, empty allowlist")
	e.must("rm", "--force", id)
	e.assertNothingLeft(id)
}

// TestPipelockSupervise: with pipelock, an approved allowlist change restarts pipelock on
// its address with the host allowed, without restarting the agent; a grant --for is
// refused (its end would need another restart).
func TestPipelockSupervise(t *testing.T) {
	archive := os.Getenv("BOTTLE_TEST_PIPELOCK_IMAGE")
	if archive == "" {
		t.Skip("BOTTLE_TEST_PIPELOCK_IMAGE not set: it names an OCI archive of pipelock (see TestPipelockFilter)")
	}
	e := newEnv(t)
	newUpstream(t)
	imported := strings.Fields(e.must("image", "import", archive))
	if len(imported) != 1 {
		t.Fatalf("import %s: images %q, want exactly one", archive, imported)
	}
	manifest := fmt.Sprintf(`[agents.piped]
bottle = "b"
image = %q
command = ["/bin/sleep", "600"]

[bottles.b]
runtime = "runsc-runc"
filter = "pipelock"
allowlist = ["api.allowed.test"]
supervise = true
supervise_timeout = "60s"
`, testImage)
	if err := os.WriteFile(e.manifest, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"start", "--detach", "--pipelock-image", imported[0]}
	for _, h := range []string{"api.allowed.test", "api.denied.test"} {
		args = append(args, "--add-host", h+":"+upstreamAddr.Addr().String())
	}
	if out, errOut, code := e.bottle(nil, append(args, "piped")...); code != 0 {
		t.Fatalf("start: exit %d: %s %s", code, out, errOut)
	}
	id := e.identityOf("piped")
	reach := func() string {
		t.Helper()
		return e.probe(id, "get", "http://filter:8888", "http://api.denied.test/hello")
	}
	expectPrefix(t, reach(), "STATUS 403", "before the proposal")
	agentStarted := e.must("exec", id, "--", "/bin/sh", "-c", "cat /proc/1/stat | cut -d' ' -f22")
	answer := inAgent(e, id, "/usr/local/bin/probe", "mcp", "http://supervise:8080/mcp", "propose_allowlist_change", `{"justification":"fixture","add":["api.denied.test"]}`)
	waitProposal(e, id, "#1 allowlist pending", answer)
	if _, errOut, code := e.bottle(nil, "approve", id, "1", "--for", "5s"); code == 0 || !strings.Contains(errOut, "a grant --for would need bottle to restart it") {
		t.Errorf("--for with pipelock: exit %d: %s", code, errOut)
	}
	expectPrefix(t, reach(), "STATUS 403", "after the refused --for")
	e.must("approve", id, "1")
	if got := answer(); !strings.Contains(got, `"decision":"approved"`) {
		t.Errorf("the agent's answer: %s", got)
	}
	expectPrefix(t, reach(), "STATUS 200 UPSTREAM-ALLOWED host=api.denied.test", "after the approval")
	expectPrefix(t, e.probe(id, "get", "http://filter:8888", "http://api.allowed.test/hello"), "STATUS 200", "the configured host after the approval")
	if now := e.must("exec", id, "--", "/bin/sh", "-c", "cat /proc/1/stat | cut -d' ' -f22"); now != agentStarted {
		t.Errorf("the agent was restarted: start time %s, before %s", now, agentStarted)
	}
	e.must("rm", "--force", id)
}
