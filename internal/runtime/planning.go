package runtime

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"os"

	"github.com/bottle-dev/bottle/internal/hostenv"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/protect"
	"github.com/bottle-dev/bottle/internal/slots"
	"github.com/bottle-dev/bottle/internal/state"
)

// PlanOptions choose what a bottle runs: `bottle start` runs it, `bottle plan` shows it.
type PlanOptions struct {
	Manifest     *manifest.Manifest
	ManifestPath string
	Agent        string
	// Workspace is the host directory for /workspace; CopyCwd gives the agent a copy.
	Workspace string
	CopyCwd   bool
	// Command replaces the agent's command when non-empty.
	Command []string
	// HostFiles are the host files the bottle names, read before anything else
	// (plan.ReadHostFiles).
	HostFiles plan.HostFiles
}

// bottle returns the manifest's agent and its bottle.
func (po PlanOptions) bottle() (*manifest.Agent, *manifest.Bottle, error) {
	agent := po.Manifest.Agents[po.Agent]
	if agent == nil {
		return nil, nil, fmt.Errorf("unknown agent %q in %s", po.Agent, po.ManifestPath)
	}
	return agent, po.Manifest.Bottles[agent.Bottle], nil
}

// planFacts are what a plan needs besides the options and the engine's settings: what a
// start learns as it goes (identity, slot, runtime, images), or `bottle plan` assumes.
type planFacts struct {
	identity         names.Identity // empty: draw a new one
	internal, egress netip.Prefix
	runtime          string
	sidecarImage     string
	pipelockPresent  bool
	outside          state.SidecarSettings
	// strict refuses host env the plan needs but the host does not set (a start).
	strict bool
}

// buildPlan is the one place that turns options, engine settings and facts into a plan.
func (e *Engine) buildPlan(po PlanOptions, f planFacts) (*plan.Plan, error) {
	po, err := e.withApprovedRoutes(po, f.identity)
	if err != nil {
		return nil, err
	}
	_, bottle, err := po.bottle()
	if err != nil {
		return nil, err
	}
	uid, gid, perm, known := hostenv.Dir(po.Workspace)
	// A resumed copy is protected as the agent left it; a new one as the host's, which
	// it copies.
	protectDir := po.Workspace
	if copyDir := plan.WorkspaceCopyDir(e.opts.StateDir, f.identity); po.CopyCwd && f.identity != "" {
		if _, err := os.Lstat(copyDir); err == nil {
			protectDir = copyDir
		}
	}
	var paths *[]string
	if bottle != nil {
		paths = bottle.Protect
	}
	layout, err := protect.Plan(protectDir, paths, invokingGitUser())
	if err != nil {
		return nil, err
	}
	in := plan.Input{
		Manifest: po.Manifest, ManifestPath: po.ManifestPath, AgentName: po.Agent,
		LookupEnv: e.lookupEnv, Identity: f.identity, WorkspaceDir: plan.DirInfo{Known: known, UID: uid, GID: gid, Perm: perm}, Protect: layout,
		Workspace: po.Workspace, CopyWorkspace: po.CopyCwd, Command: po.Command,
		StateDir: e.opts.StateDir, Internal: f.internal, Egress: f.egress,
		SidecarImage: f.sidecarImage, PipelockImage: e.pipelockImage(bottle), PipelockPresent: f.pipelockPresent,
		SidecarHosts: f.outside.Hosts, ExtraCA: f.outside.ExtraCA,
		RuntimeOverride: f.runtime, FilterOverride: e.opts.FilterOverride,
		SidecarResolvConf: f.outside.ResolvConf, ReadFile: po.HostFiles.Read, Strict: f.strict,
	}
	if f.identity == "" {
		in.NewSuffix = hostenv.NewSuffix
	}
	return plan.Build(in)
}

// Plan is the plan a start with these options would run now, with the first address
// slot of the pool (a start reserves a free one) and a fresh identity. Without
// containerd (see Offline) it assumes the pipelock image absent.
func (e *Engine) Plan(ctx context.Context, po PlanOptions) (*plan.Plan, error) {
	_, bottle, err := po.bottle()
	if err != nil {
		return nil, err
	}
	present, err := e.pipelockPresent(ctx, bottle)
	if err != nil {
		return nil, err
	}
	internal, egress, err := slots.Subnets(0, e.opts.Pool)
	if err != nil {
		return nil, err
	}
	outside, err := e.sidecarSettings(nil)
	if err != nil {
		outside.ResolvConf = "# " + err.Error() + "\n" // a start would refuse; the plan shows why
	}
	return e.buildPlan(po, planFacts{
		internal: internal, egress: egress, runtime: e.opts.RuntimeOverride,
		sidecarImage: PlannedSidecarImage(e.opts.Version), pipelockPresent: present, outside: outside,
	})
}

// PlannedSidecarImage is the sidecar image a plan names before a start has made the
// image (a start names the one it made, by its executable's digest).
func PlannedSidecarImage(version string) string { return "bottle.local/sidecar:" + version }

// pipelockImage is the pipelock image of a bottle.
func (e *Engine) pipelockImage(bottle *manifest.Bottle) string {
	if bottle == nil {
		return ""
	}
	return plan.PipelockImageFor(bottle, e.opts.PipelockImage)
}

// pipelockPresent reports whether the bottle's pipelock image is in containerd; it is not
// looked for when the builtin filter is chosen anyway, nor without containerd.
func (e *Engine) pipelockPresent(ctx context.Context, bottle *manifest.Bottle) (bool, error) {
	if bottle == nil || e.ctr == nil || cmp.Or(e.opts.FilterOverride, bottle.Filter) == plan.FilterBuiltin {
		return false, nil
	}
	return e.ctr.ImageExists(ctx, e.pipelockImage(bottle))
}

// sidecarSettings are the options given now, else (on resume) the recorded ones, else
// for the resolver the host's own.
func (e *Engine) sidecarSettings(prev *state.Meta) (state.SidecarSettings, error) {
	var rec state.SidecarSettings
	if prev != nil {
		rec = prev.Sidecars
	}
	out := state.SidecarSettings{
		ResolvConf: cmp.Or(e.opts.SidecarResolvConf, rec.ResolvConf),
		Hosts:      e.opts.SidecarHosts,
		ExtraCA:    cmp.Or(e.opts.ExtraCA, rec.ExtraCA),
	}
	if len(out.Hosts) == 0 {
		out.Hosts = rec.Hosts
	}
	if out.ResolvConf == "" {
		rc, err := hostenv.SidecarResolvConf()
		if err != nil {
			return out, fmt.Errorf("%w; pass one with --resolv-conf FILE", err)
		}
		out.ResolvConf = rc
	}
	return out, nil
}
