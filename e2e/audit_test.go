package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// auditLine is one record of `bottle audit --json`.
type auditLine struct {
	Seq    uint64         `json:"seq"`
	Time   time.Time      `json:"time"`
	Source string         `json:"source"`
	Kind   string         `json:"kind"`
	Fields map[string]any `json:"fields"`
}

// TestAuditTrail: a bottle that fetches through the filter (allowed and denied), calls a
// route and pushes through git-gate (allowed and refused) has each of those events once,
// in order, between its start and stop records, in `bottle audit --json`, with no
// credential and no query string anywhere in the trail; --verify passes, and names the
// record when one is edited or deleted; a resumed bottle's sidecars go on with their
// chains; the trail outlives rm until prune.
func TestAuditTrail(t *testing.T) {
	e, forge, resolv, workspace := newForgeEnv(t)
	manifest := fmt.Sprintf(`[agents.audited]
bottle = "a"
image = "bottle.local/agent-claude:latest"
command = ["/bin/sleep", "600"]

[bottles.a]
runtime = "runsc-runc"
filter = "builtin"
allowlist = ["api.allowed.test"]

[[bottles.a.egress_proxy.routes]]
host = "api.route.test"
token_ref = "E2E_ROUTE_TOKEN"

[[bottles.a.git]]
name = "origin"
url = %q
token_ref = "GIT_E2E_TOKEN"
`, gitHTTPSURL)
	if err := os.WriteFile(e.manifest, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	routeToken := fmt.Sprintf("sk-e2e-audit-%d-%d", time.Now().UnixNano(), os.Getpid())
	const queryMarker = "query-marker-never-recorded"
	cmd := e.command([]string{"E2E_ROUTE_TOKEN=" + routeToken, "GIT_E2E_TOKEN=" + forge.token}, "start", "--detach",
		"--ca-file", forge.caFile, "--resolv-conf", resolv,
		"--add-host", gitHost+":"+upstreamAddr.Addr().String(), "--add-host", "api.route.test:"+upstreamAddr.Addr().String(), "audited")
	cmd.Dir = workspace
	if out, errOut, code := runCmd(t, cmd); code != 0 {
		t.Fatalf("start: exit %d\n%s\n%s", code, out, errOut)
	}
	id := e.identityOf("audited")
	agent := func(script string) string {
		t.Helper()
		out, err := e.command(nil, "exec", id, "--", "bash", "-c", "set -e; cd \"$HOME\"; "+script).CombinedOutput()
		if err != nil {
			t.Fatalf("in the agent: %s: %v\n%s", script, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	// Each step is its own exec, so the records' times are apart by far more than any
	// clock difference between the sandboxes.
	if got := agent(`curl -s -x http://filter:8888 http://api.allowed.test/hello`); !strings.Contains(got, "UPSTREAM-ALLOWED") {
		t.Fatalf("allowed fetch: %q", got)
	}
	if got := agent(`curl -s -o /dev/null -w '%{http_code}' -x http://filter:8888 http://api.denied.test/hello`); got != "403" {
		t.Fatalf("denied fetch: %q", got)
	}
	if got := agent(`curl -s --noproxy '*' -X POST -d x 'http://egress-proxy:9000/api.route.test/v1/messages?key=` + queryMarker + `'`); !strings.Contains(got, "UPSTREAM-OK") {
		t.Fatalf("route: %q", got)
	}
	agent(`git config --global user.name Agent; git config --global user.email agent@bottle.invalid`)
	agent(fmt.Sprintf("git clone -q %s repo", gitHTTPSURL))
	pushed := agent(`cd repo && git checkout -q -b bottle/audit && echo a > audit.txt && git add audit.txt && git commit -q -m audit && git push -q origin bottle/audit && git rev-parse HEAD`)
	if out, err := e.command(nil, "exec", id, "--", "bash", "-c", `cd "$HOME/repo" && git push origin HEAD:main`).CombinedOutput(); err == nil {
		t.Fatalf("push to main passed:\n%s", out)
	}
	// Before rm, the trail cannot be pruned.
	if _, errOut, code := e.bottle(nil, "audit", "prune", id); code == 0 || !strings.Contains(errOut, "still exists") {
		t.Errorf("prune of a live bottle's trail: exit %d: %s", code, errOut)
	}
	e.must("stop", id)

	trail := filepath.Join(e.stateDir, "audit", id)
	records := func() []auditLine {
		t.Helper()
		out, errOut, code := e.bottle(nil, "audit", id, "--json")
		if code != 0 || errOut != "" {
			t.Fatalf("audit --json: exit %d: %s", code, errOut)
		}
		var recs []auditLine
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			var r auditLine
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				t.Fatalf("audit --json line %q: %v", l, err)
			}
			recs = append(recs, r)
		}
		return recs
	}
	// describe shows a record as the test expects it; the self-test's probe of the filter
	// (a random name under bottle.invalid) shows as selftest.bottle.invalid.
	describe := func(r auditLine) string {
		f := r.Fields
		switch r.Kind {
		case "lifecycle":
			return fmt.Sprintf("host %s by %s", f["event"], f["user"])
		case "selftest":
			return fmt.Sprintf("host selftest passed=%v", f["passed"])
		case "filter":
			host, _ := f["host"].(string)
			if strings.HasSuffix(host, ".bottle.invalid") {
				host = "selftest.bottle.invalid"
			}
			return fmt.Sprintf("filter %s %s %s:%v %v", f["verdict"], f["method"], host, f["port"], f["status"])
		case "request":
			return fmt.Sprintf("egress-proxy %s %s %s %v credential=%v", f["route"], f["method"], f["path"], f["status"], f["credential"])
		case "push":
			refs := f["refs"].([]any)
			ref := refs[0].(map[string]any)
			return fmt.Sprintf("git-gate %s %s new=%v", f["verdict"], ref["ref"], ref["new"] == pushed)
		}
		return r.Source + " " + r.Kind
	}
	recs := records()
	var got []string
	for _, r := range recs {
		got = append(got, describe(r))
	}
	want := []string{
		"filter deny CONNECT selftest.bottle.invalid:443 403",
		"host selftest passed=true",
		"host start by root",
		"filter allow GET api.allowed.test:80 200",
		"filter deny GET api.denied.test:80 403",
		"egress-proxy api.route.test POST /v1/messages 200 credential=true",
		"git-gate allow refs/heads/bottle/audit new=true",
		"git-gate deny refs/heads/main new=true",
		"host stop by root",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("audit trail:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for i := 1; i < len(recs); i++ {
		if recs[i].Time.Before(recs[i-1].Time) {
			t.Errorf("record %d (%s) is earlier than the one before it", i, recs[i].Source)
		}
	}
	text := e.must("audit", id)
	t.Logf("bottle audit %s:\n%s", id, text)
	if !strings.Contains(text, "allow GET api.allowed.test:80 status=200") || !strings.Contains(text, "credential=yes") {
		t.Errorf("human-readable trail:\n%s", text)
	}

	// No secret in the trail: not in what bottle prints, not in the files.
	secrets := append([]string{routeToken, forge.token, queryMarker}, forge.keySecrets()...)
	if held := filesHolding(t, routeToken, trail); len(held) > 0 {
		t.Errorf("the route token is in %v", held)
	}
	for _, s := range secrets {
		if held := filesHolding(t, s, trail); len(held) > 0 || strings.Contains(text, s) {
			t.Errorf("a secret (or the query) is in the trail: %v", held)
		}
	}

	if out := e.must("audit", id, "--verify"); !strings.Contains(out, "every chain intact") {
		t.Errorf("verify of an untouched trail: %s", out)
	}
	// Editing or deleting one record: --verify fails and names it; restored, it passes.
	tamper := func(what, file string, change func([]string) []string, want string) {
		t.Helper()
		path := filepath.Join(trail, file)
		orig, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(string(orig), "\n"), "\n")
		if err := os.WriteFile(path, []byte(strings.Join(change(lines), "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, _, code := e.bottle(nil, "audit", id, "--verify")
		if code == 0 || !strings.Contains(out, want) {
			t.Errorf("%s: verify exit %d, want a failure naming %q:\n%s", what, code, want, out)
		}
		if err := os.WriteFile(path, orig, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tamper("edited filter record", "filter/audit.jsonl", func(ls []string) []string {
		ls[1] = strings.Replace(ls[1], `"allow"`, `"deny"`, 1) // line 1 is the self-test's probe
		return ls
	}, "filter line 2 record seq 2: edited")
	tamper("deleted egress-proxy record", "egress-proxy/audit.jsonl", func(ls []string) []string { return ls[1:] }, "egress-proxy record seq 1: dropped")
	tamper("deleted git-gate record", "git-gate/audit.jsonl", func(ls []string) []string { return ls[1:] }, "git-gate record seq 1: dropped")
	tamper("deleted host record", "host.jsonl", func(ls []string) []string { return ls[1:] }, "host record seq 1: dropped")
	e.must("audit", id, "--verify")

	// Resumed, the new filter process goes on with the filter's chain.
	cmd = e.command([]string{"E2E_ROUTE_TOKEN=" + routeToken, "GIT_E2E_TOKEN=" + forge.token}, "resume", "--detach", "--resolv-conf", resolv, id)
	if out, errOut, code := runCmd(t, cmd); code != 0 {
		t.Fatalf("resume: exit %d\n%s\n%s", code, out, errOut)
	}
	agent(`curl -s -x http://filter:8888 http://api.allowed.test/again`)
	e.must("stop", id)
	recs = records()
	var tail []string
	for _, r := range recs[len(want):] {
		tail = append(tail, fmt.Sprintf("seq %d %s", r.Seq, describe(r)))
	}
	if got, want := strings.Join(tail, ", "), "seq 4 filter deny CONNECT selftest.bottle.invalid:443 403, seq 4 host selftest passed=true, seq 5 host resume by root, "+
		"seq 5 filter allow GET api.allowed.test:80 200, seq 6 host stop by root"; got != want {
		t.Errorf("after resume: %s, want %s\n%s", got, want, e.must("audit", id))
	}
	e.must("audit", id, "--verify")

	// The trail outlives rm (which it records) until prune.
	e.must("rm", id)
	e.assertNothingLeft(id)
	if recs := records(); len(recs) != len(want)+6 || recs[len(recs)-1].Fields["event"] != "rm" {
		t.Errorf("after rm: %d records, the last %+v", len(recs), recs[len(recs)-1])
	}
	e.must("audit", id, "--verify")
	if out := e.must("audit", "prune", id); !strings.Contains(out, "pruned") {
		t.Errorf("prune: %s", out)
	}
	if _, err := os.Stat(trail); err == nil {
		t.Error("the trail is still there after prune")
	}
	if _, _, code := e.bottle(nil, "audit", id); code == 0 {
		t.Error("audit of a pruned trail succeeded")
	}
}
