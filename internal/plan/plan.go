// Package plan turns a manifest, an agent name and the host environment into a frozen plan:
// the bottle's identity, one OCI runtime spec per container, the network layout, the
// effective allowlist and the rendered sidecar configs.
//
// The package is pure: it does no I/O and reads no clock or randomness except through the
// Input's injected functions, so plans are reproducible in tests.
package plan

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/netip"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/manifest"
)

// Container roles.
const (
	RoleAgent       = "agent"
	RoleFilter      = "filter"
	RoleEgressProxy = "egress-proxy"
	RoleGitGate     = "git-gate"
	RoleSupervise   = "supervise"
)

// Filter implementations.
const (
	FilterBuiltin  = "builtin"
	FilterPipelock = "pipelock"
)

// Label keys put on every container (never secrets).
const (
	LabelIdentity = "bottle.identity"
	LabelRole     = "bottle.role"
	LabelAgent    = "bottle.agent"
	LabelName     = "nerdctl/name"
)

// Network kinds.
const (
	NetInternal = "internal"
	NetEgress   = "egress"
)

// Ports the sidecars listen on (on their internal address).
const (
	FilterPort      = 8888
	EgressProxyPort = 9000
	GitGatePort     = 80
)

// Redacted replaces every secret value in plan output.
const Redacted = "<redacted>"

// ClaudePlaceholderToken is what the agent holds instead of the real OAuth token: the
// value the egress-proxy also writes where an upstream echoes the real one.
const ClaudePlaceholderToken = egress.CredentialPlaceholder

// Default images.
const (
	DefaultPipelockImage = "ghcr.io/luckypipewrench/pipelock:v2.3.0"
)

// hostPart is each role's host number on both bottle networks.
var hostPart = map[string]byte{RoleFilter: 2, RoleEgressProxy: 3, RoleGitGate: 4, RoleSupervise: 5, RoleAgent: 10}

// Input is everything Build needs; functions inject the outside world.
type Input struct {
	Manifest     *manifest.Manifest
	ManifestPath string
	AgentName    string
	// LookupEnv reads the invoking host's environment (only the names the manifest asks for).
	LookupEnv func(string) (string, bool)
	// NewSuffix returns a fresh random identity suffix (6 lowercase hex digits).
	NewSuffix func() (string, error)
	// Identity is the recorded identity when resuming; empty on a fresh start.
	Identity string
	// Workspace is the host directory the agent works in; CopyWorkspace gives the agent a
	// copy (made by the runtime in the stage dir) instead of the directory itself.
	Workspace     string
	CopyWorkspace bool
	// WorkspaceOwner is "uid:gid" of the workspace's owner; the agent runs as that user
	// (so its files belong to the user) unless the manifest sets one or the owner is root.
	WorkspaceOwner string
	// Command overrides the agent's command when non-empty.
	Command  []string
	StateDir string
	// Internal and Egress are the subnets reserved for this bottle.
	Internal, Egress netip.Prefix
	// SidecarImage is bottle's own sidecar image (its static binary at /bottle).
	SidecarImage string
	// PipelockImage (see PipelockImageFor) and PipelockPresent decide the filter when the
	// choice is auto.
	PipelockImage   string
	PipelockPresent bool
	// RuntimeOverride and FilterOverride come from flags; empty means the manifest's choice.
	RuntimeOverride, FilterOverride string
	// SidecarResolvConf is the resolv.conf content for sidecars that leave the bottle.
	SidecarResolvConf string
	// SidecarHosts are extra /etc/hosts entries of the sidecars (e.g. an internal mirror).
	SidecarHosts []HostEntry
	// ExtraCA is PEM the egress-proxy trusts besides the system roots (a private CA).
	ExtraCA string
	// ReadFile reads a git remote's ssh_key on the host (its content goes only into the
	// git-gate's process env). Nil leaves keys unresolved.
	ReadFile func(path string) ([]byte, error)
	// Strict makes unresolved host env (forwarded names, route credentials) an error.
	Strict bool
}

