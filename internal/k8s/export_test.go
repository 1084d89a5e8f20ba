package k8s

import (
	"bytes"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// secretValue is what the test host holds for each secret name: the plan carries it, the
// export must not.
func secretValue(name string) string { return "SECRET-VALUE-OF-" + name }

const sshKey = "-----BEGIN OPENSSH PRIVATE KEY-----\nSECRET-SSH-KEY\n-----END OPENSSH PRIVATE KEY-----\n"

// testPlan is the plan of testdata/bottle.toml on a host that sets every secret.
func testPlan(t *testing.T) *plan.Plan {
	t.Helper()
	return testPlanWith(t, "")
}

// testPlanWith is testPlan with the filter override filter.
func testPlanWith(t *testing.T, filter string) *plan.Plan {
	t.Helper()
	data, err := os.ReadFile("testdata/bottle.toml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Load("bottle.toml", data)
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Build(plan.Input{
		Manifest: m, ManifestPath: "bottle.toml", AgentName: "coder", Identity: "coder-abc123",
		LookupEnv:         func(n string) (string, bool) { return secretValue(n), true },
		ReadFile:          func(string) ([]byte, error) { return []byte(sshKey), nil },
		Workspace:         "/home/me/project",
		StateDir:          "/var/lib/bottle",
		Internal:          netip.MustParsePrefix("10.213.4.0/24"),
		Egress:            netip.MustParsePrefix("10.213.5.0/24"),
		SidecarImage:      "bottle.local/sidecar:test",
		SidecarResolvConf: "nameserver 192.0.2.53\n",
		SidecarHosts:      []names.HostEntry{{Name: "mirror.test", Addr: netip.MustParseAddr("192.0.2.80")}},
		FilterOverride:    filter,
		Strict:            true,
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var testOptions = Options{
	Namespace: "agents", SidecarImage: "registry.test/bottle/sidecar:1",
	OptionalEnv: []string{"TZ"},
	ServiceIPs: map[string]netip.Addr{
		names.RoleFilter:      netip.MustParseAddr("10.96.0.20"),
		names.RoleEgressProxy: netip.MustParseAddr("10.96.0.21"),
		names.RoleGitGate:     netip.MustParseAddr("10.96.0.22"),
	},
}

func TestExportGolden(t *testing.T) {
	p := testPlan(t)
	for _, tc := range []struct {
		name, format string
		opts         Options
	}{
		{"export.yaml", "yaml", testOptions},
		{"export.json", "json", testOptions},
		// A plain export: the Services' cluster IPs are not known yet.
		{"export-plain.yaml", "yaml", Options{}},
		{"export-sandbox.yaml", "yaml", sandboxOptions},
	} {
		objs, err := Export(p, tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		got, err := objs.Render(tc.format)
		if err != nil {
			t.Fatal(err)
		}
		golden := filepath.Join("testdata", tc.name)
		if *update {
			if err := os.WriteFile(golden, got, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from the export (go test ./internal/k8s -update rewrites it):\n%s", golden, got)
		}
	}
}

// TestExportHoldsNoSecret: the plan holds every secret's value; no rendering of the
// export contains any of them, and each secret is a secretKeyRef into the Secret of the
// Pod that uses it.
func TestExportHoldsNoSecret(t *testing.T) {
	p := testPlan(t)
	var markers []string
	for _, c := range p.Containers {
		markers = append(markers, c.SecretEnv...)
	}
	if len(markers) < 5 {
		t.Fatalf("the test plan should hold the route, git and forwarded secrets, has %v", markers)
	}
	objs, err := Export(p, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range Formats {
		out, err := objs.Render(format)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range markers {
			if bytes.Contains(out, []byte(secretValue(n))) {
				t.Errorf("%s export holds the value of %s", format, n)
			}
		}
		if bytes.Contains(out, []byte("SECRET-SSH-KEY")) || bytes.Contains(out, []byte("SECRET-VALUE")) {
			t.Errorf("%s export holds a secret value", format)
		}
	}
	for _, s := range objs.Secrets {
		if len(s.Data) > 0 || len(s.StringData) > 0 {
			t.Errorf("Secret %s holds data", s.Name)
		}
	}
	refs := map[string][]string{} // Secret name -> keys referenced, per Pod
	for _, pod := range append(slices.Clone(objs.Sidecars), objs.Agent) {
		for _, e := range pod.Spec.Containers[0].Env {
			if e.ValueFrom == nil {
				continue
			}
			ref := e.ValueFrom.SecretKeyRef
			if ref.Name != pod.Name {
				t.Errorf("Pod %s refers to Secret %s, not its own", pod.Name, ref.Name)
			}
			refs[ref.Name] = append(refs[ref.Name], ref.Key)
		}
	}
	want := map[string][]string{
		"bottle-coder-abc123-egress-proxy": {"MY_CLAUDE_OAUTH"},
		"bottle-coder-abc123-git-gate":     {"BOTTLE_GIT_SSH_KEY_0", "UPSTREAM_GIT_TOKEN"},
		"bottle-coder-abc123-agent":        {"GITHUB_USER", "TZ"},
	}
	for name, keys := range want {
		slices.Sort(refs[name])
		if !slices.Equal(refs[name], keys) {
			t.Errorf("Secret %s is referenced for %v, want %v", name, refs[name], keys)
		}
	}
	if len(refs) != len(want) || len(objs.Secrets) != len(want) {
		t.Errorf("Secrets %d, referenced %v, want %v", len(objs.Secrets), refs, want)
	}
}

func TestExportAgentPod(t *testing.T) {
	objs, err := Export(testPlan(t), testOptions)
	if err != nil {
		t.Fatal(err)
	}
	pod := objs.Agent
	spec := pod.Spec
	ctr := spec.Containers[0]
	sc := ctr.SecurityContext
	switch {
	case spec.RuntimeClassName == nil || *spec.RuntimeClassName != DefaultRuntimeClass:
		t.Errorf("runtimeClassName %v", spec.RuntimeClassName)
	case spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken:
		t.Error("the agent gets a service-account token")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("the agent may escalate privileges")
	case len(sc.Capabilities.Add) > 0 || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}):
		t.Errorf("agent capabilities %+v", sc.Capabilities)
	case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Errorf("agent seccomp %+v", sc.SeccompProfile)
	case spec.DNSPolicy != corev1.DNSNone || !slices.Equal(spec.DNSConfig.Nameservers, []string{"127.0.0.1"}):
		t.Errorf("the agent has DNS: %s %+v", spec.DNSPolicy, spec.DNSConfig)
	case ctr.Image != "bottle.local/agent:1":
		t.Errorf("agent image %s (only bottle's sidecars take --sidecar-image)", ctr.Image)
	}
	aliases := map[string]string{}
	for _, a := range spec.HostAliases {
		for _, h := range a.Hostnames {
			aliases[h] = a.IP
		}
	}
	wantAliases := map[string]string{names.RoleFilter: "10.96.0.20", names.RoleEgressProxy: "10.96.0.21", names.RoleGitGate: "10.96.0.22"}
	if !mapsEqual(aliases, wantAliases) {
		t.Errorf("agent hostAliases %v, want %v", aliases, wantAliases)
	}
	env := map[string]string{}
	for _, e := range ctr.Env {
		env[e.Name] = e.Value
	}
	if env["HTTPS_PROXY"] != "http://filter:8888" || env["CLAUDE_CODE_OAUTH_TOKEN"] != plan.ClaudePlaceholderToken {
		t.Errorf("agent env misses the plan's proxy or placeholder: %v", env)
	}
	if _, ok := env["MY_CLAUDE_OAUTH"]; ok {
		t.Error("the agent gets the routed credential")
	}
	// Sidecars that leave get the --add-host entries; the agent does not.
	for _, p := range objs.Sidecars {
		if p.Labels[names.LabelRole] == names.RoleFilter {
			if !slices.ContainsFunc(p.Spec.HostAliases, func(a corev1.HostAlias) bool {
				return a.IP == "192.0.2.80" && slices.Equal(a.Hostnames, []string{"mirror.test"})
			}) {
				t.Errorf("filter hostAliases %+v", p.Spec.HostAliases)
			}
			if p.Spec.Containers[0].Image != testOptions.SidecarImage {
				t.Errorf("filter image %s", p.Spec.Containers[0].Image)
			}
		}
	}
	if _, ok := aliases["mirror.test"]; ok {
		t.Error("the agent gets a sidecar's hosts entry")
	}
}

// TestExportRefusesSupervise: a supervised bottle is not exported (its approvals need the
// host's state dir), and the error says what to change.
func TestExportRefusesSupervise(t *testing.T) {
	data, err := os.ReadFile("testdata/bottle.toml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Load("bottle.toml", []byte(strings.Replace(string(data), "supervise = false", "supervise = true", 1)))
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Build(plan.Input{
		Manifest: m, ManifestPath: "bottle.toml", AgentName: "coder", Identity: "coder-abc123",
		LookupEnv: func(n string) (string, bool) { return secretValue(n), true },
		ReadFile:  func(string) ([]byte, error) { return []byte(sshKey), nil },
		Workspace: "/home/me/project", StateDir: "/var/lib/bottle",
		Internal: netip.MustParsePrefix("10.213.4.0/24"), Egress: netip.MustParsePrefix("10.213.5.0/24"),
		SidecarImage: "bottle.local/sidecar:test", SidecarResolvConf: "nameserver 192.0.2.53\n",
		Strict: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.Container(names.RoleSupervise) == nil {
		t.Fatal("the plan has no supervise sidecar: the test manifest changed")
	}
	_, err = Export(p, testOptions)
	if err == nil || !strings.Contains(err.Error(), "supervise = false") {
		t.Fatalf("export of a supervised bottle: %v, want a refusal naming supervise = false", err)
	}
}

// TestExportPolicies: the agent may reach only the sidecars' service ports and is
// reached by nobody; only the filter, egress-proxy and git-gate may leave.
func TestExportPolicies(t *testing.T) {
	objs, err := Export(testPlan(t), testOptions)
	if err != nil {
		t.Fatal(err)
	}
	ports := map[string]int32{}
	for _, s := range objs.Services {
		ports[s.Labels[names.LabelRole]] = s.Spec.Ports[0].Port
	}
	wantPorts := map[string]int32{names.RoleFilter: plan.FilterPort, names.RoleEgressProxy: plan.EgressProxyPort, names.RoleGitGate: plan.GitGatePort}
	if !mapsEqual(ports, wantPorts) {
		t.Fatalf("service ports %v, want %v", ports, wantPorts)
	}
	leave := map[string]bool{}
	agentTo := map[string]int32{}
	denyAll := false
	for _, np := range objs.NetworkPolicies {
		sel := np.Spec.PodSelector.MatchLabels
		if sel[names.LabelIdentity] != "coder-abc123" {
			t.Errorf("policy %s selects %v, outside the bottle", np.Name, sel)
		}
		role, ok := sel[names.LabelRole]
		if !ok {
			denyAll = len(np.Spec.Ingress) == 0 && len(np.Spec.Egress) == 0 && len(np.Spec.PolicyTypes) == 2
			continue
		}
		if role == names.RoleAgent {
			if len(np.Spec.Ingress) > 0 {
				t.Errorf("the agent admits %+v", np.Spec.Ingress)
			}
			for _, r := range np.Spec.Egress {
				if len(r.To) != 1 || r.To[0].PodSelector == nil || len(r.Ports) != 1 {
					t.Fatalf("agent egress rule %+v is not one sidecar's port", r)
				}
				agentTo[r.To[0].PodSelector.MatchLabels[names.LabelRole]] = r.Ports[0].Port.IntVal
			}
			continue
		}
		for _, r := range np.Spec.Egress {
			if len(r.To) == 0 && len(r.Ports) == 0 {
				leave[role] = true
			}
		}
	}
	if !denyAll {
		t.Error("no policy denies all traffic of the bottle's Pods")
	}
	if !mapsEqual(agentTo, wantPorts) {
		t.Errorf("the agent may reach %v, want %v (and no DNS)", agentTo, wantPorts)
	}
	wantLeave := map[string]bool{names.RoleFilter: true, names.RoleEgressProxy: true, names.RoleGitGate: true}
	if !mapsEqual(leave, wantLeave) {
		t.Errorf("Pods that may leave: %v, want %v", leave, wantLeave)
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestRenderRejectsUnknownFormat(t *testing.T) {
	objs, err := Export(testPlan(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := objs.Render("toml"); err == nil || !strings.Contains(err.Error(), "toml") {
		t.Errorf("Render(toml) = %v", err)
	}
}

// TestExportPipelock: a filter configured on its command line (pipelock) gets its
// Service on the port it names there, and keeps its own image.
func TestExportPipelock(t *testing.T) {
	objs, err := Export(testPlanWith(t, plan.FilterPipelock), testOptions)
	if err != nil {
		t.Fatal(err)
	}
	var filterPort int32
	for _, s := range objs.Services {
		if s.Labels[names.LabelRole] == names.RoleFilter {
			filterPort = s.Spec.Ports[0].Port
		}
	}
	if filterPort != plan.FilterPort {
		t.Errorf("pipelock's Service port %d, want %d", filterPort, plan.FilterPort)
	}
	for _, p := range objs.Sidecars {
		if p.Labels[names.LabelRole] == names.RoleFilter && p.Spec.Containers[0].Image != plan.DefaultPipelockImage {
			t.Errorf("pipelock runs %s", p.Spec.Containers[0].Image)
		}
	}
}

var sandboxOptions = func() Options {
	o := testOptions
	o.AgentFormat = FormatAgentSandbox
	return o
}()

// TestExportSandbox: with FormatAgentSandbox the agent Pod is replaced by a Sandbox named
// and labelled as the Pod, whose template is the Pod: the labels the NetworkPolicies
// select the agent by and its whole spec (gVisor, no token, no DNS). The other objects
// are those of the Pod format.
func TestExportSandbox(t *testing.T) {
	p := testPlan(t)
	pods, err := Export(p, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := Export(p, sandboxOptions)
	if err != nil {
		t.Fatal(err)
	}
	sb := objs.Sandbox
	if sb == nil {
		t.Fatal("no Sandbox")
	}
	if sb.APIVersion != "agents.x-k8s.io/v1alpha1" || sb.Kind != "Sandbox" || sb.Name != "bottle-coder-abc123-agent" || sb.Namespace != "agents" {
		t.Errorf("Sandbox %s %s %s/%s", sb.APIVersion, sb.Kind, sb.Namespace, sb.Name)
	}
	all := objs.All()
	if all[len(all)-1] != any(sb) || slices.Contains(all, any(objs.Agent)) {
		t.Error("the Sandbox does not replace the agent Pod among the objects")
	}
	if len(all) != len(pods.All()) {
		t.Errorf("%d objects, the Pod format has %d", len(all), len(pods.All()))
	}
	tmpl := sb.Spec.PodTemplate
	if !equality.Semantic.DeepEqual(tmpl.Spec, pods.Agent.Spec) {
		t.Errorf("the Sandbox's Pod spec differs from the agent Pod's:\n%+v\n%+v", tmpl.Spec, pods.Agent.Spec)
	}
	if tmpl.Spec.RuntimeClassName == nil || *tmpl.Spec.RuntimeClassName != DefaultRuntimeClass || tmpl.Spec.AutomountServiceAccountToken == nil || *tmpl.Spec.AutomountServiceAccountToken {
		t.Errorf("the Sandbox's Pod: runtimeClassName %v, automountServiceAccountToken %v", tmpl.Spec.RuntimeClassName, tmpl.Spec.AutomountServiceAccountToken)
	}
	if !mapsEqual(tmpl.Metadata.Labels, pods.Agent.Labels) || !mapsEqual(sb.Labels, pods.Agent.Labels) {
		t.Errorf("Sandbox labels %v, template labels %v, want the agent Pod's %v", sb.Labels, tmpl.Metadata.Labels, pods.Agent.Labels)
	}
	// Every policy that selects the agent Pod selects the Sandbox's Pod.
	selected := 0
	for _, np := range objs.NetworkPolicies {
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			t.Fatal(err)
		}
		if sel.Matches(labels.Set(pods.Agent.Labels)) {
			selected++
			if !sel.Matches(labels.Set(tmpl.Metadata.Labels)) {
				t.Errorf("policy %s does not select the Sandbox's Pod", np.Name)
			}
		}
	}
	if selected != 2 { // the bottle's deny-all and the agent's own
		t.Errorf("%d policies select the agent, want 2", selected)
	}
	out, err := objs.Render("yaml")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(out, []byte("SECRET-VALUE")) || bytes.Contains(out, []byte("SECRET-SSH-KEY")) {
		t.Error("the Sandbox export holds a secret value")
	}
	if _, err := Export(p, Options{AgentFormat: "deployment"}); err == nil || !strings.Contains(err.Error(), "deployment") {
		t.Errorf("Export with agent format deployment: %v", err)
	}
}
