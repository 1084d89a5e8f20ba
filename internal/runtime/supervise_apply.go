package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/bottle-dev/bottle/internal/ctr"
	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/state"
	"github.com/bottle-dev/bottle/internal/supervise"
)

// Stage files a supervise approval rewrites.
const (
	routesStageFile   = "egress-proxy/routes.json"
	pipelockStageFile = "filter/pipelock.yaml"
)

// withApprovedRoutes is po with the routes approved in bottle id (supervise) added to
// its bottle's, so a resume gives them to the egress-proxy as a start gives the
// manifest's: each credential from this process's env.
func (e *Engine) withApprovedRoutes(po PlanOptions, id names.Identity) (PlanOptions, error) {
	if id == "" {
		return po, nil
	}
	caps, err := plan.SuperviseDirs(e.opts.StateDir, id).ReadCapabilities()
	if errors.Is(err, fs.ErrNotExist) {
		return po, nil // not supervised, or never started
	}
	if err != nil {
		return po, fmt.Errorf("bottle %s: %w", id, err)
	}
	agent, bottle, err := po.bottle()
	if err != nil || bottle == nil || len(caps.ApprovedRoutes) == 0 {
		return po, err
	}
	b := *bottle
	b.EgressProxy.Routes = slices.Clone(b.EgressProxy.Routes)
	for _, r := range caps.ApprovedRoutes {
		// A route the manifest now declares itself is the manifest's.
		if !slices.ContainsFunc(b.EgressProxy.Routes, func(mr *manifest.Route) bool { return names.NormalizeHost(mr.Host) == r.Host }) {
			b.EgressProxy.Routes = append(b.EgressProxy.Routes, manifestRoute(r))
		}
	}
	m := *po.Manifest
	m.Bottles = maps.Clone(m.Bottles)
	m.Bottles[agent.Bottle] = &b
	po.Manifest = &m
	return po, nil
}

func manifestRoute(r supervise.RouteChange) *manifest.Route {
	return &manifest.Route{Host: r.Host, TokenRef: r.TokenRef, Header: r.Header, Scheme: r.Scheme}
}