// Plan is the frozen result of Build. Marshal Redacted() for display, never the plan itself.
type Plan struct {
	Identity         string       `json:"identity"`
	Agent            string       `json:"agent"`
	Bottle           string       `json:"bottle"`
	Manifest         string       `json:"manifest"`
	Runtime          string       `json:"runtime"`
	Filter           string       `json:"filter"`
	StageDir         string       `json:"stage_dir"`
	Workspace        Workspace    `json:"workspace"`
	Networks         []Network    `json:"networks"`
	Containers       []*Container `json:"containers"`
	Allowlist        []string     `json:"allowlist"`
	AllowlistSummary string       `json:"allowlist_summary"`
	Routes           []Route      `json:"routes,omitempty"`
	StageFiles       []StageFile  `json:"stage_files"`
	// Unresolved lists host env names the plan needs but the host does not set.
	Unresolved []string `json:"unresolved,omitempty"`
}

// Workspace is the agent's /workspace.
type Workspace struct {
	Host string `json:"host"`
	Copy bool   `json:"copy"`
	// Source is what is bind-mounted: Host itself, or the copy in the stage dir.
	Source string `json:"source"`
}

// Network is one of the bottle's two networks.
type Network struct {
	Kind   string       `json:"kind"`
	Subnet netip.Prefix `json:"subnet"`
	// Gateway is the host-side address with a default route (egress only).
	Gateway netip.Addr `json:"gateway,omitzero"`
}

// Attachment puts a container on a network with a static address.
type Attachment struct {
	Network string     `json:"network"`
	IfName  string     `json:"ifname"`
	Address netip.Addr `json:"address"`
}

// Container is one container of the bottle.
type Container struct {
	Name        string            `json:"name"`
	Role        string            `json:"role"`
	Image       string            `json:"image"`
	Attachments []Attachment      `json:"attachments"`
	Labels      map[string]string `json:"labels"`
	Spec        *specs.Spec       `json:"spec"`
	// SecretEnv names the env entries whose values are secrets (redacted in output).
	SecretEnv []string `json:"secret_env,omitempty"`
}

// Route is an egress-proxy route as its sidecar sees it: the credential is named, not held.
type Route struct {
	Host     string   `json:"host"`
	TokenRef string   `json:"token_ref"`
	Header   string   `json:"header"`
	Scheme   string   `json:"scheme"`
	Roles    []string `json:"roles,omitempty"`
	// CAFile is the extra CA bundle's path inside the egress-proxy (Input.ExtraCA).
	CAFile string `json:"ca_file,omitempty"`
}

// HostEntry is one /etc/hosts line.
type HostEntry struct {
	Name string     `json:"name"`
	Addr netip.Addr `json:"addr"`
}

// StageFile is a file the runtime writes into the stage dir before the containers start.
type StageFile struct {
	Name    string `json:"name"`
	Mode    uint32 `json:"mode"`
	Content string `json:"content"`
}

var (
	suffixRE   = regexp.MustCompile(`^[0-9a-f]{6}$`)
	identityRE = regexp.MustCompile(`^([a-z][a-z0-9-]{0,23})-([0-9a-f]{6})$`)
)

// ParseIdentity splits an identity into agent name and suffix, or says why it is invalid.
func ParseIdentity(id string) (agent, suffix string, err error) {
	m := identityRE.FindStringSubmatch(id)
	if m == nil {
		return "", "", fmt.Errorf("%q is not a bottle identity (AGENT-xxxxxx); list bottles with `bottle ps`", id)
	}
	return m[1], m[2], nil
}

// ContainerName returns the containerd name of a bottle's container. Every role has a
// suffix because runsc also finds containers by ID prefix: no name may be a prefix of
// another (agent names cannot contain an identity-like segment, see manifest).
func ContainerName(identity, role string) string {
	return "bottle-" + identity + "-" + role
}

