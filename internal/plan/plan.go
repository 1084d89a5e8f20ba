// Package plan turns a manifest, an agent name and the host environment into a frozen plan:
// the bottle's identity, one OCI runtime spec per container, the network layout, the
// effective allowlist and the rendered sidecar configs.
//
// The package is pure: it does no I/O and reads no clock or randomness except through the
// Input's injected functions, so plans are reproducible in tests. (containerd's default
// spec, under NewSpec, looks once at the host's CPUs to mask their thermal_throttle
// directories; NewSpec drops those paths again, so a plan is the same on every host.)
package plan

import (
	"cmp"
	"fmt"
	"net/netip"
	"path"
	"slices"
	"sort"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/protect"
)

// Redacted replaces every secret value in plan output.
const Redacted = "<redacted>"

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
	Identity names.Identity
	// Workspace is the host directory the agent works in; CopyWorkspace gives the agent a
	// copy (made by the runtime in the stage dir) instead of the directory itself.
	Workspace     string
	CopyWorkspace bool
	// WorkspaceDir is what the host says of the workspace directory: the agent runs as
	// its owner (so the files it makes belong to that owner) unless the manifest sets a
	// user, and a user that cannot write it is warned about.
	WorkspaceDir DirInfo
	// Protect is the workspace protection the host found (protect.Plan of the
	// workspace, or of its copy): the agent gets these paths as their own mounts.
	Protect protect.Layout
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
	SidecarHosts []names.HostEntry
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
	Identity names.Identity `json:"identity"`
	Agent    string         `json:"agent"`
	Bottle   string         `json:"bottle"`
	Manifest string         `json:"manifest"`
	Runtime  string         `json:"runtime"`
	Filter   string         `json:"filter"`
	StageDir string         `json:"stage_dir"`
	// AuditDir is the bottle's audit trail (audit.Dir): outside its dir, it outlives rm.
	AuditDir         string         `json:"audit_dir"`
	Workspace        Workspace      `json:"workspace"`
	Networks         []Network      `json:"networks"`
	Containers       []*Container   `json:"containers"`
	Allowlist        []string       `json:"allowlist"`
	AllowlistSummary string         `json:"allowlist_summary"`
	Routes           []egress.Route `json:"routes,omitempty"`
	StageFiles       []StageFile    `json:"stage_files"`
	// Unresolved lists host env names the plan needs but the host does not set.
	Unresolved []string `json:"unresolved,omitempty"`
	// Warnings are what would not work as the user likely expects (each with its fix).
	Warnings []string `json:"warnings,omitempty"`
}

// Workspace is the agent's /workspace.
type Workspace struct {
	Host string `json:"host"`
	Copy bool   `json:"copy"`
	// Source is what is bind-mounted: Host itself, or the copy in the bottle's dir
	// (WorkspaceCopyDir), which the runtime makes and gives to the agent's user.
	Source string `json:"source"`
	// Protect is what of the workspace the agent gets read-only, and the missing dirs
	// the runtime creates first (empty) to mount them.
	Protect protect.Layout `json:"protect,omitzero"`
}

// DirInfo is the owner and permission bits of a host directory (Known false: unread).
type DirInfo struct {
	Known    bool
	UID, GID uint32
	Perm     uint32
}

// WorkspaceCopyDir is where a bottle's --cwd copy lives: in its dir, so it goes with `rm`.
func WorkspaceCopyDir(stateDir string, id names.Identity) string {
	return path.Join(stateDir, "bottles", id.String(), "workspace")
}

// Network is one of the bottle's two networks.
type Network struct {
	Kind   string       `json:"kind"`
	Subnet netip.Prefix `json:"subnet"`
	// Gateway is the host-side address with a default route (egress only).
	Gateway netip.Addr `json:"gateway,omitzero"`
}

