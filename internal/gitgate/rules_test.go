package gitgate

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/reload"
)

// TestRulesFile: approved push rules in RulesFile count beside the configured ones while
// git-gate serves; a file naming an undeclared remote or a bad ref is refused and
// leaves the rules in force.
func TestRulesFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "git-rules.json")
	g, err := New(Config{RulesFile: file, Remotes: []Remote{{Name: "origin", URL: "https://host.example/r.git", TokenEnv: "T"}}},
		func(string) string { return "tok" }, nil)
	if err != nil {
		t.Fatal(err)
	}
	remote := g.remotes["origin"]
	create := func(ref string) bool {
		return judge(g.rulesOf(remote), remote.readOnly, &refUpdate{Ref: ref, Old: strings.Repeat("0", 40), New: strings.Repeat("a", 40), Action: "create"}).allowed
	}
	if !create("refs/heads/bottle/x") || create("refs/heads/feature/x") {
		t.Fatal("before any change")
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	watching := make(chan struct{})
	go func() { g.rules.Watch(ctx, g.log); close(watching) }()
	if err := os.WriteFile(file, []byte(`{"remotes":{"origin":[{"ref":"refs/heads/feature/*"}]}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * reload.Interval)
	for !create("refs/heads/feature/x") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !create("refs/heads/feature/x") || !create("refs/heads/bottle/x") {
		t.Error("the approved rule is not in force")
	}
	cancel()
	<-watching
	for _, bad := range []string{`{"remotes":{"other":[{"ref":"refs/heads/x"}]}}`, `{"remotes":{"origin":[{"ref":"heads/x"}]}}`, `{"remotes":{},"x":1}`} {
		if err := os.WriteFile(file, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := g.rules.Load(); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
	if !create("refs/heads/feature/x") {
		t.Error("a refused file changed the rules in force")
	}
}
