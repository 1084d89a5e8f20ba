package runtime

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/state"
	"github.com/bottle-dev/bottle/internal/supervise"
)

// superviseFixture records a supervised bottle whose manifest has a commented one-line
// allowlist, and writes proposals into its proposals dir as the sidecar would.
func superviseFixture(t *testing.T) (Options, names.Identity, supervise.Dirs, func(p supervise.Proposal)) {
	t.Helper()
	dir := t.TempDir()
	opts := Options{StateDir: dir}
	id := names.Identity("sup-abc123")
	man := filepath.Join(dir, "bottle.toml")
	if err := os.WriteFile(man, []byte("# my bottles\n[agents.sup]\nbottle = \"b\"\nimage = \"img:1\"\n\n[bottles.b]\nallowlist = [\"a.example\"] # keep this\nfilter = \"builtin\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEngine(opts.withDefaults(), nil, nil)
	if err := e.store.Create(&state.Meta{Identity: id, Agent: "sup", ManifestPath: man}); err != nil {
		t.Fatal(err)
	}
	dirs := plan.SuperviseDirs(dir, id)
	if err := dirs.Prepare(os.Getuid()); err != nil {
		t.Fatal(err)
	}
	if err := dirs.WriteCapabilities(&supervise.Capabilities{Filter: plan.FilterBuiltin, AgentImage: "img:1", Dockerfile: "FROM img:1\n", Allowlist: []string{"a.example"},
		Git: []supervise.GitInfo{{Name: "origin", Push: []supervise.GitRuleChange{{Remote: "origin", Ref: "refs/heads/bottle/*"}}}}}); err != nil {
		t.Fatal(err)
	}
	write := func(p supervise.Proposal) {
		t.Helper()
		p.Created, p.Deadline = time.Now(), time.Now().Add(time.Minute)
		data, _ := json.Marshal(p)
		if err := os.WriteFile(filepath.Join(dirs.Proposals(), strconv.Itoa(p.N)+".json"), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return opts, id, dirs, write
}

// TestApproveAllowlist: an approval writes the grant (with its end) where the filter
// reads it, answers the agent, logs the decision; a decided proposal is not decided
// again; --save edits the manifest's allowlist line and keeps its comments.
func TestApproveAllowlist(t *testing.T) {
	opts, id, dirs, write := superviseFixture(t)
	write(supervise.Proposal{N: 1, Kind: supervise.KindAllowlist, Justification: "pip", Allowlist: &supervise.AllowlistChange{Add: []string{"pypi.example"}}})
	write(supervise.Proposal{N: 2, Kind: supervise.KindAllowlist, Justification: "more", Allowlist: &supervise.AllowlistChange{Add: []string{"files.example"}, Remove: []string{"a.example"}}})
	write(supervise.Proposal{N: 3, Kind: supervise.KindRoute, Justification: "gh", Route: &supervise.RouteChange{Host: "api.example", TokenRef: "GH"}})

	view := ProposalView(opts, id, mustEntry(t, dirs, 2), time.Now())
	for _, want := range []string{"#2 allowlist pending", "allowlist before: a.example", "allowlist after:  files.example", "+ files.example", "- a.example"} {
		if !strings.Contains(view, want) {
			t.Errorf("view lacks %q:\n%s", want, view)
		}
	}
	got, err := Approve(t.Context(), opts, id, 1, ApproveOptions{For: time.Hour, Reason: "today"})
	if err != nil {
		t.Fatal(err)
	}
	var ch egress.AllowlistChanges
	data, err := os.ReadFile(filepath.Join(dirs.Changes(), supervise.FilterChangesFile))
	if err == nil {
		err = json.Unmarshal(data, &ch)
	}
	if err != nil || len(ch.Add) != 1 || ch.Add[0].Pattern != "pypi.example" || !ch.Add[0].Until.Equal(got.Until) || time.Until(got.Until) < 59*time.Minute {
		t.Errorf("filter changes %+v (%v), decision %+v", ch, err, got)
	}
	if _, err := Approve(t.Context(), opts, id, 1, ApproveOptions{}); err == nil || !strings.Contains(err.Error(), "already approved") {
		t.Errorf("second approval: %v", err)
	}
	if _, err := Deny(opts, id, 1, ""); err == nil {
		t.Error("denied an approved proposal")
	}
	if _, err := Approve(t.Context(), opts, id, 3, ApproveOptions{For: time.Minute}); err == nil || !strings.Contains(err.Error(), "--for applies to allowlist proposals") {
		t.Errorf("route approval --for: %v", err)
	}
	if _, err := Approve(t.Context(), opts, id, 2, ApproveOptions{Save: true, For: time.Minute}); err == nil {
		t.Error("--save with --for accepted")
	}
	saved, err := Approve(t.Context(), opts, id, 2, ApproveOptions{Save: true})
	if err != nil || !saved.Saved {
		t.Fatalf("save: %+v %v", saved, err)
	}
	m, _ := os.ReadFile(filepath.Join(opts.StateDir, "bottle.toml"))
	if !strings.Contains(string(m), "# my bottles\n") || !strings.Contains(string(m), "allowlist = ['files.example'] # keep this\n") {
		t.Errorf("manifest after --save:\n%s", m)
	}
	caps, _ := dirs.ReadCapabilities()
	if got := strings.Join(caps.Effective(time.Now()), ","); got != "pypi.example,files.example" {
		t.Errorf("effective allowlist %s", got)
	}
	if _, err := Deny(opts, id, 3, "no \x1b[2J"); err != nil {
		t.Fatal(err)
	}
	write(supervise.Proposal{N: 4, Kind: supervise.KindGitRule, Justification: "feature", GitRule: &supervise.GitRuleChange{Remote: "origin", Ref: "refs/heads/feature/*", Force: true}})
	write(supervise.Proposal{N: 5, Kind: supervise.KindGitRule, Justification: "other", GitRule: &supervise.GitRuleChange{Remote: "nope", Ref: "refs/heads/x"}})
	if got := ProposalView(opts, id, mustEntry(t, dirs, 4), time.Now()); !strings.Contains(got, "+ refs/heads/feature/* +force") {
		t.Errorf("git rule view:\n%s", got)
	}
	if _, err := Approve(t.Context(), opts, id, 4, ApproveOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Approve(t.Context(), opts, id, 5, ApproveOptions{}); err == nil || !strings.Contains(err.Error(), `no git remote "nope"`) {
		t.Errorf("rule for an unknown remote: %v", err)
	}
	rules, _ := os.ReadFile(filepath.Join(dirs.Changes(), supervise.GitRulesFile))
	if !strings.Contains(string(rules), `"ref": "refs/heads/feature/*"`) || !strings.Contains(string(rules), `"force": true`) {
		t.Errorf("git rules file:\n%s", rules)
	}
	trail, _ := os.ReadFile(filepath.Join(audit.Dir(opts.StateDir, id), "host.jsonl"))
	if n := strings.Count(string(trail), `"kind":"decision"`); n != 4 || strings.Contains(string(trail), "\x1b") {
		t.Errorf("audit trail with %d decisions:\n%s", n, trail)
	}
	if got := ProposalView(opts, id, mustEntry(t, dirs, 3), time.Now()); !strings.Contains(got, `reason: no \u001b[2J`) {
		t.Errorf("denial reason not cleaned:\n%s", got)
	}
}

func mustEntry(t *testing.T, dirs supervise.Dirs, n int) supervise.Entry {
	t.Helper()
	e, err := dirs.Entry(n)
	if err != nil {
		t.Fatal(err)
	}
	return *e
}

// TestBuiltFrom: after a build the agent sees its new image as the only base, and a
// Dockerfile built on what it is shown passes the build's rules.
func TestBuiltFrom(t *testing.T) {
	got := builtFrom("bottle.local/coder-abc123:1", "FROM busybox:e2e\nENV A=1\n")
	want := "# bottle.local/coder-abc123:1 was built from this approved Dockerfile:\n#   FROM busybox:e2e\n#   ENV A=1\nFROM bottle.local/coder-abc123:1\n"
	if got != want {
		t.Fatalf("builtFrom:\n%s\nwant:\n%s", got, want)
	}
	if err := supervise.CheckDockerfile(got+"RUN true\n", "bottle.local/coder-abc123:1"); err != nil {
		t.Errorf("a Dockerfile on the shown base is refused: %v", err)
	}
}

// TestDecisionsAreSerialized: while an approval holds the bottle's decision lock (it may
// build an image for minutes), a deny waits, and then finds the proposal decided instead
// of denying a change that is being put in force.
func TestDecisionsAreSerialized(t *testing.T) {
	opts, id, dirs, write := superviseFixture(t)
	write(supervise.Proposal{N: 1, Kind: supervise.KindAllowlist, Justification: "pip", Allowlist: &supervise.AllowlistChange{Add: []string{"pypi.example"}}})
	unlock, err := lockDecisions(dirs)
	if err != nil {
		t.Fatal(err)
	}
	denied := make(chan error, 1)
	go func() { _, err := Deny(opts, id, 1, "no"); denied <- err }()
	select {
	case err := <-denied:
		t.Fatalf("deny did not wait for the approval in progress: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	// The approval in progress decides (as Approve does under the lock), then unlocks.
	if err := dirs.Decide(supervise.Decision{N: 1, Decision: supervise.DecisionApproved, Decided: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	unlock()
	if err := <-denied; err == nil || !strings.Contains(err.Error(), "already") {
		t.Errorf("deny after the approval: %v, want a refusal (already decided)", err)
	}
}
