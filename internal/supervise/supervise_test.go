package supervise

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/testutil"
)

func validProposal() map[string]any {
	return map[string]any{
		"n": 1, "kind": "allowlist", "justification": "need the package index",
		"created": "2026-11-30T00:00:00Z", "deadline": "2026-11-30T00:10:00Z",
		"allowlist": map[string]any{"add": []string{"Pypi.ORG", "*.pythonhosted.org"}},
	}
}

func encode(t *testing.T, v any) string {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestReadProposal: a valid proposal is read (host names normalized); everything the
// agent could send wrong is refused with the reason.
func TestReadProposal(t *testing.T) {
	p, err := ReadProposal(strings.NewReader(encode(t, validProposal())))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.Allowlist.Add, ","); got != "pypi.org,*.pythonhosted.org" {
		t.Errorf("entries %s", got)
	}
	with := func(f func(m map[string]any)) string {
		m := validProposal()
		f(m)
		return encode(t, m)
	}
	for name, tc := range map[string]struct{ in, want string }{
		"oversized":     {strings.Repeat(" ", MaxProposalBytes+1), "larger than"},
		"malformed":     {`{"n": 1,`, "malformed"},
		"unknown field": {with(func(m map[string]any) { m["extra"] = 1 }), "unknown field"},
		"trailing":      {encode(t, validProposal()) + "{}", "after the JSON"},
		"escape":        {with(func(m map[string]any) { m["justification"] = "ok\x1b]0;pwned\x07" }), "control character"},
		"bidi":          {with(func(m map[string]any) { m["justification"] = "ok\u202e" }), "control character"},
		"bad host":      {with(func(m map[string]any) { m["allowlist"] = map[string]any{"add": []string{"a b.com"}} }), "allowlist entry"},
		"host escape":   {with(func(m map[string]any) { m["allowlist"] = map[string]any{"add": []string{"x\x1b[2J.com"}} }), "allowlist entry"},
		"no reason":     {with(func(m map[string]any) { m["justification"] = " " }), "justification is required"},
		"kind mismatch": {with(func(m map[string]any) { m["kind"] = "route" }), "does not match"},
		"two changes": {with(func(m map[string]any) {
			m["dockerfile"] = map[string]any{"content": "FROM x\n"}
		}), "exactly one change"},
		"number": {with(func(m map[string]any) { m["n"] = 0 }), "must be 1 or more"},
		"route token": {with(func(m map[string]any) {
			m["kind"], m["allowlist"], m["route"] = "route", nil, map[string]any{"host": "api.x.com", "token_ref": "A-B"}
		}), "token_ref"},
		"git ref": {with(func(m map[string]any) {
			m["kind"], m["allowlist"], m["git_rule"] = "git_rule", nil, map[string]any{"remote": "origin", "ref": "heads/x"}
		}), "must start with refs/"},
	} {
		if _, err := ReadProposal(strings.NewReader(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", name, err, tc.want)
		}
	}
}

func TestClean(t *testing.T) {
	if got := Clean("a\x1b[31mb\u202ec\n\xff"); got != `a\u001b[31mb\u202ec`+"\n\uFFFD" {
		t.Errorf("Clean = %q", got)
	}
}

// TestCheckDockerfile: only the current agent image is a base.
func TestCheckDockerfile(t *testing.T) {
	const img = "bottle.local/agent:1"
	if err := CheckDockerfile("# a comment\nFROM "+img+"\nENV A=1\nRUN apt-get install -y \\\n  jq\nCOPY --chown=1000 a /a\n", img); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct{ in, want string }{
		"other image":   {"FROM alpine\n", "only the bottle's current agent image"},
		"syntax":        {"# syntax=docker/dockerfile:1\nFROM " + img + "\n", "parser directive"},
		"escape":        {"# escape=`\nFROM " + img + "\n", "parser directive"},
		"two stages":    {"FROM " + img + " AS a\nFROM " + img + "\n", "2 FROM lines"},
		"copy from":     {"FROM " + img + "\nCOPY --from=alpine /x /x\n", "names another image"},
		"mount from":    {"FROM " + img + "\nRUN --mount=type=bind,from=alpine,target=/m true\n", "mount from another image"},
		"arg first":     {"ARG X\nFROM " + img + "\n", "ARG before FROM"},
		"platform":      {"FROM --platform=linux/arm64 " + img + "\n", "FROM flag"},
		"heredoc":       {"FROM " + img + "\nRUN <<EOF\ntrue\nEOF\n", "heredocs"},
		"none":          {"RUN true\n", "first instruction must be FROM"},
		"control chars": {"FROM " + img + "\nENV A=\x1b[2J\n", "control character"},
		"continued":     {"FROM \\\n alpine\n", "only the bottle's current agent image"},
	} {
		if err := CheckDockerfile(tc.in, img); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", name, err, tc.want)
		}
	}
}

