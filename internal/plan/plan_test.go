package plan

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
)

var update = flag.Bool("update", false, "rewrite golden files")

func load(t *testing.T, path string) *manifest.Manifest {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Load(path, data)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func input(m *manifest.Manifest, agent string, env map[string]string) Input {
	return Input{
		Manifest:          m,
		ManifestPath:      "bottle.toml",
		AgentName:         agent,
		LookupEnv:         func(k string) (string, bool) { v, ok := env[k]; return v, ok },
		NewSuffix:         func() (string, error) { return "abc123", nil },
		Workspace:         "/home/me/project",
		StateDir:          "/var/lib/bottle",
		Internal:          netip.MustParsePrefix("10.213.4.0/24"),
		Egress:            netip.MustParsePrefix("10.213.5.0/24"),
		SidecarImage:      "bottle.local/sidecar:test",
		SidecarResolvConf: "nameserver 192.0.2.53\n",
		ReadFile: func(p string) ([]byte, error) {
			if v, ok := env["file:"+p]; ok {
				return []byte(v), nil
			}
			return nil, fmt.Errorf("open %s: no such file", p)
		},
	}
}

func TestGoldenPlans(t *testing.T) {
	env := map[string]string{
		"CLAUDE_CODE_OAUTH_TOKEN": "sk-golden-oauth", "MY_CLAUDE_OAUTH": "sk-golden-2",
		"GITHUB_TOKEN": "ghp-golden", "GITHUB_USER": "octo-golden-user", "UPSTREAM_GIT_TOKEN": "upstream-golden",
		"file:/home/me/.ssh/bottle_ed25519": "-----BEGIN OPENSSH PRIVATE KEY-----golden-key-----",
	}
	for _, tc := range []struct{ file, agent string }{
		{"claude.toml", "claude"}, {"minimal.toml", "shell"}, {"team.toml", "coder"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			m := load(t, filepath.Join("../../examples", tc.file))
			p, err := Build(input(m, tc.agent, env))
			if err != nil {
				t.Fatal(err)
			}
			got, err := p.JSON()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(got, []byte(`=<redacted>"`)) && tc.file != "minimal.toml" {
				t.Error("no <redacted> value in the plan output")
			}
			golden := filepath.Join("testdata", strings.TrimSuffix(tc.file, ".toml")+".golden.json")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run `go test ./internal/plan -update` to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("plan differs from %s (run with -update after checking the change):\n%s", golden, firstDiff(string(want), string(got)))
			}
			for _, secret := range env {
				if bytes.Contains(got, []byte(secret)) {
					t.Errorf("secret %q in plan output", secret)
				}
			}
		})
	}
}

func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) && i < len(bl); i++ {
		if al[i] != bl[i] {
			return fmt.Sprintf("line %d:\n- %s\n+ %s", i+1, al[i], bl[i])
		}
	}
	return fmt.Sprintf("length %d vs %d lines", len(al), len(bl))
}

func envOf(c *Container) map[string]string {
	out := map[string]string{}
	for _, kv := range c.Spec.Process.Env {
		k, v, _ := strings.Cut(kv, "=")
		out[k] = v
	}
	return out
}

func TestClaudeEnvRules(t *testing.T) {
	m := load(t, "../../examples/claude.toml")
	a := m.Agents["claude"]
	a.Env = map[string]string{"DISABLE_ERROR_REPORTING": "0", "CLAUDE_CODE_OAUTH_TOKEN_X": "lit"}
	p, err := Build(input(m, "claude", map[string]string{"CLAUDE_CODE_OAUTH_TOKEN": "sk-real"}))
	if err != nil {
		t.Fatal(err)
	}
	env := envOf(p.Container(names.RoleAgent))
	want := map[string]string{
		"CLAUDE_CODE_OAUTH_TOKEN":                  ClaudePlaceholderToken,
		"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
		"DISABLE_ERROR_REPORTING":                  "0", // already set: kept
		"ANTHROPIC_BASE_URL":                       "http://egress-proxy:9000/api.anthropic.com",
		"HTTPS_PROXY":                              "http://filter:8888",
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("agent env %s=%q, want %q", k, env[k], v)
		}
	}
	if got := envOf(p.Container(names.RoleEgressProxy))["CLAUDE_CODE_OAUTH_TOKEN"]; got != "sk-real" {
		t.Errorf("egress-proxy env token = %q, want the real one", got)
	}
}