// Container is one container of the bottle.
type Container struct {
	Name        string             `json:"name"`
	Role        string             `json:"role"`
	Image       string             `json:"image"`
	Attachments []names.Attachment `json:"attachments"`
	Labels      map[string]string  `json:"labels"`
	Spec        *specs.Spec        `json:"spec"`
	// SecretEnv names the env entries whose values are secrets (redacted in output).
	SecretEnv []string `json:"secret_env,omitempty"`
	// Ready says how the runtime sees that a sidecar serves; nil for the agent.
	Ready *Readiness `json:"ready,omitempty"`
	// AuditDir is the host dir this sidecar writes its audit records to ("": none).
	AuditDir string `json:"audit_dir,omitempty"`
}

// StageFile is a file the runtime writes into the stage dir before the containers start.
type StageFile struct {
	Name    string `json:"name"`
	Mode    uint32 `json:"mode"`
	Content string `json:"content"`
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
		StageDir: StageDir(in.StateDir, identity),
		AuditDir: audit.Dir(in.StateDir, identity),
	}
	if !slices.Contains(manifest.RuntimeChoices, p.Runtime) {
		return nil, fmt.Errorf("unknown runtime %q%s; use one of: %s", p.Runtime, manifest.DidYouMean(p.Runtime, manifest.RuntimeChoices), strings.Join(manifest.RuntimeChoices, ", "))
	}
	p.Filter, err = chooseFilter(cmp.Or(in.FilterOverride, bottle.Filter, "auto"), in.PipelockPresent)
	if err != nil {
		return nil, err
	}
	p.Workspace = Workspace{Host: in.Workspace, Copy: in.CopyWorkspace, Source: in.Workspace, Protect: in.Protect}
	if in.CopyWorkspace {
		p.Workspace.Source = WorkspaceCopyDir(in.StateDir, identity)
	}
	p.Networks = []Network{
		{Kind: names.NetInternal, Subnet: in.Internal.Masked()},
		{Kind: names.NetEgress, Subnet: in.Egress.Masked(), Gateway: hostAddr(in.Egress, 1)},
	}
	p.Allowlist = EffectiveAllowlist(bottle)
	p.AllowlistSummary = AllowlistSummary(p.Allowlist)
	for _, r := range bottle.EgressProxy.Routes {
		p.Routes = append(p.Routes, Route(r, in.ExtraCA != ""))
	}

	b := &builder{in: in, p: p, agent: agent, bottle: bottle}
	return b.build()
}

type builder struct {
	in     Input
	p      *Plan
	agent  *manifest.Agent
	bottle *manifest.Bottle
	// hints says, per unresolved name, what needs it and how to provide it: a forwarded
	// name can be made optional, a credential cannot.
	hints map[string]string
}

// unresolved records a host value the plan needs but the host does not have (once, with
// the first hint).
func (b *builder) unresolved(name, hint string) {
	if _, seen := b.hints[name]; seen {
		return
	}
	if b.hints == nil {
		b.hints = map[string]string{}
	}
	b.hints[name] = hint
	b.p.Unresolved = append(b.p.Unresolved, name)
}

func (b *builder) build() (*Plan, error) {
	p := b.p
	var kinds []sidecarKind
	roles := []string{names.RoleAgent}
	for _, k := range sidecarKinds {
		if k.wanted(b) {
			kinds = append(kinds, k)
			roles = append(roles, k.role())
		}
	}
	p.StageFiles = append(p.StageFiles,
		StageFile{Name: "agent/hosts", Mode: 0o644, Content: b.hostsFile(roles, names.RoleAgent)},
		StageFile{Name: "agent/resolv.conf", Mode: 0o644, Content: "# bottle: no DNS inside the bottle; reach the outside through the proxy (HTTPS_PROXY).\n"},
		StageFile{Name: "agent/prompt.txt", Mode: 0o644, Content: b.agent.Prompt},
		StageFile{Name: "sidecar/hosts", Mode: 0o644, Content: b.hostsFile(roles, "")},
		StageFile{Name: "sidecar/resolv.conf", Mode: 0o644, Content: b.in.SidecarResolvConf},
	)
	if b.in.ExtraCA != "" {
		p.StageFiles = append(p.StageFiles, StageFile{Name: "sidecar/extra-ca.pem", Mode: 0o644, Content: b.in.ExtraCA})
	}
	agent, err := b.agentContainer(roles)
	if err != nil {
		return nil, err
	}
	p.Containers = append(p.Containers, agent)
	for _, k := range kinds {
		c, err := k.container(b)
		if err != nil {
			return nil, err
		}
		if _, ok := k.(recordingKind); ok {
			b.withAuditTrail(c)
		}
		sort.Strings(c.SecretEnv)
		p.Containers = append(p.Containers, c)
	}
	sort.Strings(p.Unresolved)
	if b.in.Strict && len(p.Unresolved) > 0 {
		missing := make([]string, len(p.Unresolved))
		for i, name := range p.Unresolved {
			missing[i] = fmt.Sprintf("%s (%s)", name, b.hints[name])
		}
		return nil, fmt.Errorf("not set on this host: %s; values are read at start and handed only to the container that needs them (sudo drops the environment: use sudo -E)", strings.Join(missing, "; "))
	}
	return p, nil
}