func TestUnifiedDiff(t *testing.T) {
	a := "FROM x\nA\nB\nC\nD\nE\nF\nG\nH\n"
	b := "FROM x\nA\nB\nC\nD\nE\nF\nG\nH\nENV Z=1\n"
	want := "--- a\n+++ b\n@@ -7,3 +7,4 @@\n F\n G\n H\n+ENV Z=1\n"
	if got := UnifiedDiff("a", "b", a, b); got != want {
		t.Errorf("diff:\n%s\nwant:\n%s", got, want)
	}
	want = "--- a\n+++ b\n@@ -1,2 +1,2 @@\n-X\n+Y\n Z\n"
	if got := UnifiedDiff("a", "b", "X\nZ\n", "Y\nZ\n"); got != want {
		t.Errorf("diff:\n%s\nwant:\n%s", got, want)
	}
	// A change in the middle, between a common prefix and suffix.
	want = "--- a\n+++ b\n@@ -1,5 +1,5 @@\n A\n B\n-C\n+X\n D\n E\n"
	if got := UnifiedDiff("a", "b", "A\nB\nC\nD\nE\n", "A\nB\nX\nD\nE\n"); got != want {
		t.Errorf("diff:\n%s\nwant:\n%s", got, want)
	}
	if got := ListDiff("allowlist", []string{"a.com"}, []string{"a.com", "b.com"}); !strings.Contains(got, "before: a.com\n") || !strings.Contains(got, "after:  a.com, b.com\n") || !strings.Contains(got, "  + b.com\n") {
		t.Errorf("list diff:\n%s", got)
	}
}

// TestUnifiedDiffBounded: two hostile Dockerfiles of MaxDockerfileBytes of short lines
// (an LCS table of 34 GB) are diffed within a bounded allocation, every line shown.
func TestUnifiedDiffBounded(t *testing.T) {
	a := strings.Repeat("\n", MaxDockerfileBytes-1)
	b := strings.Repeat("x\n", MaxDockerfileBytes/2-1)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	got := UnifiedDiff("a", "b", "FROM x\n"+a+"END\n", "FROM x\n"+b+"END\n")
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 256<<20 {
		t.Errorf("the diff allocated %d MB", alloc>>20)
	}
	if n := strings.Count(got, "\n-"); n != MaxDockerfileBytes-1 {
		t.Errorf("%d removed lines, want %d", n, MaxDockerfileBytes-1)
	}
	if n := strings.Count(got, "\n+x"); n != MaxDockerfileBytes/2-1 {
		t.Errorf("%d added lines, want %d", n, MaxDockerfileBytes/2-1)
	}
}