// approveRoute adds route r to bottle id's egress-proxy: its credential is read from
// this process's env now, the egress-proxy restarted on the same address with the route
// in its config and the credential added to its stored env (the other routes' values
// stay as the start gave them). The agent already reaches every route through the
// egress-proxy's name, so it is not restarted; the builtin filter allows the host too.
// A stopped bottle only records the route: its resume plans it. When anything fails,
// nothing changes.
func (e *Engine) approveRoute(ctx context.Context, id names.Identity, r *supervise.RouteChange, caps *supervise.Capabilities) error {
	if slices.ContainsFunc(caps.Routes, func(x supervise.RouteInfo) bool { return x.Host == r.Host }) {
		return fmt.Errorf("bottle %s has a route to %s already", id, r.Host)
	}
	m, err := e.store.Load(id)
	if err != nil {
		return err
	}
	proxy := id.Container(names.RoleEgressProxy)
	if recorded(m, proxy).Name == "" {
		return fmt.Errorf("bottle %s has no egress-proxy (its manifest declares no routes), and its agent cannot reach one started now without a restart: deny this proposal, add it to the egress_proxy routes of agent %s's bottle in %s and start a new bottle", id, m.Agent, m.ManifestPath)
	}
	spec, err := e.ctr.Spec(ctx, proxy)
	if err != nil {
		return err
	}
	agentSpec, err := e.ctr.Spec(ctx, id.Container(names.RoleAgent))
	if err != nil {
		return err
	}
	if _, held := envValue(agentSpec.Process.Env, r.TokenRef); held {
		return fmt.Errorf("the agent of %s holds $%s itself: a route's credential must be one the agent does not have; deny the proposal", id, r.TokenRef)
	}
	cfgPath := filepath.Join(plan.StageDir(e.opts.StateDir, id), routesStageFile)
	old, err := os.ReadFile(cfgPath)
	if err != nil {
		return fmt.Errorf("egress-proxy config of %s: %w", id, err)
	}
	var cfg egress.ProxyConfig
	if err := json.Unmarshal(old, &cfg); err != nil {
		return fmt.Errorf("egress-proxy config of %s: %w", id, err)
	}
	env := slices.Clone(spec.Process.Env)
	_, inEnv := envValue(env, r.TokenRef)
	switch {
	case slices.ContainsFunc(cfg.Routes, func(x egress.Route) bool { return x.TokenRef == r.TokenRef }):
		// Another route's credential would go to the new host: a proposal could send the
		// GitHub token to a host of the agent's choosing with one approval.
		i := slices.IndexFunc(cfg.Routes, func(x egress.Route) bool { return x.TokenRef == r.TokenRef })
		return fmt.Errorf("$%s is the credential of route %s already; a new route may not re-use it (it would send that credential to %s): deny the proposal, or add the route to the manifest if that is meant", r.TokenRef, cfg.Routes[i].Host, r.Host)
	case inEnv:
		return fmt.Errorf("$%s is a variable of the egress-proxy itself, not a route's credential; deny the proposal", r.TokenRef)
	default:
		v, ok := e.lookupEnv(r.TokenRef)
		if !ok || v == "" {
			return fmt.Errorf("$%s is not set: export the credential of route %s in the shell that approves (only the egress-proxy gets it), then approve again", r.TokenRef, r.Host)
		}
		env = append(env, r.TokenRef+"="+v)
	}
	// Every route trusts the extra CA, or none does.
	route := plan.Route(manifestRoute(*r), len(cfg.Routes) > 0 && cfg.Routes[0].CAFile != "")
	cfg.Routes = append(cfg.Routes, route)
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	apply := func(cfg []byte, env []string) error {
		if err := state.WriteFile(cfgPath, cfg, 0o644); err != nil {
			return fmt.Errorf("egress-proxy config of %s: %w", id, err)
		}
		return e.ctr.SetProcessEnv(ctx, proxy, env)
	}
	if err := apply(append(data, '\n'), env); err != nil {
		_ = apply(old, spec.Process.Env)
		return err
	}
	c := &plan.Container{Name: proxy, Role: names.RoleEgressProxy, Ready: sidecarReadyFiles(e.opts.StateDir, id, names.RoleEgressProxy)}
	if err := e.restartChanged(ctx, m, c, func() error { return apply(old, spec.Process.Env) }); err != nil {
		return err
	}
	caps.Routes = append(caps.Routes, supervise.RouteInfo{Host: route.Host, Header: route.Header})
	caps.ApprovedRoutes = append(caps.ApprovedRoutes, *r)
	if caps.Filter == plan.FilterBuiltin {
		// A route's host is on the allowlist too, as the manifest's are (EffectiveAllowlist);
		// pipelock gets it at the next start, its config being rendered then.
		applyAllowlistChange(caps, &supervise.AllowlistChange{Add: []string{route.Host}}, time.Time{})
	}
	return nil
}

// envValue is the value of name in a process env list.
func envValue(env []string, name string) (string, bool) {
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == name {
			return v, true
		}
	}
	return "", false
}

// sidecarReadyFiles are where sidecar role of bottle id says it serves (plan's
// readyFiles, for a running bottle whose plan is not at hand).
func sidecarReadyFiles(stateDir string, id names.Identity, role string) *plan.Readiness {
	dir := filepath.Join(plan.StageDir(stateDir, id), plan.SidecarRunDir(role))
	return &plan.Readiness{File: filepath.Join(dir, names.SidecarReadyFile), ErrorFile: filepath.Join(dir, names.SidecarErrorFile)}
}

// refusePipelockFor is why a grant --for cannot be approved with the pipelock filter.
func refusePipelockFor(id names.Identity) error {
	return fmt.Errorf("bottle %s uses the pipelock filter, which reads its allowlist only when it starts: a grant --for would need bottle to restart it when the grant ends, and no bottle process runs then; approve it for good (and deny or remove it later), or use filter = \"builtin\"", id)
}