func (b *builder) addr(role, network string) netip.Addr {
	n := b.in.Internal
	if network == names.NetEgress {
		n = b.in.Egress
	}
	return hostAddr(n, hostPart[role])
}

func (b *builder) hostsFile(roles []string, self string) string {
	var s strings.Builder
	s.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
	if self != "" {
		fmt.Fprintf(&s, "%s\t%s\n", b.addr(self, names.NetInternal), b.p.Identity)
	}
	for _, r := range roles {
		if r == names.RoleAgent {
			continue
		}
		fmt.Fprintf(&s, "%s\t%s\n", b.addr(r, names.NetInternal), r)
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
		Name:  b.p.Identity.Container(role),
		Role:  role,
		Image: image,
		Labels: map[string]string{
			names.LabelIdentity: b.p.Identity.String(),
			names.LabelRole:     role,
			names.LabelAgent:    b.p.Agent,
			names.LabelName:     b.p.Identity.Container(role),
		},
		Attachments: []names.Attachment{{Network: names.NetInternal, IfName: "eth0", Address: b.addr(role, names.NetInternal)}},
	}
	if egress {
		c.Attachments = append(c.Attachments, names.Attachment{Network: names.NetEgress, IfName: "eth1", Address: b.addr(role, names.NetEgress)})
	}
	return c
}

func (b *builder) lookup(name string) (string, bool) {
	if b.in.LookupEnv == nil {
		return "", false
	}
	return b.in.LookupEnv(name)
}

func identityFor(in Input) (names.Identity, error) {
	if in.Identity != "" {
		id, err := names.ParseIdentity(string(in.Identity))
		if err != nil {
			return "", err
		}
		if id.Agent() != in.AgentName {
			return "", fmt.Errorf("identity %q belongs to agent %q, not %q", in.Identity, id.Agent(), in.AgentName)
		}
		return id, nil
	}
	if in.NewSuffix == nil {
		return "", fmt.Errorf("plan: no identity source")
	}
	s, err := in.NewSuffix()
	if err != nil {
		return "", fmt.Errorf("new bottle identity: %w", err)
	}
	id, err := names.NewIdentity(in.AgentName, s)
	if err != nil {
		return "", fmt.Errorf("plan: %w", err)
	}
	return id, nil
}

// hostAddr returns the n-th address of prefix p.
func hostAddr(p netip.Prefix, n byte) netip.Addr {
	a := p.Masked().Addr().As4()
	a[3] += n
	return netip.AddrFrom4(a)
}

// StageDir is where bottle id's stage files are (its sidecars' configs among them).
func StageDir(stateDir string, id names.Identity) string {
	return path.Join(stateDir, "bottles", id.String(), "stage")
}

// Route is the egress-proxy's route of manifest route r; with extraCA it trusts the
// extra CA too.
func Route(r *manifest.Route, extraCA bool) egress.Route {
	route := egress.Route{Host: names.NormalizeHost(r.Host), TokenRef: r.TokenRef, Header: r.HeaderName(), Scheme: new(r.SchemeName()), Roles: r.Roles()}
	if extraCA {
		route.CAFile = extraCAPath
	}
	return route
}