// testServer runs a supervise server on fresh dirs with the given capabilities.
func testServer(t *testing.T, timeout time.Duration) (Dirs, *httptest.Server) {
	t.Helper()
	dirs := Dirs{Root: t.TempDir()}
	if err := dirs.Prepare(os.Getuid()); err != nil {
		t.Fatal(err)
	}
	caps := &Capabilities{Filter: "builtin", AgentImage: "img:1", Dockerfile: BaseDockerfile("img:1"), Allowlist: []string{"a.com"},
		Changes: egress.AllowlistChanges{Add: []egress.AllowlistGrant{{Pattern: "old.com", Until: time.Now().Add(-time.Minute)}}},
		Routes:  []RouteInfo{{Host: "api.x.com", Header: "Authorization"}}}
	if err := dirs.WriteCapabilities(caps); err != nil {
		t.Fatal(err)
	}
	s, err := NewServer(Config{ProposalsDir: dirs.Proposals(), HostDir: dirs.Host(), Timeout: egress.Duration(timeout)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	return dirs, hs
}

// waitEntry waits until the host sees proposal n.
func waitEntry(t *testing.T, dirs Dirs, n int) *Entry {
	t.Helper()
	for range 100 {
		if e, err := dirs.Entry(n); err == nil {
			return e
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("proposal %d never appeared", n)
	return nil
}

// TestMCPProposeApproved: over MCP, current_capabilities shows the allowlist in force
// (an expired grant is gone); a proposal waits until the host decides and returns the
// decision with the reason.
func TestMCPProposeApproved(t *testing.T) {
	dirs, hs := testServer(t, time.Minute)
	ctx := t.Context()
	client := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: hs.URL + MCPPath}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range tools.Tools {
		names = append(names, tl.Name)
	}
	if got := strings.Join(names, ","); got != "current_capabilities,propose_allowlist_change,propose_dockerfile_change,propose_git_rule_change,propose_route_change" {
		t.Errorf("tools %s", got)
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: ToolCapabilities})
	if err != nil {
		t.Fatal(err)
	}
	caps := encode(t, res.StructuredContent)
	if !strings.Contains(caps, `"allowlist":["a.com"]`) || !strings.Contains(caps, `"FROM img:1\n"`) || strings.Contains(caps, "old.com") {
		t.Errorf("capabilities %s", caps)
	}
	type result struct {
		res *mcp.CallToolResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: ToolProposeAllowlist, Arguments: map[string]any{"justification": "pip install", "add": []string{"pypi.org"}}})
		done <- result{r, err}
	}()
	e := waitEntry(t, dirs, 1)
	if e.Proposal == nil || e.Proposal.Allowlist.Add[0] != "pypi.org" || !e.Pending(time.Now()) {
		t.Fatalf("entry %+v", e)
	}
	select {
	case r := <-done:
		t.Fatalf("answered before the decision: %+v", r)
	case <-time.After(300 * time.Millisecond):
	}
	if err := dirs.Decide(Decision{N: 1, Decision: DecisionApproved, Reason: "fine for today"}); err != nil {
		t.Fatal(err)
	}
	if err := dirs.Decide(Decision{N: 1, Decision: DecisionDenied}); err == nil {
		t.Error("a proposal was decided twice")
	}
	r := <-done
	if r.err != nil || r.res.IsError {
		t.Fatalf("%v %+v", r.err, r.res)
	}
	if got := encode(t, r.res.StructuredContent); got != `{"decision":"approved","n":1,"reason":"fine for today"}` {
		t.Errorf("answer %s", got)
	}
	// A refused proposal is a tool error, and no file is written.
	r2, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: ToolProposeDockerfile, Arguments: map[string]any{"justification": "x", "content": "FROM alpine\n"}})
	if err != nil || !r2.IsError || !strings.Contains(r2.Content[0].(*mcp.TextContent).Text, "only the bottle's current agent image img:1 can be the base") {
		t.Errorf("dockerfile from another image: %v %+v", err, r2)
	}
	if es, _ := dirs.Entries(); len(es) != 1 {
		t.Errorf("%d proposal files, want 1", len(es))
	}
}

