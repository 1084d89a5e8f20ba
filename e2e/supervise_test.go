package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/testutil"
)

// TestSupervise: from inside the agent, an MCP client proposes to allow a host; the
// proposal shows in `bottle proposals`; the filter refuses the host until `bottle
// approve`, then lets it through without the agent being restarted, and refuses it again
// when the --for grant ends. Deny and timeout leave it refused and tell the agent why;
// bad proposals are refused and change nothing; a grant for good survives stop/resume.
func TestSupervise(t *testing.T) {
	e := newEnv(t)
	up := newUpstream(t)
	manifest := fmt.Sprintf(`[agents.sup]
bottle = "b"
image = %q
command = ["/bin/sleep", "600"]

[bottles.b]
runtime = "runsc-runc"
filter = "builtin"
allowlist = ["api.allowed.test"]
supervise = true
supervise_timeout = "10s"
`, testImage)
	if err := os.WriteFile(e.manifest, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+dnsAddr.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := e.bottle(nil, "start", "--detach", "--ca-file", up.caFile, "--resolv-conf", resolv, "sup")
	if code != 0 {
		t.Fatalf("start: exit %d: %s %s", code, out, errOut)
	}
	id := e.identityOf("sup")
	const mcpURL = "http://supervise:8080/mcp"
	target := "http://api.denied.test/hello"
	reach := func() string { t.Helper(); return e.probe(id, "get", "http://filter:8888", target) }
	allowed := "STATUS 200 UPSTREAM-ALLOWED host=api.denied.test"
	// waitReach waits (the filter re-reads its changes every second) until the host is
	// reachable or not.
	waitReach := func(want bool, within time.Duration, what string) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			got := reach()
			if strings.HasPrefix(got, allowed) == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: got %q after %v", what, got, within)
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	// propose starts an MCP tool call in the agent; its wait returns the probe's line.
	propose := func(tool, args string) func() string {
		t.Helper()
		cmd := e.command(nil, "exec", id, "--", "/usr/local/bin/probe", "mcp", mcpURL, tool, args)
		var o bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &o
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return func() string { _ = cmd.Wait(); return strings.TrimSpace(o.String()) }
	}
	type entry struct {
		N        int    `json:"n"`
		State    string `json:"state"`
		Refused  string `json:"refused"`
		Proposal *struct {
			Kind string `json:"kind"`
		} `json:"proposal"`
	}
	entries := func() []entry {
		t.Helper()
		var list []entry
		for _, line := range strings.Split(strings.TrimSpace(e.must("proposals", id, "--json")), "\n") {
			if line == "" {
				continue
			}
			var en entry
			if err := json.Unmarshal([]byte(line), &en); err != nil {
				t.Fatalf("proposals --json: %v: %s", err, line)
			}
			list = append(list, en)
		}
		return list
	}
	waitPending := func(n int) {
		t.Helper()
		for range 50 {
			if l := entries(); len(l) >= n && l[n-1].State == "pending" {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("proposal %d never showed as pending: %+v", n, entries())
	}
	agentStarted := e.must("exec", id, "--", "/bin/sh", "-c", "cat /proc/1/stat | cut -d' ' -f22")

	// The agent finds the server configured, and its capabilities.
	mcpConfig := e.must("exec", id, "--", "/bin/cat", "/etc/claude-code/managed-mcp.json")
	if !strings.Contains(mcpConfig, `"url": "http://supervise:8080/mcp"`) {
		t.Errorf("managed MCP config: %s", mcpConfig)
	}
	if got := e.probe(id, "mcp", mcpURL, "current_capabilities", "{}"); !strings.Contains(got, `"allowlist":["api.allowed.test"]`) {
		t.Errorf("current_capabilities: %s", got)
	}

	// 1: approved for 5s.
	if got := reach(); strings.HasPrefix(got, allowed) {
		t.Fatalf("reachable before any proposal: %s", got)
	}
	wait := propose("propose_allowlist_change", `{"justification":"fetch the test fixture","add":["api.denied.test"]}`)
	waitPending(1)
	if got := reach(); strings.HasPrefix(got, allowed) {
		t.Errorf("reachable while the proposal is pending: %s", got)
	}
	listing := e.must("proposals", id)
	for _, want := range []string{"#1 allowlist pending", "why: fetch the test fixture", "allowlist before: api.allowed.test", "+ api.denied.test"} {
		if !strings.Contains(listing, want) {
			t.Errorf("proposals lack %q:\n%s", want, listing)
		}
	}
	e.must("approve", id, "1", "--for", "5s", "--reason", "for the fixture only")
	granted := time.Now()
	if got := wait(); !strings.HasPrefix(got, "RESULT ") || !strings.Contains(got, `"decision":"approved"`) || !strings.Contains(got, "for the fixture only") {
		t.Errorf("agent's answer: %s", got)
	}
	waitReach(true, 3*time.Second, "after approve")
	if time.Since(granted) < 4*time.Second {
		waitReach(false, 5*time.Second+2*time.Second-time.Since(granted), "after the 5s grant")
	}
	if got := reach(); strings.HasPrefix(got, allowed) {
		t.Errorf("still reachable after the grant ended: %s", got)
	}

	// 2: denied with a reason.
	wait = propose("propose_allowlist_change", `{"justification":"again","add":["api.denied.test"]}`)
	waitPending(2)
	e.must("deny", id, "2", "--reason", "not today")
	if got := wait(); !strings.Contains(got, `"decision":"denied"`) || !strings.Contains(got, "not today") {
		t.Errorf("denied: agent's answer %s", got)
	}
	// 3: nobody decides: denied by default when the timeout ends.
	start := time.Now()
	if got := propose("propose_allowlist_change", `{"justification":"and again","add":["api.denied.test"]}`)(); !strings.Contains(got, `"decision":"denied"`) || !strings.Contains(got, "denied by default") || time.Since(start) < 9*time.Second {
		t.Errorf("timeout: agent's answer %s after %v", got, time.Since(start))
	}
	if _, errOut, code := e.bottle(nil, "approve", id, "3"); code == 0 || !strings.Contains(errOut, "timed out") {
		t.Errorf("approving a timed-out proposal: exit %d: %s", code, errOut)
	}
	if got := reach(); strings.HasPrefix(got, allowed) {
		t.Errorf("reachable after deny and timeout: %s", got)
	}

	// Bad proposals: refused at once, nothing written, nothing changed.
	for name, tc := range map[string]struct{ tool, args, want string }{
		"escape":     {"propose_allowlist_change", `{"justification":"hi\u001b]0;owned\u0007","add":["api.denied.test"]}`, "TOOLERROR refused: justification holds the control character"},
		"oversized":  {"propose_allowlist_change", fmt.Sprintf(`{"justification":%q,"add":["api.denied.test"]}`, strings.Repeat("x", 3000)), "TOOLERROR refused: justification is longer than"},
		"host":       {"propose_allowlist_change", `{"justification":"x","add":["10.0.0.1:22/x"]}`, "TOOLERROR refused: allowlist entry"},
		"dockerfile": {"propose_dockerfile_change", `{"justification":"x","content":"FROM alpine\nRUN true\n"}`, "TOOLERROR refused: dockerfile refused: line 1: FROM alpine: only the bottle's current agent image"},
	} {
		if got := e.probe(id, "mcp", mcpURL, tc.tool, tc.args); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: got %q, want %q", name, got, tc.want)
		}
	}
	if got := e.probe(id, "postjson", "http://supervise:8080/v1/proposals", `{"kind":"allowlist","justification":"x","allowlist":{"add":["api.denied.test"]},"sneaky":true}`); !strings.HasPrefix(got, "STATUS 400") || !strings.Contains(got, "unknown field") {
		t.Errorf("malformed JSON proposal: %s", got)
	}
	if n := len(entries()); n != 3 {
		t.Errorf("%d proposals after the bad ones, want 3", n)
	}
	if got := reach(); strings.HasPrefix(got, allowed) {
		t.Errorf("reachable after bad proposals: %s", got)
	}

	// 4: the plain JSON API, approved for good: survives stop and resume.
	cmd := e.command(nil, "exec", id, "--", "/usr/local/bin/probe", "postjson", "http://supervise:8080/v1/proposals", `{"kind":"allowlist","justification":"for good","allowlist":{"add":["api.denied.test"]}}`)
	var o bytes.Buffer
	cmd.Stdout = &o
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitPending(4)
	e.must("approve", id, "4")
	_ = cmd.Wait()
	if got := o.String(); !strings.HasPrefix(got, "STATUS 200") || !strings.Contains(got, `"decision":"approved"`) {
		t.Errorf("JSON API answer: %s", got)
	}
	waitReach(true, 3*time.Second, "after approving for good")
	if now := e.must("exec", id, "--", "/bin/sh", "-c", "cat /proc/1/stat | cut -d' ' -f22"); now != agentStarted {
		t.Errorf("the agent was restarted: start time %s, before %s", now, agentStarted)
	}
	e.must("stop", id)
	if out, errOut, code := e.bottle(nil, "resume", "--detach", "--ca-file", up.caFile, "--resolv-conf", resolv, id); code != 0 {
		t.Fatalf("resume: exit %d: %s %s", code, out, errOut)
	}
	waitReach(true, 5*time.Second, "after resume")
	e.must("rm", "--force", id)
	// The audit trail has each proposal with the answer the agent got (from the sidecar)
	// and each person's decision (from the host), and its chains hold.
	trail := e.must("audit", id, "--json")
	for n, outcome := range map[int]string{1: "approved", 2: "denied", 3: "denied", 4: "approved"} {
		if !regexp.MustCompile(fmt.Sprintf(`"source":"supervise".*"fields":\{[^}]*"n":%d,[^}]*"outcome":"%s"`, n, outcome)).MatchString(trail) {
			t.Errorf("audit trail has no record of proposal %d %s:\n%s", n, outcome, trail)
		}
	}
	if got := strings.Count(trail, `"kind":"decision"`); got != 3 {
		t.Errorf("%d decision records in the audit trail, want 3:\n%s", got, trail)
	}
	if !strings.Contains(trail, `"outcome":"refused"`) {
		t.Errorf("the bad proposals are not in the audit trail:\n%s", trail)
	}
	e.must("audit", id, "--verify")
}

// fakeSuperviseMarker in a prompt makes the fake Messages API ask for the supervise
// server's propose_allowlist_change tool (as Claude Code names MCP tools), then answer
// with what the tool returned.
const fakeSuperviseMarker = "BOTTLE-E2E-ASK-SUPERVISE"

const superviseTool = "mcp__bottle__propose_allowlist_change"

func fakeSuperviseTurn(w http.ResponseWriter, model string, stream bool, body []byte) {
	if !bytes.Contains(body, []byte(`"tool_result"`)) {
		input := map[string]any{"justification": "the e2e test asks", "add": []string{"api.denied.test"}}
		args, _ := json.Marshal(input)
		fakeAnthropicReply(w, model, stream, "tool_use", map[string]any{"type": "tool_use", "id": "toolu_sup", "name": superviseTool, "input": input},
			map[string]any{"type": "tool_use", "id": "toolu_sup", "name": superviseTool, "input": map[string]any{}},
			[]map[string]string{{"type": "input_json_delta", "partial_json": string(args)}})
		return
	}
	text := "SUPERVISE-ANSWER-MISSING"
	if bytes.Contains(body, []byte(`approved`)) && bytes.Contains(body, []byte(`go ahead`)) {
		text = "SUPERVISE-ANSWER-APPROVED"
	}
	fakeAnthropicReply(w, model, stream, "end_turn", map[string]any{"type": "text", "text": text},
		map[string]any{"type": "text", "text": ""}, []map[string]string{{"type": "text_delta", "text": text}})
}

// TestClaudeUsesSupervise: the real Claude Code in the agent image finds the supervise
// server through the managed MCP config bottle mounts (no step by the user), calls its
// tool when the (fake) model asks; the proposal shows in `bottle proposals`, and
// Claude Code gets the approval with the person's reason.
func TestClaudeUsesSupervise(t *testing.T) {
	e, _, start := claudeEnv(t)
	example, err := os.ReadFile(e.manifest)
	if err != nil {
		t.Fatal(err)
	}
	manifest := strings.Replace(string(example), `filter = "auto"`, "filter = \"builtin\"\nsupervise = true\nsupervise_timeout = \"2m\"", 1)
	if err := os.WriteFile(e.manifest, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Dir(e.manifest), 1000, 1000); err != nil {
		t.Fatal(err)
	}
	cmd := e.command([]string{"CLAUDE_CODE_OAUTH_TOKEN=sk-ant-oat01-e2e-supervise"},
		append(start, "claude", "--", "claude", "-p", fakeSuperviseMarker+": ask for api.denied.test", "--allowedTools", superviseTool)...)
	var o, er bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &er
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var id string
	deadline := time.Now().Add(3 * time.Minute)
	for id == "" {
		select {
		case err := <-done:
			t.Fatalf("claude ended before proposing: %v\nstdout: %s\nstderr: %s", err, o.String(), er.String())
		case <-time.After(time.Second):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no proposal from Claude Code\nstderr: %s", er.String())
		}
		out, _, code := e.bottle(nil, "proposals", "--json")
		if code == 0 && strings.Contains(out, `"state":"pending"`) && strings.Contains(out, "api.denied.test") {
			var en struct {
				Identity string `json:"identity"`
			}
			_ = json.Unmarshal([]byte(strings.SplitN(out, "\n", 2)[0]), &en)
			id = en.Identity
		}
	}
	e.must("approve", id, "1", "--reason", "go ahead")
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("claude did not finish after the approval\nstderr: %s", er.String())
	}
	if got := strings.TrimSpace(o.String()); got != "SUPERVISE-ANSWER-APPROVED" {
		t.Errorf("claude printed %q, want the approval it got from the tool\nstderr: %s", got, er.String())
	}
	if !strings.Contains(er.String(), "the agent proposes a change (#1, allowlist)") {
		t.Errorf("the attached start did not announce the proposal:\n%s", er.String())
	}
}

// TestSuperviseGitRule: a push the declared rules refuse is allowed once the agent's
// push rule proposal is approved, with git-gate still running (it re-reads its rules);
// the HTTPS remote's token never enters the agent.
func TestSuperviseGitRule(t *testing.T) {
	e := newEnv(t)
	ensureAgentImage(t, e)
	up := newUpstream(t)
	forge := newGitForge(t, up)
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+dnsAddr.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	workspace := t.TempDir()
	if err := os.Chown(workspace, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	manifest := strings.Replace(gitManifest(forge.keyFile, forge.knownHosts, gitHTTPSURL), "filter = \"builtin\"\n", "filter = \"builtin\"\nsupervise = true\nsupervise_timeout = \"60s\"\n", 1)
	if err := os.WriteFile(e.manifest, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := e.command([]string{"GIT_E2E_TOKEN=" + forge.token}, "start", "--detach",
		"--ca-file", forge.caFile, "--resolv-conf", resolv, "--add-host", gitHost+":"+upstreamAddr.Addr().String(), "gitgate")
	cmd.Dir = workspace
	if out, errOut, code := runCmd(t, cmd); code != 0 {
		t.Fatalf("start: exit %d\n%s\n%s", code, out, errOut)
	}
	id := e.identityOf("gitgate")
	agent := func(script string) (string, error) {
		out, err := e.command(nil, "exec", id, "--", "bash", "-c", "set -e; cd \"$HOME\"; "+script).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := agent(`git config --global user.name Agent; git config --global user.email agent@bottle.invalid; git clone -q ` + gitSSHURL + ` r && cd r && git checkout -q -b feature/x && echo x > x.txt && git add x.txt && git commit -q -m x`); err != nil {
		t.Fatalf("clone: %v\n%s", err, out)
	}
	bare := filepath.Join(forge.sshRoot, "repo.git")
	push := "cd r && git push -q origin feature/x"
	if out, err := agent(push); err == nil || !strings.Contains(out, "ref not pushable") {
		t.Fatalf("push before the approval: %v\n%s", err, out)
	}
	// The agent image has node: its fetch is the agent's plain JSON client.
	answer := inAgent(e, id, "node", "-e", `fetch(process.env.BOTTLE_SUPERVISE_URL+"/v1/proposals",{method:"POST",body:JSON.stringify({kind:"git_rule",justification:"a feature branch",git_rule:{remote:"origin-ssh",ref:"refs/heads/feature/*"}})}).then(r=>r.text()).then(t=>console.log(t))`)
	if out := waitProposal(e, id, "#1 git_rule pending", answer); !strings.Contains(out, "+ refs/heads/feature/*") {
		t.Errorf("proposals:\n%s", out)
	}
	e.must("approve", id, "1")
	if got := answer(); !strings.Contains(got, `"decision":"approved"`) {
		t.Errorf("the agent's answer: %s", got)
	}
	var out string
	var err error
	for range 10 { // git-gate re-reads its rules every second
		if out, err = agent(push); err == nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("push after the approval: %v\n%s", err, out)
	}
	if forge.ref(bare, "refs/heads/feature/x") == "" {
		t.Error("the approved push did not land upstream")
	}
	scanAgent(e, id, forge.token)
}

// scanAgent fails the test when secret is in the agent's files, env or processes' env.
// It goes in on stdin, never on a command line.
func scanAgent(e *env, id, secret string) {
	e.t.Helper()
	scan := e.command(nil, "exec", id, "--", "/bin/sh", "-c", `read -r t; { grep -rlsF "$t" /home /workspace /tmp /etc /run /root /proc/[0-9]*/environ; env | grep -F "$t"; } 2>/dev/null || true`)
	scan.Stdin = strings.NewReader(secret + "\n")
	if found, err := scan.CombinedOutput(); err != nil || strings.TrimSpace(string(found)) != "" {
		e.t.Errorf("the secret is in the agent's files or env: %v %s", err, found)
	}
}

// inAgent starts a command in the agent (a proposal, which waits for the decision);
// the function returned waits for it and returns its output.
func inAgent(e *env, id string, args ...string) func() string {
	e.t.Helper()
	cmd := e.command(nil, append([]string{"exec", id, "--"}, args...)...)
	var o bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &o
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	var once sync.Once
	return func() string { once.Do(func() { _ = cmd.Wait() }); return strings.TrimSpace(o.String()) }
}

// waitProposal waits until `bottle proposals ID` shows want and returns the listing;
// answer tells what the proposing client said when it never shows.
func waitProposal(e *env, id, want string, answer func() string) string {
	e.t.Helper()
	for range 100 {
		if out := e.must("proposals", id); strings.Contains(out, want) {
			return out
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.t.Fatalf("no %q in the proposals; the agent's client said: %s", want, answer())
	return ""
}

// TestSuperviseRoute: the agent proposes a route; approving it without the credential in
// the approving shell fails and changes nothing; with it, the egress-proxy is restarted
// with the new route, the agent (not restarted) reaches the route's host with the real
// credential injected, the route declared at start keeps its own, and the new credential
// is nowhere in the agent, in bottle's command lines, output or audit trail. A resume
// plans the approved route again with the resuming shell's credential.
func TestSuperviseRoute(t *testing.T) {
	e := newEnv(t)
	up := newUpstream(t)
	manifest := fmt.Sprintf(`[agents.sup]
bottle = "b"
image = %q
command = ["/bin/sleep", "600"]

[bottles.b]
runtime = "runsc-runc"
filter = "builtin"
allowlist = ["api.allowed.test"]
supervise = true
supervise_timeout = "60s"

[[bottles.b.egress_proxy.routes]]
host = "api.route.test"
token_ref = "E2E_ROUTE_TOKEN"
`, testImage)
	if err := os.WriteFile(e.manifest, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+dnsAddr.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	oldToken := fmt.Sprintf("sk-e2e-start-%d-%d", time.Now().UnixNano(), os.Getpid())
	newToken := fmt.Sprintf("sk-e2e-approved-%d-%d", time.Now().UnixNano(), os.Getpid())
	stopWatch := watchCmdlines(newToken)
	startArgs := []string{"--ca-file", up.caFile, "--resolv-conf", resolv}
	if out, errOut, code := e.bottle([]string{"E2E_ROUTE_TOKEN=" + oldToken}, append(append([]string{"start", "--detach"}, startArgs...), "sup")...); code != 0 {
		t.Fatalf("start: exit %d: %s %s", code, out, errOut)
	}
	id := e.identityOf("sup")
	const newRoute = "http://egress-proxy:9000/api.denied.test/v1/messages"
	const oldRoute = "http://egress-proxy:9000/api.route.test/v1/messages"
	// call posts to a route and returns the probe's line and the headers the upstream saw.
	call := func(url string) (string, http.Header) {
		t.Helper()
		n := len(up.headers())
		got := e.probe(id, "post", url)
		if seen := up.headers(); len(seen) > n {
			return got, seen[len(seen)-1]
		}
		return got, nil
	}
	if got, h := call(newRoute); strings.HasPrefix(got, "STATUS 200") || h != nil {
		t.Fatalf("the route's host is reachable before any proposal: %s", got)
	}
	agentStarted := e.must("exec", id, "--", "/bin/sh", "-c", "cat /proc/1/stat | cut -d' ' -f22")

	answer := inAgent(e, id, "/usr/local/bin/probe", "mcp", "http://supervise:8080/mcp", "propose_route_change",
		`{"justification":"the fixture API","host":"api.denied.test","token_ref":"E2E_NEW_TOKEN","header":"X-Api-Key","scheme":"none"}`)
	if out := waitProposal(e, id, "#1 route pending", answer); !strings.Contains(out, "+ api.denied.test (X-Api-Key, credential from $E2E_NEW_TOKEN)") {
		t.Errorf("proposals:\n%s", out)
	}

	// Without the credential in the approving shell: refused, nothing changes.
	if out, errOut, code := e.bottle(nil, "approve", id, "1"); code == 0 || !strings.Contains(errOut, "$E2E_NEW_TOKEN is not set") {
		t.Errorf("approval without the credential: exit %d: %s %s", code, out, errOut)
	}
	if got, h := call(newRoute); strings.HasPrefix(got, "STATUS 200") || h != nil {
		t.Errorf("the route works after the failed approval: %s", got)
	}
	if out := e.must("proposals", id); !strings.Contains(out, "#1 route pending") {
		t.Errorf("the failed approval decided the proposal:\n%s", out)
	}

	out, errOut, code := e.bottle([]string{"E2E_NEW_TOKEN=" + newToken}, "approve", id, "1", "--reason", "ok")
	if code != 0 {
		t.Fatalf("approve: exit %d: %s %s", code, out, errOut)
	}
	if got := answer(); !strings.Contains(got, `"decision":"approved"`) {
		t.Errorf("the agent's answer: %s", got)
	}
	got, h := call(newRoute)
	if !strings.HasPrefix(got, "STATUS 200 UPSTREAM-OK") || h == nil || h.Get("X-Api-Key") != newToken {
		t.Errorf("the approved route: %s, upstream saw X-Api-Key %q", got, h.Get("X-Api-Key"))
	}
	// As a manifest's route host, the approved one is on the filter's allowlist too.
	for i := 0; ; i++ {
		got := e.probe(id, "get", "http://filter:8888", "http://api.denied.test/hello")
		if strings.HasPrefix(got, "STATUS 200 UPSTREAM-ALLOWED") {
			break
		}
		if i == 10 {
			t.Errorf("the route's host through the filter: %s", got)
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if got, h := call(oldRoute); !strings.HasPrefix(got, "STATUS 200 UPSTREAM-OK") || h == nil || h.Get("Authorization") != "Bearer "+oldToken {
		t.Errorf("the start's route after the restart: %s, upstream saw Authorization %q", got, h.Get("Authorization"))
	}
	if now := e.must("exec", id, "--", "/bin/sh", "-c", "cat /proc/1/stat | cut -d' ' -f22"); now != agentStarted {
		t.Errorf("the agent was restarted: start time %s, before %s", now, agentStarted)
	}
	if caps := e.probe(id, "mcp", "http://supervise:8080/mcp", "current_capabilities", "{}"); !strings.Contains(caps, `{"header":"X-Api-Key","host":"api.denied.test"}`) {
		t.Errorf("current_capabilities lacks the route: %s", caps)
	}
	scanAgent(e, id, newToken)
	for what, text := range map[string]string{
		"approve output": out + errOut,
		"proposals":      e.must("proposals", id, "--json"),
		"audit trail":    e.must("audit", id, "--json"),
		"egress log":     e.must("logs", id, "--role", "egress-proxy"),
	} {
		if strings.Contains(text, newToken) {
			t.Errorf("the credential is in the %s", what)
		}
	}

	e.must("stop", id)
	if out, errOut, code := e.bottle([]string{"E2E_ROUTE_TOKEN=" + oldToken, "E2E_NEW_TOKEN=" + newToken}, append(append([]string{"resume", "--detach"}, startArgs...), id)...); code != 0 {
		t.Fatalf("resume: exit %d: %s %s", code, out, errOut)
	}
	if got, h := call(newRoute); !strings.HasPrefix(got, "STATUS 200 UPSTREAM-OK") || h == nil || h.Get("X-Api-Key") != newToken {
		t.Errorf("the approved route after resume: %s", got)
	}
	e.must("rm", "--force", id)
	if stopWatch() {
		t.Error("the credential was on a command line")
	}
}

// TestSuperviseDockerfile: the agent proposes a Dockerfile (a file and an env var, FROM
// its image) through MCP; `bottle approve` builds it with BuildKit from the local base
// (no registry) and restarts the agent on it, which then sees the file, the env var and
// its old workspace files; the agent is shown its new image as the only base; stop and
// resume keep the image; rm removes it.
func TestSuperviseDockerfile(t *testing.T) {
	testutil.RequireBinary(t, "buildkitd")
	testutil.RequireBinary(t, "buildctl")
	e := newEnv(t)
	manifest := fmt.Sprintf(`[agents.sdf]
bottle = "b"
image = %q
command = ["/bin/sh", "-c", "[ -f /workspace/old.txt ] || echo first-run > /workspace/old.txt; exec sleep 600"]

[bottles.b]
runtime = "runsc-runc"
filter = "builtin"
supervise = true
supervise_timeout = "120s"
`, testImage)
	if err := os.WriteFile(e.manifest, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	e.must("start", "--detach", "sdf")
	id := e.identityOf("sdf")
	waitFile(t, filepath.Join(filepath.Dir(e.manifest), "old.txt"))

	const mcpURL = "http://supervise:8080/mcp"
	dockerfile := "FROM " + testImage + "\nENV BUILT_ENV=approved\nRUN echo added-by-proposal > /added.txt\n"
	args, err := json.Marshal(map[string]string{"justification": "the tests need a file", "content": dockerfile})
	if err != nil {
		t.Fatal(err)
	}
	// The call waits for the decision; the approval restarts the agent, which ends it.
	call := e.command(nil, "exec", id, "--", "/usr/local/bin/probe", "mcp", mcpURL, "propose_dockerfile_change", string(args))
	if err := call.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = call.Process.Kill(); _ = call.Wait() }()
	for i := 0; ; i++ {
		if out := e.must("proposals", id); strings.Contains(out, "#1 dockerfile pending") {
			if !strings.Contains(out, "+RUN echo added-by-proposal > /added.txt") {
				t.Errorf("the proposal shows no unified diff of the Dockerfile:\n%s", out)
			}
			break
		}
		if i == 50 {
			t.Fatalf("the Dockerfile proposal never showed as pending:\n%s", e.must("proposals", id))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out := e.must("approve", id, "1", "--reason", "ok"); !strings.Contains(out, "approved proposal 1") {
		t.Errorf("approve: %s", out)
	}
	want := "bottle.local/" + id + ":1"
	check := func(when string) {
		t.Helper()
		e.waitPhase("sdf", "running", 30*time.Second)
		got := e.must("exec", id, "--", "/bin/sh", "-c", "cat /added.txt; echo env=$BUILT_ENV; cat /workspace/old.txt")
		for _, w := range []string{"added-by-proposal", "env=approved", "first-run"} {
			if !strings.Contains(got, w) {
				t.Errorf("%s: the agent's output lacks %q:\n%s", when, w, got)
			}
		}
	}
	check("after approve")
	if img, _ := e.recordedImage(id); img != want {
		t.Errorf("recorded image %q, want %q", img, want)
	}
	if caps := e.probe(id, "mcp", mcpURL, "current_capabilities", "{}"); !strings.Contains(caps, "FROM "+want) {
		t.Errorf("current_capabilities does not show %s as the base:\n%s", want, caps)
	}
	e.must("stop", id)
	e.must("resume", "--detach", id)
	check("after stop and resume")
	e.must("rm", "--force", id)
	if imgs := e.builtImages(id); len(imgs) != 0 {
		t.Errorf("images left after rm: %v", imgs)
	}
}
