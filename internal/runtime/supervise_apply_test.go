package runtime

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/state"
	"github.com/bottle-dev/bottle/internal/supervise"
)

// applyFixture is a detached running bottle on a fake host with an egress-proxy that has
// one route (its credential in its stored env) and a pipelock filter.
type applyFixture struct {
	e    *Engine
	host *fakeHost
	env  map[string]string
	id   names.Identity
	caps *supervise.Capabilities
}

func newApplyFixture(t *testing.T) *applyFixture {
	t.Helper()
	dir := t.TempDir()
	f := &applyFixture{host: newFakeHost(dir), env: map[string]string{}, id: "sup-abc123"}
	f.e = newEngine(Options{
		StateDir: dir, LookupEnv: func(k string) (string, bool) { v, ok := f.env[k]; return v, ok },
		Log: slog.New(slog.DiscardHandler),
	}.withDefaults(), f.host, fakeNet{f.host})
	roles := []string{names.RoleAgent, names.RoleEgressProxy, names.RoleFilter}
	var containers []state.Container
	for _, r := range roles {
		containers = append(containers, state.Container{Name: f.id.Container(r), Role: r})
	}
	if err := f.e.store.Create(&state.Meta{Identity: f.id, Agent: "sup", Detached: true, Phase: state.PhaseRunning, Filter: plan.FilterPipelock, Containers: containers}); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{plan.SidecarRunDir(names.RoleEgressProxy), plan.SidecarRunDir(names.RoleFilter), names.RoleEgressProxy, names.RoleFilter} {
		if err := os.MkdirAll(filepath.Join(plan.StageDir(dir, f.id), sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f.host.started[f.id.Container(names.RoleAgent)] = true
	f.host.env = map[string][]string{
		f.id.Container(names.RoleEgressProxy): {"PATH=/bin", "SSL_CERT_FILE=/etc/ssl/ca.pem", "OLD_TOKEN=from-the-start"},
		f.id.Container(names.RoleAgent):       {"PATH=/bin", "FORWARDED=1"},
	}
	f.writeStage(t, routesStageFile, `{"listen":"10.0.0.3:9000","routes":[{"host":"old.example","token_ref":"OLD_TOKEN","header":"Authorization","ca_file":"/etc/bottle/extra-ca.pem"}]}`)
	f.caps = &supervise.Capabilities{Filter: plan.FilterPipelock, Allowlist: []string{"a.example"}, Routes: []supervise.RouteInfo{{Host: "old.example", Header: "Authorization"}}}
	return f
}

func (f *applyFixture) stagePath(name string) string {
	return filepath.Join(plan.StageDir(f.e.opts.StateDir, f.id), name)
}

func (f *applyFixture) writeStage(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(f.stagePath(name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (f *applyFixture) readStage(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(f.stagePath(name))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestApproveRoute: a route approval reads the credential from the approving process's
// env, adds it to the egress-proxy's stored env next to the start's values, adds the
// route to its config and restarts it; without the credential, or when the restart
// fails, nothing changes; a name the agent holds is refused.
func TestApproveRoute(t *testing.T) {
	f := newApplyFixture(t)
	proxy := f.id.Container(names.RoleEgressProxy)
	route := &supervise.RouteChange{Host: "new.example", TokenRef: "NEW_TOKEN", Header: "X-Api-Key", Scheme: "none"}
	configBefore := f.readStage(t, routesStageFile)
	unchanged := func(what string) {
		t.Helper()
		if got := f.readStage(t, routesStageFile); got != configBefore {
			t.Errorf("%s: config changed:\n%s", what, got)
		}
		if got := f.host.env[proxy]; !slices.Equal(got, []string{"PATH=/bin", "SSL_CERT_FILE=/etc/ssl/ca.pem", "OLD_TOKEN=from-the-start"}) {
			t.Errorf("%s: egress-proxy env %q", what, got)
		}
		if len(f.caps.ApprovedRoutes) != 0 || len(f.caps.Routes) != 1 {
			t.Errorf("%s: capabilities %+v", what, f.caps)
		}
	}

	err := f.e.approveRoute(t.Context(), f.id, route, f.caps)
	if err == nil || !strings.Contains(err.Error(), "$NEW_TOKEN is not set") {
		t.Errorf("without the credential: %v", err)
	}
	unchanged("without the credential")
	if ops := strings.Join(f.host.ops(), ","); strings.Contains(ops, "stop") || strings.Contains(ops, "start") {
		t.Errorf("without the credential the host did %s", ops)
	}

	if err := f.e.approveRoute(t.Context(), f.id, &supervise.RouteChange{Host: "fwd.example", TokenRef: "FORWARDED"}, f.caps); err == nil || !strings.Contains(err.Error(), "holds $FORWARDED itself") {
		t.Errorf("a credential the agent holds: %v", err)
	}
	unchanged("a credential the agent holds")
	if err := f.e.approveRoute(t.Context(), f.id, &supervise.RouteChange{Host: "path.example", TokenRef: "SSL_CERT_FILE"}, f.caps); err == nil || !strings.Contains(err.Error(), "a variable of the egress-proxy itself") {
		t.Errorf("a variable of the egress-proxy's own: %v", err)
	}
	unchanged("a variable of the egress-proxy's own")

	// The restart fails once: the change is taken back and the egress-proxy runs as before.
	f.env["NEW_TOKEN"] = "s3cret"
	f.host.fail["start egress-proxy"] = errors.New("no sandbox today")
	f.host.hook["start egress-proxy"] = func() {
		f.host.mu.Lock()
		delete(f.host.fail, "start egress-proxy")
		f.host.mu.Unlock()
	}
	err = f.e.approveRoute(t.Context(), f.id, route, f.caps)
	if err == nil || !strings.Contains(err.Error(), "no sandbox today") || !strings.Contains(err.Error(), "it runs as before") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("failed restart: %v", err)
	}
	unchanged("a failed restart")
	delete(f.host.hook, "start egress-proxy")

	before := len(f.host.ops())
	if err := f.e.approveRoute(t.Context(), f.id, route, f.caps); err != nil {
		t.Fatal(err)
	}
	if got := f.host.env[proxy]; !slices.Equal(got, []string{"PATH=/bin", "SSL_CERT_FILE=/etc/ssl/ca.pem", "OLD_TOKEN=from-the-start", "NEW_TOKEN=s3cret"}) {
		t.Errorf("egress-proxy env %q", got)
	}
	var cfg egress.ProxyConfig
	if err := json.Unmarshal([]byte(f.readStage(t, routesStageFile)), &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Routes) != 2 || cfg.Listen != "10.0.0.3:9000" {
		t.Fatalf("config %+v", cfg)
	}
	if r := cfg.Routes[1]; r.Host != "new.example" || r.TokenRef != "NEW_TOKEN" || r.Header != "X-Api-Key" || r.Scheme == nil || *r.Scheme != "" || r.CAFile == "" {
		t.Errorf("new route %+v", r)
	}
	if strings.Contains(f.readStage(t, routesStageFile), "s3cret") {
		t.Error("the credential is in the config file")
	}
	if got := strings.Join(f.host.ops()[before:], ","); !strings.Contains(got, "stop egress-proxy,setup egress-proxy,start egress-proxy") {
		t.Errorf("restart ops %s", got)
	}
	if len(f.caps.ApprovedRoutes) != 1 || len(f.caps.Routes) != 2 || f.caps.Routes[1] != (supervise.RouteInfo{Host: "new.example", Header: "X-Api-Key"}) {
		t.Errorf("capabilities %+v", f.caps)
	}
	if len(f.caps.Changes.Add) != 0 {
		t.Errorf("pipelock's allowlist changed without its restart: %+v", f.caps.Changes)
	}
	// A second route may not take the first one's credential to another host.
	envBefore := slices.Clone(f.host.env[proxy])
	err = f.e.approveRoute(t.Context(), f.id, &supervise.RouteChange{Host: "third.example", TokenRef: "NEW_TOKEN"}, f.caps)
	if err == nil || !strings.Contains(err.Error(), "credential of route new.example already") {
		t.Errorf("a route re-using another route's credential: %v", err)
	}
	if got := f.host.env[proxy]; !slices.Equal(got, envBefore) {
		t.Errorf("the refused route changed the env: %q", got)
	}
	if strings.Contains(f.readStage(t, routesStageFile), "third.example") {
		t.Error("the refused route is in the egress-proxy's config")
	}
	f.caps.Filter = plan.FilterBuiltin
	f.env["THIRD_TOKEN"] = "other"
	if err := f.e.approveRoute(t.Context(), f.id, &supervise.RouteChange{Host: "third.example", TokenRef: "THIRD_TOKEN"}, f.caps); err != nil {
		t.Fatal(err)
	}
	if got := f.caps.Effective(time.Now()); !slices.Equal(got, []string{"a.example", "third.example"}) {
		t.Errorf("with the builtin filter the route's host is not allowed: %q", got)
	}
	if err := f.e.approveRoute(t.Context(), f.id, route, f.caps); err == nil || !strings.Contains(err.Error(), "has a route to new.example already") {
		t.Errorf("the same route again: %v", err)
	}
}

// TestApproveRouteWithoutEgressProxy: a bottle started without routes has no
// egress-proxy its agent could reach: the approval says what to do instead.
func TestApproveRouteWithoutEgressProxy(t *testing.T) {
	f := newApplyFixture(t)
	m, _ := f.e.store.Load(f.id)
	m.Containers = slices.DeleteFunc(m.Containers, func(c state.Container) bool { return c.Role == names.RoleEgressProxy })
	if err := f.e.store.Save(m); err != nil {
		t.Fatal(err)
	}
	f.env["NEW_TOKEN"] = "s3cret"
	err := f.e.approveRoute(t.Context(), f.id, &supervise.RouteChange{Host: "new.example", TokenRef: "NEW_TOKEN"}, f.caps)
	if err == nil || !strings.Contains(err.Error(), "has no egress-proxy") || !strings.Contains(err.Error(), "start a new bottle") {
		t.Errorf("approval: %v", err)
	}
}

// TestWithApprovedRoutes: a resume plans the approved routes besides the manifest's
// (one the manifest now declares itself stays the manifest's), without changing the
// loaded manifest.
func TestWithApprovedRoutes(t *testing.T) {
	f := newApplyFixture(t)
	f.caps.ApprovedRoutes = []supervise.RouteChange{{Host: "new.example", TokenRef: "NEW_TOKEN", Header: "X-Api-Key"}, {Host: "old.example", TokenRef: "OTHER"}}
	dirs := plan.SuperviseDirs(f.e.opts.StateDir, f.id)
	if err := dirs.Prepare(os.Getuid()); err != nil {
		t.Fatal(err)
	}
	if err := dirs.WriteCapabilities(f.caps); err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Load("bottle.toml", []byte("[agents.sup]\nbottle = \"b\"\nimage = \"img:1\"\n\n[bottles.b]\n[[bottles.b.egress_proxy.routes]]\nhost = \"old.example\"\ntoken_ref = \"OLD_TOKEN\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	po, err := f.e.withApprovedRoutes(PlanOptions{Manifest: m, Agent: "sup"}, f.id)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range po.Manifest.Bottles["b"].EgressProxy.Routes {
		got = append(got, r.Host+"="+r.TokenRef+"/"+r.HeaderName())
	}
	if strings.Join(got, ",") != "old.example=OLD_TOKEN/Authorization,new.example=NEW_TOKEN/X-Api-Key" {
		t.Errorf("planned routes %s", got)
	}
	if n := len(m.Bottles["b"].EgressProxy.Routes); n != 1 {
		t.Errorf("the loaded manifest has %d routes now", n)
	}
	if po, err := f.e.withApprovedRoutes(PlanOptions{Manifest: m, Agent: "sup"}, "other-abc123"); err != nil || po.Manifest != m {
		t.Errorf("a bottle without supervise state: %v", err)
	}
}

// TestPipelockApproval: with pipelock an allowlist change is applied by rendering its
// config (pipelock has no reload; a running bottle's filter is restarted, a stopped
// one's resume renders it) and a grant --for is refused: its end would need another
// restart, with no bottle process to do it.
func TestPipelockApproval(t *testing.T) {
	for _, tc := range []struct {
		filter string
		grant  time.Duration
		want   string
	}{
		{plan.FilterBuiltin, time.Minute, ""},
		{plan.FilterPipelock, 0, ""},
		{plan.FilterPipelock, time.Minute, "a grant --for would need bottle to restart it"},
		{"none", 0, "applied by the builtin filter and pipelock only"},
	} {
		err := allowlistApplies("sup-abc123", tc.filter, tc.grant)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s for %v: %v, want %q", tc.filter, tc.grant, err, tc.want)
		}
	}

	f := newApplyFixture(t)
	f.writeStage(t, pipelockStageFile, plan.PipelockConfig(f.caps.Allowlist, egress.DefaultInternal))
	// The agent does not run (a stopped bottle): only the config changes.
	f.host.started[f.id.Container(names.RoleAgent)] = false
	m, _ := f.e.store.Load(f.id)
	m.Containers[2].Attachments = []names.Attachment{{Network: names.NetEgress, Address: netip.MustParseAddr("10.250.1.2")}}
	if err := f.e.store.Save(m); err != nil {
		t.Fatal(err)
	}
	applyAllowlistChange(f.caps, &supervise.AllowlistChange{Add: []string{"pypi.example"}}, time.Time{})
	if err := f.e.applyPipelock(t.Context(), f.id, f.caps, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := f.readStage(t, pipelockStageFile); got != plan.PipelockConfig([]string{"a.example", "pypi.example"}, egress.DefaultInternal) {
		t.Errorf("pipelock config:\n%s", got)
	}
	if ops := strings.Join(f.host.ops(), ","); strings.Contains(ops, "filter") {
		t.Errorf("the filter of a stopped bottle was touched: %s", ops)
	}
}