// Build makes the plan. Errors are user errors that say what to fix.
func Build(in Input) (*Plan, error) {
	m := in.Manifest
	agent := m.Agents[in.AgentName]
	if agent == nil {
		return nil, fmt.Errorf("unknown agent %q in %s; known agents: %s", in.AgentName, in.ManifestPath, strings.Join(m.AgentNames(), ", "))
	}
	bottle := m.Bottles[agent.Bottle]
	if bottle == nil {
		return nil, fmt.Errorf("agent %q uses unknown bottle %q in %s", in.AgentName, agent.Bottle, in.ManifestPath)
	}
	identity, err := identityFor(in)
	if err != nil {
		return nil, err
	}
	if !in.Internal.Addr().Is4() || !in.Egress.Addr().Is4() || in.Internal.Bits() > 28 || in.Egress.Bits() > 28 {
		return nil, fmt.Errorf("plan: internal and egress subnets must be set (at least /28)")
	}
	if in.Internal.Overlaps(in.Egress) {
		return nil, fmt.Errorf("plan: internal subnet %s overlaps egress subnet %s", in.Internal, in.Egress)
	}
	if in.StateDir == "" || !path.IsAbs(in.StateDir) {
		return nil, fmt.Errorf("plan: state dir %q must be an absolute path", in.StateDir)
	}
	if in.Workspace == "" || !path.IsAbs(in.Workspace) {
		return nil, fmt.Errorf("plan: workspace %q must be an absolute path", in.Workspace)
	}

	p := &Plan{
		Identity: identity,
		Agent:    in.AgentName,
		Bottle:   agent.Bottle,
		Manifest: in.ManifestPath,
		Runtime:  cmp.Or(in.RuntimeOverride, bottle.Runtime, "auto"),
		StageDir: path.Join(in.StateDir, "bottles", identity, "stage"),
	}
	if !slices.Contains(manifest.RuntimeChoices, p.Runtime) {
		return nil, fmt.Errorf("unknown runtime %q; use one of: %s", p.Runtime, strings.Join(manifest.RuntimeChoices, ", "))
	}
	p.Filter, err = chooseFilter(cmp.Or(in.FilterOverride, bottle.Filter, "auto"), in.PipelockPresent)
	if err != nil {
		return nil, err
	}
	p.Workspace = Workspace{Host: in.Workspace, Copy: in.CopyWorkspace, Source: in.Workspace}
	if in.CopyWorkspace {
		p.Workspace.Source = path.Join(in.StateDir, "bottles", identity, "workspace")
	}
	p.Networks = []Network{
		{Kind: NetInternal, Subnet: in.Internal.Masked()},
		{Kind: NetEgress, Subnet: in.Egress.Masked(), Gateway: hostAddr(in.Egress, 1)},
	}
	p.Allowlist = EffectiveAllowlist(bottle)
	p.AllowlistSummary = AllowlistSummary(p.Allowlist)
	for _, r := range bottle.EgressProxy.Routes {
		route := Route{Host: strings.ToLower(r.Host), TokenRef: r.TokenRef, Header: r.HeaderName(), Scheme: r.SchemeName(), Roles: r.Roles()}
		if in.ExtraCA != "" {
			route.CAFile = extraCAPath
		}
		p.Routes = append(p.Routes, route)
	}

	b := &builder{in: in, p: p, agent: agent, bottle: bottle}
	return b.build()
}

type builder struct {
	in     Input
	p      *Plan
	agent  *manifest.Agent
	bottle *manifest.Bottle
}

func (b *builder) build() (*Plan, error) {
	p := b.p
	roles := []string{RoleAgent, RoleFilter}
	if len(p.Routes) > 0 {
		roles = append(roles, RoleEgressProxy)
	}
	if len(b.bottle.Git) > 0 {
		roles = append(roles, RoleGitGate)
	}
	if b.bottle.Supervise {
		roles = append(roles, RoleSupervise)
	}
	p.StageFiles = append(p.StageFiles,
		StageFile{Name: "agent/hosts", Mode: 0o644, Content: b.hostsFile(roles, RoleAgent)},
		StageFile{Name: "agent/resolv.conf", Mode: 0o644, Content: "# bottle: no DNS inside the bottle; reach the outside through the proxy (HTTPS_PROXY).\n"},
		StageFile{Name: "agent/prompt.txt", Mode: 0o644, Content: b.agent.Prompt},
		StageFile{Name: "sidecar/hosts", Mode: 0o644, Content: b.hostsFile(roles, "")},
		StageFile{Name: "sidecar/resolv.conf", Mode: 0o644, Content: b.in.SidecarResolvConf},
	)
	if b.in.ExtraCA != "" {
		p.StageFiles = append(p.StageFiles, StageFile{Name: "sidecar/extra-ca.pem", Mode: 0o644, Content: b.in.ExtraCA})
	}
	for _, role := range roles {
		var c *Container
		var err error
		switch role {
		case RoleAgent:
			c, err = b.agentContainer(roles)
		case RoleFilter:
			c, err = b.filterContainer()
		case RoleEgressProxy:
			c, err = b.egressProxyContainer()
		case RoleGitGate:
			c, err = b.gitGateContainer()
		default:
			c, err = b.plainSidecar(role)
		}
		if err != nil {
			return nil, err
		}
		p.Containers = append(p.Containers, c)
	}
	sort.Strings(p.Unresolved)
	if b.in.Strict && len(p.Unresolved) > 0 {
		return nil, fmt.Errorf("host environment variables not set: %s; export them (they are read at start and handed only to the containers that need them) or mark forwarded names optional with optional_env", strings.Join(p.Unresolved, ", "))
	}
	return p, nil
}

