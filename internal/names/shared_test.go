package names_test

// These tests show that the rules internal/names owns are the ones the other packages
// apply: the types are shared (a copy would not compile here), and every package that
// reads a host name, an agent name or an identity accepts exactly what names accepts.

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/state"
)

// The identity, attachment and hosts-entry types of plan and state are names' own.
var (
	_ names.Identity     = plan.Plan{}.Identity
	_ names.Identity     = plan.Input{}.Identity
	_ names.Identity     = state.Meta{}.Identity
	_ []names.Attachment = plan.Container{}.Attachments
	_ []names.Attachment = state.Container{}.Attachments
	_ []names.HostEntry  = plan.Input{}.SidecarHosts
	_ []names.HostEntry  = state.SidecarSettings{}.Hosts
)

// hostCorpus holds names each grammar once disagreed on, and the usual hostile forms.
var hostCorpus = []string{
	"example.com", "API.Example.com", "example.com.", "a", "_svc.example.com", "x_y.example.com",
	"xn--bcher-kva.example", "bücher.example", "127.0.0.1", "127.1", "2130706433", "0x7f000001",
	"1.2.3.4.nip.io", "a..b", "-a.com", "a-.com", "a.com:443", "http://a.com", "[::1]", "::1",
	"ex ample.com", "a/b.com", strings.Repeat("a", 63) + ".com", strings.Repeat("a", 64) + ".com",
	strings.Repeat("a.", 126) + "com", "", ".", "com.", "a.b-.c", "a.1b",
}

func namesAccepts(h string) bool { return names.CheckHostName(names.NormalizeHost(h)) == nil }

func TestOneHostNameGrammar(t *testing.T) {
	for _, h := range hostCorpus {
		want := namesAccepts(h)
		_, err := egress.NewAllowlist([]string{h})
		if got := err == nil; got != want {
			t.Errorf("egress allowlist %q: accepted %v, names accepts %v (%v)", h, got, want, err)
		}
		_, err = manifest.Load("bottle.toml", []byte(minimalManifest("shell", fmt.Sprintf("allowlist = [%s]", strconv.Quote(h)))))
		if got := err == nil; got != want {
			t.Errorf("manifest allowlist %q: accepted %v, names accepts %v (%v)", h, got, want, err)
		}
		_, err = names.ParseHostEntry(h + ":192.0.2.1")
		if got := err == nil; got != want {
			t.Errorf("--add-host %q: accepted %v, names accepts %v (%v)", h, got, want, err)
		}
	}
}

func TestOneAgentNameAndIdentityRule(t *testing.T) {
	for _, a := range []string{"shell", "claude-2", "a", "Shell", "2a", "a_b", "a-123456", "a-abcdef-x", strings.Repeat("a", 24), strings.Repeat("a", 25)} {
		want := names.CheckAgentName(a) == nil
		m, err := manifest.Load("bottle.toml", []byte(minimalManifest(a, "")))
		if got := err == nil; got != want {
			t.Errorf("manifest agent %q: accepted %v, names accepts %v (%v)", a, got, want, err)
			continue
		}
		if !want {
			continue
		}
		// A resumed plan takes exactly the identities names parses.
		for _, id := range []string{a + "-00ff00", a + "-00FF00", a + "-00ff0", "x" + a + "-00ff00"} {
			_, perr := names.ParseIdentity(id)
			_, berr := plan.Build(planInput(m, a, names.Identity(id)))
			if perr != nil && berr == nil {
				t.Errorf("plan resumed identity %q that names refuses", id)
			}
			if perr == nil && berr != nil && names.Identity(id).Agent() == a {
				t.Errorf("plan refused identity %q: %v", id, berr)
			}
		}
	}
}

// TestOneInternalRangeList checks that both filters' rendered configs carry exactly
// egress.DefaultInternal.
func TestOneInternalRangeList(t *testing.T) {
	m, err := manifest.Load("bottle.toml", []byte(minimalManifest("shell", `allowlist = ["example.com"]`)))
	if err != nil {
		t.Fatal(err)
	}
	for _, filter := range []string{plan.FilterBuiltin, plan.FilterPipelock} {
		in := planInput(m, "shell", "")
		in.FilterOverride = filter
		in.PipelockPresent = true
		p, err := plan.Build(in)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, f := range p.StageFiles {
			switch f.Name {
			case "filter/filter.json":
				var cfg egress.FilterConfig
				if err := json.Unmarshal([]byte(f.Content), &cfg); err != nil {
					t.Fatal(err)
				}
				got = cfg.Internal
			case "filter/pipelock.yaml":
				_, list, _ := strings.Cut(f.Content, "internal:\n")
				for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
					s, err := strconv.Unquote(strings.TrimPrefix(strings.TrimSpace(line), "- "))
					if err != nil {
						t.Fatalf("pipelock internal line %q: %v", line, err)
					}
					got = append(got, s)
				}
			}
		}
		if !slices.Equal(got, egress.DefaultInternal) {
			t.Errorf("%s filter's internal ranges differ from egress.DefaultInternal:\n got %v\nwant %v", filter, got, egress.DefaultInternal)
		}
	}
}

func minimalManifest(agent, bottleLines string) string {
	return fmt.Sprintf("[agents.%s]\nbottle = \"b\"\nimage = \"bottle.local/test:1\"\ncommand = [\"/bin/sh\"]\n\n[bottles.b]\n%s\n", strconv.Quote(agent), bottleLines)
}

func planInput(m *manifest.Manifest, agent string, id names.Identity) plan.Input {
	return plan.Input{
		Manifest: m, ManifestPath: "bottle.toml", AgentName: agent, Identity: id,
		NewSuffix:         func() (string, error) { return "abc123", nil },
		Workspace:         "/home/me/project",
		StateDir:          "/var/lib/bottle",
		Internal:          netip.MustParsePrefix("10.213.4.0/24"),
		Egress:            netip.MustParsePrefix("10.213.5.0/24"),
		SidecarImage:      "bottle.local/sidecar:test",
		SidecarResolvConf: "nameserver 192.0.2.53\n",
	}
}