// TestJSONTimeoutDenies: the plain JSON API; nobody decides, so the proposal is denied
// when the timeout ends; a malformed one is refused at once.
func TestJSONTimeoutDenies(t *testing.T) {
	dirs, hs := testServer(t, 500*time.Millisecond)
	body := `{"kind":"route","justification":"need github","route":{"host":"api.github.com","token_ref":"GH_TOKEN"}}`
	start := time.Now()
	resp, err := http.Post(hs.URL+ProposePath, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var a Answer
	_ = json.NewDecoder(resp.Body).Decode(&a)
	resp.Body.Close()
	if resp.StatusCode != 200 || a.Decision != DecisionDenied || !strings.Contains(a.Reason, "denied by default") || time.Since(start) < 400*time.Millisecond {
		t.Errorf("status %d answer %+v after %v", resp.StatusCode, a, time.Since(start))
	}
	if e := waitEntry(t, dirs, 1); e.Pending(time.Now()) {
		t.Error("a timed-out proposal is still pending")
	}
	resp, err = http.Post(hs.URL+ProposePath, "application/json", strings.NewReader(`{"kind":"allowlist","justification":"x","allowlist":{"add":["a.com"]},"extra":1}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("malformed: status %d", resp.StatusCode)
	}
	if _, err := os.Stat(filepath.Join(dirs.Proposals(), "2.json")); err == nil {
		t.Error("a malformed proposal was written")
	}
	resp, err = http.Get(hs.URL + CapabilitiesPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v CapabilitiesView
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || len(v.Routes) != 1 || v.Routes[0].Host != "api.github.com" && v.Routes[0].Host != "api.x.com" {
		t.Errorf("capabilities %+v %v", v, err)
	}
}

// TestEntriesUntrusted: the host skips what is not a proposal file and refuses files
// that are not valid, a symlink and a FIFO (which must not block) among them.
func TestEntriesUntrusted(t *testing.T) {
	dirs := Dirs{Root: t.TempDir()}
	if err := dirs.Prepare(os.Getuid()); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(t.TempDir(), "secret.json")
	m := validProposal()
	m["n"] = 3
	if err := os.WriteFile(secret, []byte(encode(t, m)), 0o600); err != nil {
		t.Fatal(err)
	}
	m["n"] = 2
	files := map[string]string{"1.json": encode(t, validProposal()), "2.json": encode(t, validProposal()), "01.json": "x", ".1.json.tmp-1": "x", "4.json": "{"}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dirs.Proposals(), name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(secret, filepath.Join(dirs.Proposals(), "3.json")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dirs.Proposals(), "5.json"), 0o644); err != nil {
		t.Fatal(err)
	}
	es, err := dirs.Entries()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range es {
		got = append(got, encode(t, []any{e.N, e.Proposal != nil, e.Refused != ""}))
	}
	if strings.Join(got, " ") != "[1,true,false] [2,false,true] [3,false,true] [4,false,true] [5,false,true]" {
		t.Errorf("entries %v", got)
	}
}

// TestProposalsRecorded: every proposal goes to the audit trail with the answer the agent
// got: a timed-out one as denied with its number, an invalid one as refused (number 0).
func TestProposalsRecorded(t *testing.T) {
	dirs, _ := testServer(t, time.Second)
	rec := &testutil.Recorder{}
	s, err := NewServer(Config{ProposalsDir: dirs.Proposals(), HostDir: dirs.Host(), Timeout: egress.Duration(200 * time.Millisecond), Recorder: rec}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Propose(t.Context(), Request{Kind: "allowlist", Justification: "docs", Allowlist: &AllowlistChange{Add: []string{"docs.test"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Propose(t.Context(), Request{Kind: "allowlist", Justification: "bad", Allowlist: &AllowlistChange{Add: []string{"not a host"}}}); err == nil {
		t.Fatal("an invalid host name was accepted")
	}
	got := rec.Wait(t, 2)
	want := []audit.Proposal{
		{N: 1, Change: "allowlist", Justification: "docs", Outcome: DecisionDenied},
		{N: 0, Change: "allowlist", Justification: "bad", Outcome: "refused"},
	}
	for i, e := range got {
		p, ok := e.(audit.Proposal)
		if !ok || p.N != want[i].N || p.Change != want[i].Change || p.Justification != want[i].Justification || p.Outcome != want[i].Outcome || p.Reason == "" {
			t.Errorf("record %d: %+v, want %+v with a reason", i, e, want[i])
		}
	}
}

// TestWaitsWhileTheHostApplies: a proposal whose approval is being applied when its
// deadline passes (an image build) gets the approval, not a default denial; a marker
// left by a killed host is waited for at most MaxApplying.
func TestWaitsWhileTheHostApplies(t *testing.T) {
	dirs, _ := testServer(t, time.Second)
	s, err := NewServer(Config{ProposalsDir: dirs.Proposals(), HostDir: dirs.Host(), Timeout: egress.Duration(300 * time.Millisecond)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	answer := make(chan Answer, 1)
	go func() {
		a, err := s.Propose(t.Context(), Request{Kind: "allowlist", Justification: "docs", Allowlist: &AllowlistChange{Add: []string{"docs.test"}}})
		if err != nil {
			t.Error(err)
		}
		answer <- a
	}()
	waitEntry(t, dirs, 1)
	done, err := dirs.MarkApplying(1)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-answer:
		t.Fatalf("answered while the host applies: %+v", a)
	case <-time.After(800 * time.Millisecond): // well past the deadline
	}
	if err := dirs.Decide(Decision{N: 1, Decision: DecisionApproved}); err != nil {
		t.Fatal(err)
	}
	done()
	if a := <-answer; a.Decision != DecisionApproved {
		t.Errorf("answer %+v, want approved", a)
	}
	if _, err := os.Stat(dirs.applying(1)); !os.IsNotExist(err) {
		t.Errorf("the marker is left: %v", err)
	}

	// A left marker: waited for until the deadline plus MaxApplying, not longer.
	if _, err := dirs.MarkApplying(2); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now()
	if !s.applying(dirs.applying(2), deadline) {
		t.Error("a fresh marker is not waited for")
	}
	s.now = func() time.Time { return deadline.Add(MaxApplying) }
	if s.applying(dirs.applying(2), deadline) {
		t.Error("a marker is waited for past MaxApplying")
	}
}

// TestProposalPinned: once the host has read a proposal, a rewrite by the sidecar makes
// it a refused entry (a person approves what they were shown).
func TestProposalPinned(t *testing.T) {
	dirs := Dirs{Root: t.TempDir()}
	if err := dirs.Prepare(os.Getuid()); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dirs.Proposals(), "1.json")
	if err := os.WriteFile(file, []byte(encode(t, validProposal())), 0o644); err != nil {
		t.Fatal(err)
	}
	if e, err := dirs.Entry(1); err != nil || e.Proposal == nil {
		t.Fatalf("entry %+v %v", e, err)
	}
	m := validProposal()
	m["justification"] = "something else"
	if err := os.WriteFile(file, []byte(encode(t, m)), 0o644); err != nil {
		t.Fatal(err)
	}
	e, err := dirs.Entry(1)
	if err != nil || e.Proposal != nil || !strings.Contains(e.Refused, "changed after bottle first read it") {
		t.Errorf("rewritten proposal: %+v %v", e, err)
	}
	// The same bytes again are fine.
	if err := os.WriteFile(file, []byte(encode(t, validProposal())), 0o644); err != nil {
		t.Fatal(err)
	}
	if e, err := dirs.Entry(1); err != nil || e.Proposal == nil {
		t.Errorf("restored proposal: %+v %v", e, err)
	}
}

// TestPinRace: two host readers pinning different versions of one proposal at once:
// the first pin stands, and the other is refused (never replaces it).
func TestPinRace(t *testing.T) {
	for i := range 50 {
		dirs := Dirs{Root: t.TempDir()}
		if err := dirs.Prepare(os.Getuid()); err != nil {
			t.Fatal(err)
		}
		versions := []*Proposal{{N: 1, Kind: "allowlist", Justification: "a"}, {N: 1, Kind: "allowlist", Justification: "b"}}
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for k, p := range versions {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[k] = dirs.pin(p)
			}()
		}
		wg.Wait()
		if (errs[0] == nil) == (errs[1] == nil) {
			t.Fatalf("round %d: errors %v, want exactly one pin to stand", i, errs)
		}
		won := versions[0]
		if errs[0] != nil {
			won = versions[1]
		}
		want, _ := json.Marshal(won)
		if got, err := os.ReadFile(dirs.pinned(1)); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("round %d: pinned %s, %v; want the version that stood", i, got, err)
		}
	}
}