func TestNoClaudePlaceholderWithoutRole(t *testing.T) {
	m := load(t, "../../examples/claude.toml")
	m.Bottles["claude"].EgressProxy.Routes[0].Role = nil
	p, err := Build(input(m, "claude", map[string]string{"CLAUDE_CODE_OAUTH_TOKEN": "sk-real"}))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := envOf(p.Container(names.RoleAgent))["CLAUDE_CODE_OAUTH_TOKEN"]; ok {
		t.Error("agent got CLAUDE_CODE_OAUTH_TOKEN without a claude_code_oauth route")
	}
}

func TestForwardedEnv(t *testing.T) {
	m := load(t, "../../examples/team.toml")
	in := input(m, "coder", map[string]string{"MY_CLAUDE_OAUTH": "x", "GITHUB_TOKEN": "y", "UPSTREAM_GIT_TOKEN": "z", "file:/home/me/.ssh/bottle_ed25519": "k"})
	in.Strict = true
	if _, err := Build(in); err == nil || !strings.Contains(err.Error(), "GITHUB_USER") {
		t.Fatalf("unset forwarded name: err %v, want one naming GITHUB_USER", err)
	}
	in.Strict = false
	p, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(p.Unresolved, ",") != "GITHUB_USER" {
		t.Errorf("unresolved %v, want [GITHUB_USER] (TZ is optional)", p.Unresolved)
	}
	in.LookupEnv = func(k string) (string, bool) { return "v-" + k, true }
	in.Strict = true
	p, err = Build(in)
	if err != nil {
		t.Fatal(err)
	}
	env := envOf(p.Container(names.RoleAgent))
	if env["GITHUB_USER"] != "v-GITHUB_USER" || env["TZ"] != "v-TZ" || env["EDITOR"] != "vi" {
		t.Errorf("agent env lacks forwarded/literal values: %v", env)
	}
	if _, ok := env["GITHUB_TOKEN"]; ok {
		t.Error("routed credential GITHUB_TOKEN reached the agent")
	}
}

func TestIdentity(t *testing.T) {
	m := load(t, "../../examples/claude.toml")
	in := input(m, "claude", nil)
	p, err := Build(in)
	if err != nil || p.Identity != "claude-abc123" {
		t.Fatalf("fresh identity %q, %v", p.Identity, err)
	}
	in.Identity = "claude-00ff00"
	in.NewSuffix = nil
	if p, err = Build(in); err != nil || p.Identity != "claude-00ff00" || p.Container(names.RoleAgent).Name != "bottle-claude-00ff00-agent" {
		t.Fatalf("resume identity: %+v %v", p, err)
	}
	for _, bad := range []string{"other-00ff00", "claude-XYZ", "claude"} {
		in.Identity = names.Identity(bad)
		if _, err := Build(in); err == nil {
			t.Errorf("identity %q accepted", bad)
		}
	}
	in.Identity = ""
	in.NewSuffix = func() (string, error) { return "not-hex", nil }
	if _, err := Build(in); err == nil {
		t.Error("malformed suffix accepted")
	}
}