// applyPipelock renders pipelock's config from the allowlist in force and restarts the
// filter on the same address with it (pipelock has no reload). A stopped bottle only
// keeps the change: the start of its resume renders it (prepareSupervise).
func (e *Engine) applyPipelock(ctx context.Context, id names.Identity, caps *supervise.Capabilities, now time.Time) error {
	m, err := e.store.Load(id)
	if err != nil {
		return err
	}
	path := filepath.Join(plan.StageDir(e.opts.StateDir, id), pipelockStageFile)
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("pipelock config of %s: %w", id, err)
	}
	write := func(data []byte) error {
		if err := state.WriteFile(path, data, 0o644); err != nil {
			return fmt.Errorf("pipelock config of %s: %w", id, err)
		}
		return nil
	}
	if err := write([]byte(plan.PipelockConfig(caps.Effective(now), egress.DefaultInternal))); err != nil {
		return err
	}
	filter := id.Container(names.RoleFilter)
	var addr netip.Addr
	for _, a := range recorded(m, filter).Attachments {
		if a.Network == names.NetEgress {
			addr = a.Address
		}
	}
	if !addr.IsValid() {
		_ = write(old)
		return fmt.Errorf("bottle %s records no egress address of its filter", id)
	}
	c := &plan.Container{Name: filter, Role: names.RoleFilter, Ready: &plan.Readiness{URL: plan.PipelockHealthURL(addr)}}
	return e.restartChanged(ctx, m, c, func() error { return write(old) })
}

// restartChanged restarts sidecar c of bottle m so that it reads what changed (its
// config, its env): on the same addresses, as the watch of an attached start restarts
// a sidecar that exits. With such a watch running, ending the task is enough (the
// watch restarts it: each approval counts as one of its sidecarRestarts); else this
// restarts it. A bottle whose agent does not run is left alone (resume starts it all).
// When the restart fails, undo takes the change back and the sidecar is started again
// as it was.
func (e *Engine) restartChanged(ctx context.Context, m *state.Meta, c *plan.Container, undo func() error) error {
	agent, err := e.ctr.Info(ctx, m.Identity.Container(names.RoleAgent))
	if err != nil || agent.TaskStatus != ctr.TaskRunning {
		return nil
	}
	restart := func() error {
		before, err := e.ctr.Info(ctx, c.Name)
		if err != nil {
			return err
		}
		p := &plan.Plan{Identity: m.Identity}
		if m.Phase == state.PhaseRunning && !m.Detached && state.OwnerAlive(m) {
			if c.Ready.File != "" {
				_ = os.Remove(c.Ready.File) // the old one must not pass for the new task's
			}
			if err := e.ctr.Kill(ctx, c.Name, syscall.SIGTERM); err != nil {
				return err
			}
			deadline := time.Now().Add(stopTimeout + sidecarReadyTimeout)
			for {
				info, err := e.ctr.Info(ctx, c.Name)
				if err == nil && info.TaskStatus == ctr.TaskRunning && info.Pid != before.Pid {
					return e.waitReady(ctx, p, c)
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("%s sidecar %s was not restarted by the attached start (process %d); see its output", c.Role, c.Name, m.Pid)
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(100 * time.Millisecond):
				}
			}
		}
		if _, err := e.ctr.Stop(ctx, c.Name, stopTimeout); err != nil {
			return err
		}
		return e.restartSidecar(ctx, m, p, c)
	}
	err = restart()
	if err == nil {
		return nil
	}
	if uerr := undo(); uerr != nil {
		return fmt.Errorf("restarting %s with the change: %w; taking the change back failed too: %w", c.Name, err, uerr)
	}
	if rerr := restart(); rerr != nil {
		return fmt.Errorf("restarting %s with the change: %w; restarting it as it was failed too: %w", c.Name, err, rerr)
	}
	return fmt.Errorf("restarting %s with the change: %w (it runs as before)", c.Name, err)
}