func (b *builder) addr(role, network string) netip.Addr {
	n := b.in.Internal
	if network == NetEgress {
		n = b.in.Egress
	}
	return hostAddr(n, hostPart[role])
}

func (b *builder) hostsFile(roles []string, self string) string {
	var s strings.Builder
	s.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
	if self != "" {
		fmt.Fprintf(&s, "%s\t%s\n", b.addr(self, NetInternal), b.p.Identity)
	}
	for _, r := range roles {
		if r == RoleAgent {
			continue
		}
		fmt.Fprintf(&s, "%s\t%s\n", b.addr(r, NetInternal), r)
	}
	if self == "" {
		for _, h := range b.in.SidecarHosts {
			fmt.Fprintf(&s, "%s\t%s\n", h.Addr, h.Name)
		}
	}
	return s.String()
}

func (b *builder) newContainer(role, image string, egress bool) *Container {
	c := &Container{
		Name:  ContainerName(b.p.Identity, role),
		Role:  role,
		Image: image,
		Labels: map[string]string{
			LabelIdentity: b.p.Identity,
			LabelRole:     role,
			LabelAgent:    b.p.Agent,
			LabelName:     ContainerName(b.p.Identity, role),
		},
		Attachments: []Attachment{{Network: NetInternal, IfName: "eth0", Address: b.addr(role, NetInternal)}},
	}
	if egress {
		c.Attachments = append(c.Attachments, Attachment{Network: NetEgress, IfName: "eth1", Address: b.addr(role, NetEgress)})
	}
	return c
}