func TestSpecHardening(t *testing.T) {
	m := load(t, "../../examples/team.toml")
	p, err := Build(input(m, "coder", map[string]string{"file:/home/me/.ssh/bottle_ed25519": "k"}))
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string]bool{}
	for _, c := range p.Containers {
		roles[c.Role] = true
		s := c.Spec
		if !s.Process.NoNewPrivileges {
			t.Errorf("%s: no_new_privileges off", c.Role)
		}
		caps := s.Process.Capabilities
		want := 0
		if c.Role == names.RoleGitGate {
			want = 1 // CAP_NET_BIND_SERVICE for port 80, nothing else
			if caps.Bounding[0] != "CAP_NET_BIND_SERVICE" {
				t.Errorf("git-gate capabilities %v", caps.Bounding)
			}
		}
		if len(caps.Bounding) != want || len(caps.Effective) != want || len(caps.Permitted) != want {
			t.Errorf("%s: capabilities %v", c.Role, caps)
		}
		if s.Process.User.UID == 0 {
			t.Errorf("%s: runs as root", c.Role)
		}
		if c.Role != names.RoleAgent && !s.Root.Readonly {
			t.Errorf("%s: sidecar rootfs writable", c.Role)
		}
		if len(s.Linux.MaskedPaths) == 0 || len(s.Linux.ReadonlyPaths) == 0 {
			t.Errorf("%s: no masked/read-only paths", c.Role)
		}
		for _, a := range c.Attachments {
			if a.Network == names.NetEgress && c.Role == names.RoleAgent {
				t.Error("agent attached to the egress network")
			}
		}
		if c.Labels[names.LabelIdentity] != p.Identity.String() || c.Labels[names.LabelRole] != c.Role || c.Labels[names.LabelName] != c.Name {
			t.Errorf("%s: labels %v", c.Role, c.Labels)
		}
	}
	for _, r := range []string{names.RoleAgent, names.RoleFilter, names.RoleEgressProxy, names.RoleGitGate, names.RoleSupervise} {
		if !roles[r] {
			t.Errorf("team plan lacks %s", r)
		}
	}
	if mem := p.Container(names.RoleAgent).Spec.Linux.Resources.Memory; mem == nil || *mem.Limit != 4096<<20 {
		t.Errorf("agent memory limit %v, want 4096 MiB", mem)
	}
}

