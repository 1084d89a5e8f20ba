package gitgate_test

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/bottle-dev/bottle/internal/gitgate"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/plan"
)

// TestPlanCarriesPushOptions: a remote's push_options reach git-gate's config file,
// which the sidecar decodes strictly into gitgate.Config.
func TestPlanCarriesPushOptions(t *testing.T) {
	const doc = `[agents.a]
bottle = "b"
image = "img"
[[bottles.b.git]]
name = "origin"
url = "https://git.example/me/repo.git"
token_ref = "GIT_TOKEN"
push_options = ["ci.skip", "merge_request.create"]
[[bottles.b.git]]
name = "plain"
url = "https://git.example/me/plain.git"
token_ref = "GIT_TOKEN"
`
	m, err := manifest.Load("bottle.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Build(plan.Input{
		Manifest: m, ManifestPath: "/home/me/bottle.toml", AgentName: "a",
		LookupEnv: func(k string) (string, bool) { return "tok", k == "GIT_TOKEN" },
		NewSuffix: func() (string, error) { return "abc123", nil },
		Workspace: "/home/me/project", StateDir: "/var/lib/bottle",
		Internal: netip.MustParsePrefix("10.213.4.0/24"), Egress: netip.MustParsePrefix("10.213.5.0/24"),
		SidecarImage: "bottle.local/sidecar:test", SidecarResolvConf: "nameserver 192.0.2.53\n",
	})
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(p.StageFiles, func(f plan.StageFile) bool { return f.Name == "git-gate/config.json" })
	if i < 0 {
		t.Fatal("no git-gate config in the plan")
	}
	var cfg gitgate.Config
	dec := json.NewDecoder(strings.NewReader(p.StageFiles[i].Content))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Remotes) != 2 || !slices.Equal(cfg.Remotes[0].PushOptions, []string{"ci.skip", "merge_request.create"}) || cfg.Remotes[1].PushOptions != nil {
		t.Fatalf("remotes in git-gate's config: %+v", cfg.Remotes)
	}
}