func (b *builder) agentContainer(roles []string) (*Container, error) {
	c := b.newContainer(RoleAgent, b.agent.Image, false)
	env := map[string]string{}
	for k, v := range b.agent.Env {
		env[k] = v
	}
	for _, names := range []struct {
		list     []string
		optional bool
	}{{b.agent.ForwardEnv, false}, {b.agent.OptionalEnv, true}} {
		for _, name := range names.list {
			v, ok := b.lookup(name)
			switch {
			case ok:
				env[name] = v
				c.SecretEnv = append(c.SecretEnv, name)
			case !names.optional:
				b.p.Unresolved = append(b.p.Unresolved, name)
			}
		}
	}
	proxy := fmt.Sprintf("http://%s:%d", RoleFilter, FilterPort)
	noProxy := []string{"localhost", "127.0.0.1", "::1"}
	for _, r := range roles {
		if r != RoleAgent && r != RoleFilter {
			noProxy = append(noProxy, r)
		}
	}
	for _, k := range []string{"HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"} {
		env[k] = proxy
	}
	env["NO_PROXY"] = strings.Join(noProxy, ",")
	env["no_proxy"] = env["NO_PROXY"]
	env["BOTTLE_IDENTITY"] = b.p.Identity
	for _, r := range b.p.Routes {
		if slices.Contains(r.Roles, manifest.RoleClaudeCodeOAuth) {
			// The agent holds only a placeholder; the egress-proxy swaps in the real token.
			env["CLAUDE_CODE_OAUTH_TOKEN"] = ClaudePlaceholderToken
			env["ANTHROPIC_BASE_URL"] = RouteURL(r.Host)
			setDefault(env, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
			setDefault(env, "DISABLE_ERROR_REPORTING", "1")
		}
	}
	// The agent's git reaches each declared remote through git-gate, by its usual URL.
	for i, g := range b.bottle.Git {
		env[fmt.Sprintf("GIT_CONFIG_KEY_%d", i)] = fmt.Sprintf("url.%s.insteadOf", GitGateURL(g.Name))
		env[fmt.Sprintf("GIT_CONFIG_VALUE_%d", i)] = g.URL
		env["GIT_CONFIG_COUNT"] = fmt.Sprint(i + 1)
	}
	// A forwarded name can never smuggle a routed credential in: validation rejects
	// token_ref names in forward_env, and the placeholder above overrides literals.
	args := b.agent.Command
	if len(b.in.Command) > 0 {
		args = b.in.Command
	}
	user := b.agent.User
	if user == "" && b.in.WorkspaceOwner != "" && !strings.HasPrefix(b.in.WorkspaceOwner, "0:") {
		user = b.in.WorkspaceOwner
	}
	uid, gid := uint32(1000), uint32(1000)
	if user != "" {
		var err error
		if uid, gid, err = manifest.ParseUser(user); err != nil {
			return nil, err
		}
	}
	res := b.bottle.Resources
	mem := res.MemoryMB
	if mem == 0 {
		mem = 8192
	}
	pids := res.Pids
	if pids == 0 {
		pids = 4096
	}
	stage := b.p.StageDir
	spec, err := NewSpec(
		WithArgs(args...),
		WithEnv(env),
		WithCwd("/workspace"),
		WithUser(uid, gid),
		WithHostname(b.p.Identity),
		WithBind(b.p.Workspace.Source, "/workspace", false),
		WithBind(path.Join(stage, "agent/hosts"), "/etc/hosts", true),
		WithBind(path.Join(stage, "agent/resolv.conf"), "/etc/resolv.conf", true),
		WithBind(path.Join(stage, "agent/prompt.txt"), "/run/bottle/prompt.txt", true),
		// runsc keeps rootfs writes in a sandbox-private overlay by default, lost when the
		// sandbox ends; writing through to the snapshot is what lets resume continue.
		WithAnnotation("dev.gvisor.flag.overlay2", "none"),
		WithMemoryLimit(mem<<20),
		WithCPUs(res.CPUs),
		WithPidsLimit(pids),
	)
	if err != nil {
		return nil, fmt.Errorf("agent spec: %w", err)
	}
	c.Spec = spec
	sort.Strings(c.SecretEnv)
	return c, nil
}

// sidecarSpec is the common hardened spec of our sidecars: unprivileged user, read-only
// rootfs, the bottle's hosts file and the outside resolver.
func (b *builder) sidecarSpec(role string, args []string, env map[string]string, extra ...SpecOpt) (*specs.Spec, error) {
	stage := b.p.StageDir
	opts := []SpecOpt{
		WithArgs(args...),
		WithEnv(env),
		WithUser(SidecarUID, SidecarUID),
		WithReadonlyRootfs,
		WithHostname(role),
		WithBind(path.Join(stage, "sidecar/hosts"), "/etc/hosts", true),
		WithBind(path.Join(stage, "sidecar/resolv.conf"), "/etc/resolv.conf", true),
		// The only writable place: the sidecar reports readiness there (SidecarReadyFile).
		WithBind(path.Join(stage, SidecarRunDir(role)), "/run/bottle", false),
		WithMemoryLimit(512 << 20),
		WithPidsLimit(512),
	}
	spec, err := NewSpec(append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("%s spec: %w", role, err)
	}
	return spec, nil
}

func (b *builder) filterContainer() (*Container, error) {
	listen := fmt.Sprintf("%s:%d", b.addr(RoleFilter, NetInternal), FilterPort)
	stage := b.p.StageDir
	if b.p.Filter == FilterPipelock {
		// pipelock cannot report readiness in a file: it listens on every interface so
		// the host can ask GET /health on the egress side.
		listen = fmt.Sprintf("0.0.0.0:%d", FilterPort)
		c := b.newContainer(RoleFilter, PipelockImageFor(b.bottle, b.in.PipelockImage), true)
		b.p.StageFiles = append(b.p.StageFiles, StageFile{Name: "filter/pipelock.yaml", Mode: 0o644, Content: PipelockConfig(b.p.Allowlist, egress.DefaultInternal)})
		spec, err := b.sidecarSpec(RoleFilter, []string{"/pipelock", "run", "--listen", listen, "--config", "/etc/pipelock/pipelock.yaml"}, nil,
			WithBind(path.Join(stage, "filter/pipelock.yaml"), "/etc/pipelock/pipelock.yaml", true))
		c.Spec = spec
		return c, err
	}
	c := b.newContainer(RoleFilter, b.in.SidecarImage, true)
	cfg, err := json.MarshalIndent(FilterConfig{Listen: listen, Allowlist: b.p.Allowlist, Internal: egress.DefaultInternal, Ports: []int{443, 80}}, "", "  ")
	if err != nil {
		return nil, err
	}
	b.p.StageFiles = append(b.p.StageFiles, StageFile{Name: "filter/filter.json", Mode: 0o644, Content: string(cfg) + "\n"})
	spec, err := b.sidecarSpec(RoleFilter, []string{"/bottle", "sidecar", "filter", "--config", "/etc/bottle/filter.json"}, nil,
		WithBind(path.Join(stage, "filter/filter.json"), "/etc/bottle/filter.json", true))
	c.Spec = spec
	return c, err
}

func (b *builder) egressProxyContainer() (*Container, error) {
	c := b.newContainer(RoleEgressProxy, b.in.SidecarImage, true)
	listen := fmt.Sprintf("%s:%d", b.addr(RoleEgressProxy, NetInternal), EgressProxyPort)
	env := map[string]string{}
	for _, r := range b.p.Routes {
		if v, ok := b.lookup(r.TokenRef); ok && v != "" {
			env[r.TokenRef] = v
			c.SecretEnv = append(c.SecretEnv, r.TokenRef)
		} else {
			b.p.Unresolved = append(b.p.Unresolved, r.TokenRef)
		}
	}
	cfg, err := json.MarshalIndent(EgressProxyConfig{Listen: listen, Routes: b.p.Routes}, "", "  ")
	if err != nil {
		return nil, err
	}
	b.p.StageFiles = append(b.p.StageFiles, StageFile{Name: "egress-proxy/routes.json", Mode: 0o644, Content: string(cfg) + "\n"})
	mounts := []SpecOpt{WithBind(path.Join(b.p.StageDir, "egress-proxy/routes.json"), "/etc/bottle/routes.json", true)}
	if b.in.ExtraCA != "" {
		mounts = append(mounts, WithBind(path.Join(b.p.StageDir, "sidecar/extra-ca.pem"), extraCAPath, true))
	}
	spec, err := b.sidecarSpec(RoleEgressProxy, []string{"/bottle", "sidecar", "egress-proxy", "--config", "/etc/bottle/routes.json"}, env, mounts...)
	c.Spec = spec
	sort.Strings(c.SecretEnv)
	return c, err
}

// gitGateContainer plans git-gate: its config names each remote's credential; the
// credentials themselves (HTTPS tokens, SSH private keys) go only into its process env.
func (b *builder) gitGateContainer() (*Container, error) {
	c := b.newContainer(RoleGitGate, b.in.SidecarImage, true)
	cfg := GitGateConfig{
		Listen:   fmt.Sprintf("%s:%d", b.addr(RoleGitGate, NetInternal), GitGatePort),
		SpoolDir: "/run/bottle/spool",
	}
	if b.in.ExtraCA != "" {
		cfg.CAFile = extraCAPath
	}
	env := map[string]string{}
	for i, g := range b.bottle.Git {
		r := GitGateRemote{Name: g.Name, URL: g.URL, KnownHosts: g.KnownHosts, PushOptions: g.PushOptions}
		for _, pr := range g.PushRules() {
			r.Push = append(r.Push, GitPushRule{Ref: pr.Ref, Force: pr.Force, Delete: pr.Delete})
		}
		if g.TokenRef != "" {
			r.TokenEnv = g.TokenRef
			if v, ok := b.lookup(g.TokenRef); ok && v != "" {
				env[g.TokenRef] = v
				c.SecretEnv = append(c.SecretEnv, g.TokenRef)
			} else {
				b.p.Unresolved = append(b.p.Unresolved, g.TokenRef)
			}
		}
		if g.SSHKey != "" {
			r.SSHKeyEnv = fmt.Sprint(manifest.SSHKeyEnvPrefix, i)
			if b.in.ReadFile == nil {
				b.p.Unresolved = append(b.p.Unresolved, "ssh_key "+sshKeyPath(g.SSHKey, b.in.ManifestPath))
			} else if key, err := readSSHKey(b.in.ReadFile, b.in.ManifestPath, b.agent.Bottle, i, g); err != nil {
				return nil, err
			} else {
				env[r.SSHKeyEnv] = string(key)
				c.SecretEnv = append(c.SecretEnv, r.SSHKeyEnv)
			}
		}
		cfg.Remotes = append(cfg.Remotes, r)
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	b.p.StageFiles = append(b.p.StageFiles, StageFile{Name: "git-gate/config.json", Mode: 0o644, Content: string(data) + "\n"})
	mounts := []SpecOpt{
		WithBind(path.Join(b.p.StageDir, "git-gate/config.json"), "/etc/bottle/git-gate.json", true),
		// Port 80 (http://git-gate/NAME.git) needs this one capability, nothing else.
		WithCapabilities("CAP_NET_BIND_SERVICE"),
	}
	if b.in.ExtraCA != "" {
		mounts = append(mounts, WithBind(path.Join(b.p.StageDir, "sidecar/extra-ca.pem"), extraCAPath, true))
	}
	spec, err := b.sidecarSpec(RoleGitGate, []string{"/bottle", "sidecar", "git-gate", "--config", "/etc/bottle/git-gate.json"}, env, mounts...)
	c.Spec = spec
	sort.Strings(c.SecretEnv)
	return c, err
}

// HostFiles are the host files an agent's bottle names (each git remote's ssh_key), read
// once by ReadHostFiles; Read serves them to Build.
type HostFiles map[string][]byte

// Read returns a file ReadHostFiles read; any other path is an error.
func (f HostFiles) Read(path string) ([]byte, error) {
	data, ok := f[path]
	if !ok {
		return nil, fmt.Errorf("%s was not read before the start", path)
	}
	return data, nil
}

// ReadHostFiles reads the host files an agent's bottle names through read. start and
// resume call it before they create anything, so that a file it cannot read is refused
// before there is anything to take back, and hand the result to Build as its ReadFile.
func ReadHostFiles(m *manifest.Manifest, manifestPath, agent string, read func(string) ([]byte, error)) (HostFiles, error) {
	files := HostFiles{}
	a := m.Agents[agent]
	if a == nil || m.Bottles[a.Bottle] == nil {
		return files, nil // Build says what is wrong
	}
	for i, g := range m.Bottles[a.Bottle].Git {
		if g.SSHKey != "" {
			key, err := readSSHKey(read, manifestPath, a.Bottle, i, g)
			if err != nil {
				return nil, err
			}
			files[sshKeyPath(g.SSHKey, manifestPath)] = key
		}
	}
	return files, nil
}

// readSSHKey reads the ssh_key of the bottle's remote i; its error is a manifest error
// naming the field.
func readSSHKey(read func(string) ([]byte, error), manifestPath, bottle string, i int, g *manifest.GitRemote) ([]byte, error) {
	key, err := read(sshKeyPath(g.SSHKey, manifestPath))
	if err != nil {
		return nil, &manifest.Errors{List: []*manifest.FieldError{{
			File: manifestPath, Path: fmt.Sprintf("bottles.%s.git[%d].ssh_key", bottle, i),
			Problem: fmt.Sprintf("git remote %s: cannot read ssh_key: %v", g.Name, err),
			Fix:     "name the private key file (absolute, or relative to the manifest's directory) and run bottle as a user who can read it",
		}}}
	}
	return key, nil
}

// sshKeyPath is where a remote's ssh_key is on the host: a relative path is relative to
// the manifest's directory.
func sshKeyPath(key, manifestPath string) string {
	if path.IsAbs(key) || manifestPath == manifest.DefaultName {
		return key
	}
	return path.Join(path.Dir(manifestPath), key)
}

// GitGateURL is where the agent reaches a declared remote.
func GitGateURL(name string) string { return fmt.Sprintf("http://%s/%s.git", RoleGitGate, name) }

// GitGateConfig is git-gate's config file (the JSON shape of gitgate.Config).
type GitGateConfig struct {
	Listen   string          `json:"listen"`
	Remotes  []GitGateRemote `json:"remotes"`
	CAFile   string          `json:"ca_file,omitempty"`
	SpoolDir string          `json:"spool_dir,omitempty"`
}

// GitGateRemote is one remote in GitGateConfig; credentials are env names only.
type GitGateRemote struct {
	Name       string        `json:"name"`
	URL        string        `json:"url"`
	TokenEnv   string        `json:"token_env,omitempty"`
	SSHKeyEnv  string        `json:"ssh_key_env,omitempty"`
	KnownHosts string        `json:"known_hosts,omitempty"`
	Push       []GitPushRule `json:"push"`
	// PushOptions are the push options passed upstream (gitgate.Remote.PushOptions).
	PushOptions []string `json:"push_options,omitempty"`
}

// GitPushRule allows pushes to refs matching Ref.
type GitPushRule struct {
	Ref    string `json:"ref"`
	Force  bool   `json:"force,omitempty"`
	Delete bool   `json:"delete,omitempty"`
}

// plainSidecar plans supervise from bottle's own image; its configuration is added by
// the feature that implements it.
func (b *builder) plainSidecar(role string) (*Container, error) {
	c := b.newContainer(role, b.in.SidecarImage, role == RoleGitGate)
	spec, err := b.sidecarSpec(role, []string{"/bottle", "sidecar", role}, nil)
	c.Spec = spec
	return c, err
}

func (b *builder) lookup(name string) (string, bool) {
	if b.in.LookupEnv == nil {
		return "", false
	}
	return b.in.LookupEnv(name)
}

// SidecarRunDir is the stage subdirectory mounted writable at /run/bottle in a sidecar;
// the runtime creates it owned by SidecarUID.
func SidecarRunDir(role string) string { return path.Join("run", role) }

// SidecarReadyFile is created in /run/bottle by a sidecar once it serves; a sidecar that
// fails writes its error to SidecarErrorFile there instead.
const (
	SidecarReadyFile = "ready"
	SidecarErrorFile = "error"
)

// extraCAPath is where the egress-proxy finds Input.ExtraCA.
const extraCAPath = "/etc/bottle/extra-ca.pem"

// SidecarUID is the unprivileged user every sidecar runs as.
const SidecarUID = 65534

// PipelockImageFor is the pipelock image of a bottle: the override (a flag), else the
// manifest's, else the pinned default.
func PipelockImageFor(b *manifest.Bottle, override string) string {
	return cmp.Or(override, b.PipelockImage, DefaultPipelockImage)
}

// RouteURL is the base URL through which the agent reaches a route's upstream.
func RouteURL(host string) string {
	return fmt.Sprintf("http://%s:%d/%s", RoleEgressProxy, EgressProxyPort, host)
}

// FilterConfig is the builtin filter's config file.
type FilterConfig struct {
	Listen    string   `json:"listen"`
	Allowlist []string `json:"allowlist"`
	Internal  []string `json:"internal"`
	Ports     []int    `json:"ports"`
}

// EgressProxyConfig is the egress-proxy's config file; it names credentials, never holds them.
type EgressProxyConfig struct {
	Listen string  `json:"listen"`
	Routes []Route `json:"routes"`
}

func identityFor(in Input) (string, error) {
	if in.Identity != "" {
		agent, _, err := ParseIdentity(in.Identity)
		if err != nil {
			return "", err
		}
		if agent != in.AgentName {
			return "", fmt.Errorf("identity %q belongs to agent %q, not %q", in.Identity, agent, in.AgentName)
		}
		return in.Identity, nil
	}
	if in.NewSuffix == nil {
		return "", fmt.Errorf("plan: no identity source")
	}
	s, err := in.NewSuffix()
	if err != nil {
		return "", fmt.Errorf("new bottle identity: %w", err)
	}
	if !suffixRE.MatchString(s) {
		return "", fmt.Errorf("plan: identity suffix %q is not 6 lowercase hex digits", s)
	}
	return in.AgentName + "-" + s, nil
}

func chooseFilter(choice string, pipelockPresent bool) (string, error) {
	switch choice {
	case "auto":
		if pipelockPresent {
			return FilterPipelock, nil
		}
		return FilterBuiltin, nil
	case FilterBuiltin, FilterPipelock:
		return choice, nil
	}
	return "", fmt.Errorf("unknown filter %q; use one of: %s", choice, strings.Join(manifest.FilterChoices, ", "))
}

// hostAddr returns the n-th address of prefix p.
func hostAddr(p netip.Prefix, n byte) netip.Addr {
	a := p.Masked().Addr().As4()
	a[3] += n
	return netip.AddrFrom4(a)
}

func setDefault(env map[string]string, k, v string) {
	if _, ok := env[k]; !ok {
		env[k] = v
	}
}