func TestMinimalPlanHasNoOptionalSidecars(t *testing.T) {
	p, err := Build(input(load(t, "../../examples/minimal.toml"), "shell", nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Containers) != 2 || p.Container(names.RoleFilter) == nil {
		t.Errorf("minimal plan containers: %d, want agent + filter", len(p.Containers))
	}
	if len(p.Allowlist) != 0 || !strings.Contains(p.AllowlistSummary, "empty") {
		t.Errorf("allowlist %v / %q", p.Allowlist, p.AllowlistSummary)
	}
}

func TestFilterChoice(t *testing.T) {
	m := load(t, "../../examples/claude.toml")
	in := input(m, "claude", nil)
	for _, tc := range []struct {
		override string
		present  bool
		want     string
	}{{"", false, FilterBuiltin}, {"", true, FilterPipelock}, {"builtin", true, FilterBuiltin}, {"pipelock", false, FilterPipelock}} {
		in.FilterOverride, in.PipelockPresent = tc.override, tc.present
		p, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		if p.Filter != tc.want {
			t.Errorf("override %q present %v: filter %s, want %s", tc.override, tc.present, p.Filter, tc.want)
		}
	}
}

// TestPipelockConfig pins the exact config shape that pipelock v2.3.0 (the pinned
// DefaultPipelockImage) accepts with its strict parser and runs in strict mode; a change
// here must be checked against that binary (`pipelock check --config FILE`).
func TestPipelockConfig(t *testing.T) {
	const tail = "forward_proxy:\n  enabled: true\n  max_tunnel_seconds: 14400\n  idle_timeout_seconds: 600\n  sni_verification: true\n" +
		"logging:\n  format: json\n  output: stdout\n  include_allowed: true\n  include_blocked: true\n" +
		"internal:\n"
	var internal strings.Builder
	for _, cidr := range egress.DefaultInternal {
		internal.WriteString("  - \"" + cidr + "\"\n")
	}
	const head = "# Rendered by bottle; pipelock parses this strictly.\nversion: 1\nmode: strict\nenforce: true\napi_allowlist:\n"
	for _, tc := range []struct {
		allow []string
		want  string
	}{
		{[]string{"api.anthropic.com", "*.github.com"}, head + "  - \"api.anthropic.com\"\n  - \"*.github.com\"\n" + tail + internal.String()},
		// strict mode refuses an empty api_allowlist: a never-resolving name stands in.
		{nil, head + "  - \"nothing-allowed.invalid\"\n" + tail + internal.String()},
	} {
		if got := PipelockConfig(tc.allow, egress.DefaultInternal); got != tc.want {
			t.Errorf("PipelockConfig(%q):\n%s\nwant:\n%s", tc.allow, got, tc.want)
		}
	}
	if !strings.HasSuffix(PipelockEmptyAllowlistHost, ".invalid") {
		t.Errorf("empty-allowlist stand-in %q must be under the reserved .invalid TLD", PipelockEmptyAllowlistHost)
	}
}

// TestPipelockFilterContainer checks how the pipelock filter runs: the pinned image, its
// config mounted read-only where the command reads it, listening on every interface (the
// host asks GET /health on the egress side).
func TestPipelockFilterContainer(t *testing.T) {
	in := input(load(t, "../../examples/claude.toml"), "claude", nil)
	in.FilterOverride = FilterPipelock
	p, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	c := p.Container(names.RoleFilter)
	if c == nil || c.Image != DefaultPipelockImage {
		t.Fatalf("filter container %+v, want image %s", c, DefaultPipelockImage)
	}
	if got := strings.Join(c.Spec.Process.Args, " "); got != "/pipelock run --listen 0.0.0.0:8888 --config /etc/pipelock/pipelock.yaml" {
		t.Errorf("pipelock args %q", got)
	}
	// Checked by running v2.3.0 so: it needs no writable path besides what it is given.
	if u := c.Spec.Process.User; u.UID != 65534 || u.GID != 65534 || !c.Spec.Root.Readonly {
		t.Errorf("pipelock runs as %d:%d, read-only root %v; want 65534:65534 on a read-only root", u.UID, u.GID, c.Spec.Root.Readonly)
	}
	mounted := false
	for _, m := range c.Spec.Mounts {
		if m.Destination == "/etc/pipelock/pipelock.yaml" {
			mounted = slices.Contains(m.Options, "ro")
		}
	}
	if !mounted {
		t.Errorf("pipelock config not mounted read-only at /etc/pipelock/pipelock.yaml: %+v", c.Spec.Mounts)
	}
	var cfg *StageFile
	for i := range p.StageFiles {
		if p.StageFiles[i].Name == "filter/pipelock.yaml" {
			cfg = &p.StageFiles[i]
		}
	}
	if cfg == nil || cfg.Content != PipelockConfig(p.Allowlist, egress.DefaultInternal) {
		t.Errorf("stage file filter/pipelock.yaml %+v, want the rendered config", cfg)
	}
	// The host asks pipelock's health on its egress address; it writes no ready file.
	if r := c.Ready; r == nil || *r != (Readiness{URL: "http://10.213.5.2:8888/health"}) {
		t.Errorf("pipelock readiness %+v", r)
	}
}

// TestSidecarReadiness: each of bottle's own sidecars reports readiness (and failure)
// in files of its run dir, the one place it may write.
func TestSidecarReadiness(t *testing.T) {
	p, err := Build(input(load(t, "../../examples/team.toml"), "coder", map[string]string{"file:/home/me/.ssh/bottle_ed25519": "k"}))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range p.Containers {
		if c.Role == names.RoleAgent {
			if c.Ready != nil {
				t.Errorf("agent has readiness %+v", c.Ready)
			}
			continue
		}
		dir := "/var/lib/bottle/bottles/coder-abc123/stage/run/" + c.Role + "/"
		if r := c.Ready; r == nil || *r != (Readiness{File: dir + names.SidecarReadyFile, ErrorFile: dir + names.SidecarErrorFile}) {
			t.Errorf("%s readiness %+v", c.Role, r)
		}
	}
}

func TestEffectiveAllowlist(t *testing.T) {
	b := &manifest.Bottle{
		Allowlist:   []string{"GitHub.com.", "*.npmjs.org", "github.com"},
		EgressProxy: manifest.EgressProxy{Routes: []*manifest.Route{{Host: "api.anthropic.com"}}},
	}
	got := strings.Join(EffectiveAllowlist(b), " ")
	if got != "*.npmjs.org api.anthropic.com github.com" {
		t.Errorf("effective allowlist %q", got)
	}
	long := AllowlistSummary([]string{"a.x", "b.x", "c.x", "d.x", "e.x", "f.x"})
	if strings.Contains(long, "\n") || !strings.Contains(long, "+2 more") {
		t.Errorf("summary %q", long)
	}
}

// TestSecretsNeverLeak is a property test: for random secret values and random manifests
// built from the examples, no secret is in any container's args, labels or annotations, or
// in the redacted plan (JSON and summary); and each route credential is only in the
// egress-proxy's env.
func TestSecretsNeverLeak(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	secret := func() string {
		const abc = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./+="
		b := make([]byte, 12+rng.IntN(40))
		for i := range b {
			b[i] = abc[rng.IntN(len(abc))]
		}
		return "S3CR3T" + string(b)
	}
	for i := 0; i < 200; i++ {
		file, agent := "../../examples/team.toml", "coder"
		if i%2 == 0 {
			file, agent = "../../examples/claude.toml", "claude"
		}
		m := load(t, file)
		env := map[string]string{}
		routed := map[string]bool{}
		for _, r := range m.Bottles[m.Agents[agent].Bottle].EgressProxy.Routes {
			env[r.TokenRef] = secret()
			routed[env[r.TokenRef]] = true
		}
		for _, n := range append(m.Agents[agent].ForwardEnv, m.Agents[agent].OptionalEnv...) {
			env[n] = secret()
		}
		for _, g := range m.Bottles[m.Agents[agent].Bottle].Git {
			if g.SSHKey != "" {
				env["file:"+g.SSHKey] = secret()
				routed[env["file:"+g.SSHKey]] = true
			}
			if g.TokenRef != "" {
				env[g.TokenRef] = secret()
				routed[env[g.TokenRef]] = true
			}
		}
		p, err := Build(input(m, agent, env))
		if err != nil {
			t.Fatal(err)
		}
		red := p.Redacted()
		out, _ := json.Marshal(red)
		text := string(out) + red.Summary()
		for _, c := range p.Containers {
			for _, a := range c.Spec.Process.Args {
				text += "\x00" + a
			}
			for k, v := range c.Labels {
				text += "\x00" + k + "=" + v
			}
			for k, v := range c.Spec.Annotations {
				text += "\x00" + k + "=" + v
			}
			for _, kv := range c.Spec.Process.Env {
				_, v, _ := strings.Cut(kv, "=")
				if routed[v] && c.Role != names.RoleEgressProxy && c.Role != names.RoleGitGate {
					t.Fatalf("route credential in %s env", c.Role)
				}
			}
		}
		for _, sf := range p.StageFiles {
			text += "\x00" + sf.Content
		}
		for name, v := range env {
			if strings.Contains(text, v) {
				t.Fatalf("value of %s leaked into args/labels/annotations/stage files/plan output", name)
			}
		}
		// Each credential is in exactly one sidecar's env: the egress-proxy's or git-gate's.
		for v := range routed {
			holders := 0
			for _, c := range p.Containers {
				for _, kv := range c.Spec.Process.Env {
					if strings.HasSuffix(kv, "="+v) {
						holders++
					}
				}
			}
			if holders != 1 {
				t.Fatalf("a credential is in %d container envs, want exactly 1", holders)
			}
		}
	}
}

// TestInternalRangesRefusedByBothFilters walks every range of the one internal list and
// shows that both rendered filter configs refuse an allowlisted name resolving into it:
// the builtin filter built from filter.json answers 403 without dialing, and pipelock's
// `internal:` list, read the way pipelock reads it, covers the address.
func TestInternalRangesRefusedByBothFilters(t *testing.T) {
	m := load(t, "../../examples/claude.toml")
	stage := func(filter, name string) string {
		t.Helper()
		in := input(m, "claude", nil)
		in.FilterOverride = filter
		p, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		for _, sf := range p.StageFiles {
			if sf.Name == name {
				return sf.Content
			}
		}
		t.Fatalf("plan with filter %s has no stage file %s", filter, name)
		return ""
	}
	var cfg egress.FilterConfig
	if err := json.Unmarshal([]byte(stage(FilterBuiltin, "filter/filter.json")), &cfg); err != nil {
		t.Fatal(err)
	}
	pipelockInternal := pipelockInternalList(t, stage(FilterPipelock, "filter/pipelock.yaml"))
	host := m.Bottles["claude"].EgressProxy.Routes[0].Host // allowlisted via its route
	var target netip.Addr
	cfg.Resolver = func(context.Context, string) ([]netip.Addr, error) { return []netip.Addr{target}, nil }
	// Nothing is ever dialed: an admitted address shows as a 502 from this dialer.
	cfg.Dial = func(context.Context, string, string) (net.Conn, error) { return nil, errors.New("test: no dialing") }
	f, err := egress.NewFilter(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	builtinRefuses := func(a netip.Addr) bool {
		target = a
		req := httptest.NewRequest(http.MethodConnect, "http://"+host+":443", nil)
		req.Host = host + ":443"
		rec := httptest.NewRecorder()
		f.ServeHTTP(rec, req)
		return rec.Code == http.StatusForbidden
	}
	var refused []netip.Addr
	for _, cidr := range egress.DefaultInternal {
		prefix := netip.MustParsePrefix(cidr)
		// An address in the middle of the range, and its last one.
		refused = append(refused, middleOf(prefix), lastOf(prefix))
	}
	// IPv4-mapped forms of internal IPv4 addresses are refused too.
	refused = append(refused, netip.MustParseAddr("::ffff:10.1.2.3"), netip.MustParseAddr("::ffff:169.254.169.254"))
	for _, a := range refused {
		if !builtinRefuses(a) {
			t.Errorf("builtin filter: %s resolving to %s is admitted", host, a)
		}
		if !pipelockRefuses(pipelockInternal, a) {
			t.Errorf("pipelock config: %s is not in its internal list", a)
		}
	}
	// Control: public addresses pass both (no traffic: the dialer above refuses).
	for _, a := range []netip.Addr{netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("::ffff:203.0.113.1"), netip.MustParseAddr("2001:db8::1")} {
		if builtinRefuses(a) {
			t.Errorf("builtin filter refuses the public address %s", a)
		}
		if pipelockRefuses(pipelockInternal, a) {
			t.Errorf("pipelock config refuses the public address %s (an entry reads wider than written)", a)
		}
	}
}

// pipelockRefuses matches a as pipelock v2.3.0 does: entries parsed by net.ParseCIDR, the
// address reduced to 4 bytes when it is IPv4 (or IPv4-mapped), then IPNet.Contains.
func pipelockRefuses(internal []*net.IPNet, a netip.Addr) bool {
	ip := net.IP(a.AsSlice())
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	return slices.ContainsFunc(internal, func(n *net.IPNet) bool { return n.Contains(ip) })
}

// pipelockInternalList reads the CIDRs of the rendered config's top-level `internal:`
// block sequence.
func pipelockInternalList(t *testing.T, yaml string) []*net.IPNet {
	t.Helper()
	_, block, ok := strings.Cut(yaml, "\ninternal:\n")
	if !ok {
		t.Fatalf("pipelock config has no internal list:\n%s", yaml)
	}
	var out []*net.IPNet
	for line := range strings.Lines(block) {
		item, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "  - ")
		if !ok {
			break
		}
		_, n, err := net.ParseCIDR(strings.Trim(item, `"`))
		if err != nil {
			t.Fatalf("pipelock internal entry %q: %v", item, err)
		}
		out = append(out, n)
	}
	return out
}

func middleOf(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	if bit := p.Bits(); bit < len(b)*8 {
		b[bit/8] |= 0x80 >> (bit % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func lastOf(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// TestUnresolvedHintsByKind: each kind of unset host value gets the hint that applies to
// it; only a forwarded name can be made optional.
func TestUnresolvedHintsByKind(t *testing.T) {
	m := load(t, "../../examples/team.toml")
	in := input(m, "coder", map[string]string{"file:/home/me/.ssh/bottle_ed25519": "k"})
	in.Strict = true
	_, err := Build(in)
	if err == nil {
		t.Fatal("start with nothing set succeeded")
	}
	msg := err.Error()
	for _, want := range []string{
		"GITHUB_USER (forward_env of agent coder: export it, or move it to optional_env",
		"MY_CLAUDE_OAUTH (token_ref of route api.anthropic.com: export the credential; only the egress-proxy gets it)",
		"GITHUB_TOKEN (token_ref of route api.github.com:",
		"UPSTREAM_GIT_TOKEN (token_ref of git remote upstream: export the HTTPS token; only git-gate gets it)",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Count(msg, "optional_env") != 1 || strings.Contains(msg, "\n") {
		t.Errorf("optional_env is offered for a credential, or the error is not one line:\n%s", msg)
	}
}
