package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStartPropagatesExitStatusAndStdout(t *testing.T) {
	e := newEnv(t)
	e.writeManifest("exit")
	out, errOut, code := e.bottle(nil, "start", "exit", "--", "/bin/sh", "-c", "echo hello-from-the-agent; echo to-stderr >&2; exit 7")
	if code != 7 {
		t.Fatalf("exit status %d, want 7\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if !strings.Contains(out, "hello-from-the-agent") || !strings.Contains(errOut, "to-stderr") {
		t.Fatalf("agent output missing\nstdout: %s\nstderr: %s", out, errOut)
	}
	id := e.identityOf("exit")
	e.must("rm", id)
	e.assertNothingLeft(id)

	// With --rm the bottle is gone when the agent exits, and its status still comes through.
	out, errOut, code = e.bottle(nil, "start", "--rm", "exit", "--", "/bin/sh", "-c", "echo $BOTTLE_IDENTITY; exit 3")
	if code != 3 {
		t.Fatalf("--rm: exit %d, want 3: %s %s", code, out, errOut)
	}
	if ps := e.ps(); len(ps) != 0 {
		t.Errorf("--rm left bottles: %+v", ps)
	}
	e.assertNothingLeft(strings.TrimSpace(out))
}

// agentProbe is a shell script run in the agent: it prints its interfaces and routes and
// tries TCP to each target (a banner means the connection went through).
const agentProbe = `
ip -o link | awk '{print "LINK " $2}'
ip route | sed 's/^/ROUTE /'
a=$(ip -o -4 addr show eth0 | awk '{print $4}' | cut -d/ -f1)
base=${a%.*}; third=${base##*.}
gw="${base%.*}.$((third+1)).1"
echo "ADDR $a GW $gw"
for target in "hostside $HOSTSIDE" "gateway $gw" "egress-filter ${base%.*}.$((third+1)).2"; do
  set -- $target
  if echo | nc -w 2 "$2" "$PORT" 2>/dev/null | grep -q BANNER; then echo "REACHED $1"; else echo "BLOCKED $1"; fi
done
if printf 'GET /healthz HTTP/1.0\r\n\r\n' | nc -w 2 "$base.2" 8888 2>/dev/null | grep -q '200 OK'; then echo "REACHED own-filter"; else echo "BLOCKED own-filter"; fi
`

func TestAgentNetworkIsolation(t *testing.T) {
	e := newEnv(t)
	e.writeManifest("iso")
	hostSide := netip.MustParsePrefix("10.215.77.1/24")
	testBridge(t, "bte2e-iso", hostSide)
	// One listener on every host address: the test bridge's and the bottle's gateway.
	port := hostListener(t, fmt.Sprintf("0.0.0.0:%d", 0), "BANNER")
	script := fmt.Sprintf("HOSTSIDE=%s PORT=%d; %s", hostSide.Addr(), port, agentProbe)
	out, errOut, code := e.bottle(nil, "start", "iso", "--", "/bin/sh", "-c", script)
	if code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	t.Logf("agent saw:\n%s", out)
	var links []string
	for _, l := range strings.Split(out, "\n") {
		if s, ok := strings.CutPrefix(l, "LINK "); ok {
			links = append(links, strings.TrimSuffix(strings.SplitN(s, "@", 2)[0], ":"))
		}
		if strings.HasPrefix(l, "ROUTE default") {
			t.Errorf("agent has a default route: %s", l)
		}
	}
	if strings.Join(links, ",") != "lo,eth0" {
		t.Errorf("agent interfaces %v, want lo and eth0 only", links)
	}
	// The control: the agent's own filter answers, so the probe can see reachability.
	if !strings.Contains(out, "REACHED own-filter") {
		t.Fatalf("agent cannot reach its own filter; the probe proves nothing:\n%s", out)
	}
	for _, target := range []string{"hostside", "gateway", "egress-filter"} {
		if !strings.Contains(out, "BLOCKED "+target) {
			t.Errorf("agent reached %s:\n%s", target, out)
		}
	}
	e.must("rm", e.identityOf("iso"))
}

func TestConcurrentBottlesAreSeparated(t *testing.T) {
	e := newEnv(t)
	e.writeManifest("two-a", "two-b")
	errs := make(chan string, 2)
	for _, a := range []string{"two-a", "two-b"} {
		go func() {
			out, errOut, code := e.bottle(nil, "start", "--detach", a, "--", "/bin/sleep", "300")
			if code != 0 {
				errs <- fmt.Sprintf("%s: exit %d: %s %s", a, code, out, errOut)
				return
			}
			errs <- ""
		}()
	}
	for range 2 {
		if msg := <-errs; msg != "" {
			t.Fatal(msg)
		}
	}
	idA, idB := e.identityOf("two-a"), e.identityOf("two-b")
	addr := func(id string) netip.Addr {
		out := e.must("exec", id, "--", "/bin/sh", "-c", "ip -o -4 addr show eth0 | awk '{print $4}' | cut -d/ -f1")
		a, err := netip.ParseAddr(strings.TrimSpace(out))
		if err != nil {
			t.Fatalf("address of %s: %q", id, out)
		}
		return a
	}
	a, b := addr(idA), addr(idB)
	if netip.PrefixFrom(a, 24).Masked() == netip.PrefixFrom(b, 24).Masked() {
		t.Fatalf("both bottles on subnet %s", netip.PrefixFrom(a, 24).Masked())
	}
	filterOf := func(x netip.Addr) string { b4 := x.As4(); b4[3] = 2; return netip.AddrFrom4(b4).String() }
	probe := func(id, target string) string {
		script := fmt.Sprintf(`if printf 'GET /healthz HTTP/1.0\r\n\r\n' | nc -w 2 %s 8888 2>/dev/null | grep -q '200 OK'; then echo REACHED; else echo BLOCKED; fi`, target)
		return strings.TrimSpace(e.must("exec", id, "--", "/bin/sh", "-c", script))
	}
	if got := probe(idA, filterOf(a)); got != "REACHED" {
		t.Fatalf("A cannot reach its own filter (%s): the probe proves nothing", got)
	}
	if got := probe(idA, filterOf(b)); got != "BLOCKED" {
		t.Errorf("A reached B's filter at %s", filterOf(b))
	}
	if got := probe(idB, filterOf(a)); got != "BLOCKED" {
		t.Errorf("B reached A's filter at %s", filterOf(a))
	}
	for _, id := range []string{idA, idB} {
		e.must("stop", id)
		e.must("rm", id)
	}
	e.assertNothingLeft(idA, idB)
}

func TestStopRmAndCleanupLeaveNothing(t *testing.T) {
	e := newEnv(t)
	e.writeManifest("gone", "swept")
	e.must("start", "--detach", "gone", "--", "/bin/sleep", "300")
	id := e.identityOf("gone")
	e.must("stop", id)
	if p := e.ps(); len(p) != 1 || p[0].Phase != "stopped" {
		t.Fatalf("after stop: %+v", p)
	}
	e.must("rm", id)
	e.assertNothingLeft(id)

	e.must("start", "--detach", "swept", "--", "/bin/sleep", "300")
	id2 := e.identityOf("swept")
	if out := e.must("cleanup"); !strings.Contains(out, "nothing to clean up") {
		t.Errorf("cleanup removed something of a healthy detached bottle: %s", out)
	}
	e.must("cleanup", "--all")
	e.assertNothingLeft(id2)
	if len(e.ps()) != 0 {
		t.Errorf("ps after cleanup --all: %+v", e.ps())
	}
}

func TestKillDuringStartThenCleanup(t *testing.T) {
	e := newEnv(t)
	points := []string{"meta", "firewall", "containers", "sidecars"}
	var agents []string
	for _, p := range points {
		agents = append(agents, "kill-"+p)
	}
	agents = append(agents, "kill-attached")
	e.writeManifest(agents...)
	var ids []string
	for _, p := range points {
		cmd := e.command([]string{"BOTTLE_TEST_KILL_AT=" + p}, "start", "kill-"+p, "--", "/bin/true")
		out, err := cmd.CombinedOutput()
		if !killedBySignal(err) {
			t.Fatalf("kill at %s: start was not killed (%v):\n%s", p, err, out)
		}
		ids = append(ids, e.identityOf("kill-"+p))
	}
	// Killed while the agent runs attached.
	_, wait, cmd := e.background(nil, "start", "kill-attached", "--", "/bin/sleep", "300")
	ids = append(ids, e.waitPhase("kill-attached", "running", 30*time.Second))
	cmd.Process.Kill()
	wait(30 * time.Second)

	out := e.must("cleanup")
	for _, id := range ids {
		if !strings.Contains(out, id) {
			t.Errorf("cleanup did not report %s:\n%s", id, out)
		}
	}
	// The attached bottle had started: cleanup stops it and keeps it for resume.
	attached := ids[len(ids)-1]
	if p := e.ps(); len(p) != 1 || p[0].Identity != attached || p[0].Phase != "stopped" {
		t.Errorf("after cleanup: %+v; want only %s, stopped", p, attached)
	}
	e.must("rm", attached)
	e.assertNothingLeft(ids...)
}

// TestRmOfARunningBottleNeedsForce: rm refuses a running bottle with the commands that
// do it; --force removes it.
func TestRmOfARunningBottleNeedsForce(t *testing.T) {
	e := newEnv(t)
	e.writeManifest("busy")
	e.must("start", "--detach", "busy", "--", "/bin/sleep", "300")
	id := e.identityOf("busy")
	_, errOut, code := e.bottle(nil, "rm", id)
	if code == 0 || !strings.Contains(errOut, "is running; stop it first with `bottle stop "+id+"`, or remove it anyway with `bottle rm --force "+id+"`") {
		t.Errorf("rm of a running bottle: exit %d, stderr %q", code, errOut)
	}
	if p := e.ps(); len(p) != 1 || p[0].Phase != "running" || p[0].Containers["agent"] != "running" {
		t.Errorf("after a refused rm: %+v", p)
	}
	e.must("rm", "--force", id)
	e.assertNothingLeft(id)
}

// TestResumeAfterTheAttachedProcessWasKilled: the process a bottle ran attached to is
// killed after the start finished; ps says so, and resume continues the bottle.
func TestResumeAfterTheAttachedProcessWasKilled(t *testing.T) {
	e := newEnv(t)
	e.writeManifest("dropped")
	_, wait, cmd := e.background(nil, "start", "dropped", "--", "/bin/sleep", "300")
	id := e.waitPhase("dropped", "running", 60*time.Second)
	cmd.Process.Kill()
	wait(30 * time.Second)
	if out := e.must("ps"); !strings.Contains(out, fmt.Sprintf("running: the process it ran attached to (%d) is gone", cmd.Process.Pid)) {
		t.Errorf("ps does not say the attached process is gone:\n%s", out)
	}
	out, errOut, code := e.bottle(nil, "resume", "--detach", id)
	if code != 0 || strings.Contains(errOut, "abandoned") {
		t.Fatalf("resume: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if p := e.ps(); len(p) != 1 || p[0].Phase != "running" || p[0].Containers["agent"] != "running" {
		t.Errorf("after resume: %+v", p)
	}
	e.must("stop", id)
	e.must("rm", id)
	e.assertNothingLeft(id)
}

// TestInterruptDuringStartTakesEverythingBack sends the start a SIGINT (what Ctrl-C does)
// after each step: it must fail and leave nothing, without any cleanup command.
func TestInterruptDuringStartTakesEverythingBack(t *testing.T) {
	e := newEnv(t)
	points := []string{"meta", "firewall", "containers", "sidecars"}
	var agents []string
	for _, p := range points {
		agents = append(agents, "int-"+p)
	}
	e.writeManifest(agents...)
	for _, p := range points {
		out, errOut, code := e.bottle([]string{"BOTTLE_TEST_KILL_AT=int:" + p}, "start", "int-"+p, "--", "/bin/true")
		if code == 0 || !strings.Contains(errOut, "start interrupted") {
			t.Errorf("interrupt after %s: exit %d, stderr %q, stdout %q", p, code, errOut, out)
		}
		var id string
		for _, l := range strings.Split(errOut, "\n") {
			if _, rest, ok := strings.Cut(l, "identity="); ok {
				id = strings.Fields(rest)[0]
			}
		}
		if id == "" {
			t.Fatalf("no identity in the start's log:\n%s", errOut)
		}
		e.assertNothingLeft(id)
	}
	if ps := e.ps(); len(ps) != 0 {
		t.Errorf("bottles left: %+v", ps)
	}
}

// TestLeftoverThatBlocksAStartNamesItsFix: a killed start holds the only address slot of
// a tiny pool; the next start fails with the command that clears it, which works.
func TestLeftoverThatBlocksAStartNamesItsFix(t *testing.T) {
	e := newEnv(t)
	e.writeManifest("blocked")
	tiny := "10.214.14.0/23" // one slot: an internal and an egress /24
	cmd := e.command([]string{"BOTTLE_TEST_KILL_AT=meta"}, "start", "--pool", tiny, "blocked", "--", "/bin/true")
	if out, err := cmd.CombinedOutput(); !killedBySignal(err) {
		t.Fatalf("start was not killed (%v): %s", err, out)
	}
	orphan := e.identityOf("blocked")
	out, errOut, code := e.bottle(nil, "start", "--pool", tiny, "blocked", "--", "/bin/true")
	if code == 0 || !strings.Contains(errOut, "`bottle cleanup`") {
		t.Fatalf("start with the slot held by a leftover: exit %d, stderr %q, stdout %q; want an error naming `bottle cleanup`", code, errOut, out)
	}
	if !strings.Contains(e.must("cleanup"), orphan) {
		t.Errorf("cleanup did not remove %s", orphan)
	}
	e.must("start", "--rm", "--pool", tiny, "blocked", "--", "/bin/true")
	e.assertNothingLeft(orphan)
}

func TestResumeKeepsIdentity(t *testing.T) {
	e := newEnv(t)
	e.writeManifest("again")
	script := `echo "I am $BOTTLE_IDENTITY on $(hostname)"; echo run >> /workspace/runs`
	workspace := filepath.Dir(e.manifest)
	// The agent runs as the workspace's owner.
	if err := os.Chown(workspace, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	e.must("start", "again", "--", "/bin/sh", "-c", script)
	id := e.identityOf("again")
	out := e.must("resume", id)
	if !strings.Contains(out, "I am "+id+" on "+id) {
		t.Errorf("resumed bottle output %q, want its identity %s", out, id)
	}
	runs, _ := os.ReadFile(filepath.Join(workspace, "runs"))
	if strings.Count(string(runs), "run") != 2 {
		t.Errorf("workspace runs file %q, want two runs", runs)
	}
	if p := e.ps(); len(p) != 1 || p[0].Identity != id || p[0].Phase != "stopped" {
		t.Errorf("after resume: %+v", p)
	}
	e.must("rm", id)
	e.assertNothingLeft(id)
}

func TestBadInputCreatesNothing(t *testing.T) {
	e := newEnv(t)
	e.writeManifest("bad")
	// A manifest whose image is not in containerd.
	missing := filepath.Join(t.TempDir(), "missing.toml")
	os.WriteFile(missing, []byte("[agents.bad]\nbottle = \"b\"\nimage = \"bottle.local/nothing-here:1\"\n[bottles.b]\nruntime = \"runsc-runc\"\nfilter = \"builtin\"\n"), 0o644)
	// A route whose credential is not set on the host: the start fails at its plan.
	unset := filepath.Join(t.TempDir(), "unset.toml")
	os.WriteFile(unset, []byte("[agents.bad]\nbottle = \"b\"\nimage = \""+testImage+"\"\n[bottles.b]\nruntime = \"runsc-runc\"\nfilter = \"builtin\"\n"+
		"[[bottles.b.egress_proxy.routes]]\nhost = \"api.example.com\"\ntoken_ref = \"BOTTLE_TEST_UNSET_TOKEN\"\n"), 0o644)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown identity", []string{"stop", "bad-000000"}, "bottle ps"},
		{"malformed identity", []string{"rm", "nonsense"}, "not a bottle identity"},
		{"containerd missing", []string{"--address", "/nonexistent/containerd.sock", "start", "bad", "--", "/bin/true"}, "make setup"},
		{"runsc missing", []string{"start", "--runsc", "/nonexistent/runsc", "bad", "--", "/bin/true"}, "setup-host.sh"},
		{"image missing", []string{"--manifest", missing, "start", "bad", "--", "/bin/true"}, "bottle image import"},
		{"credential unset", []string{"--manifest", unset, "start", "bad", "--", "/bin/true"}, "BOTTLE_TEST_UNSET_TOKEN (token_ref of route api.example.com: export the credential"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := e.bottle(nil, tc.args...)
			lines := strings.Split(strings.TrimSpace(errOut), "\n")
			last := lines[len(lines)-1]
			if code == 0 || !strings.HasPrefix(last, "bottle: ") || !strings.Contains(last, tc.want) {
				t.Errorf("exit %d, stderr %q; want a one-line error mentioning %q", code, errOut, tc.want)
			}
			if out != "" {
				t.Errorf("stdout %q", out)
			}
			// No bottle was made, so none is named.
			if strings.Contains(errOut, "preparing bottle") || strings.Contains(errOut, "optional_env") {
				t.Errorf("stderr %q names a bottle that never existed, or offers optional_env for a credential", errOut)
			}
			if entries, _ := os.ReadDir(filepath.Join(e.stateDir, "bottles")); len(entries) != 0 {
				t.Errorf("bad input created bottle state: %v", entries)
			}
		})
	}
	if ps := e.ps(); len(ps) != 0 {
		t.Errorf("bottles after bad input: %+v", ps)
	}
}
