package runtime

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bottle-dev/bottle/internal/ctr"
	"github.com/bottle-dev/bottle/internal/hostenv"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/netns"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/state"
)

// sidecarReadyTimeout bounds how long start waits for a sidecar to serve.
const sidecarReadyTimeout = 20 * time.Second

// logSettleTimeout bounds the wait for an exited sidecar's last output to reach its log.
const logSettleTimeout = 2 * time.Second

// StartOptions describe one `bottle start`.
type StartOptions struct {
	Manifest     *manifest.Manifest
	ManifestPath string
	Agent        string
	// Workspace is the host directory for /workspace; CopyCwd gives the agent a copy.
	Workspace string
	CopyCwd   bool
	// Command replaces the agent's command when non-empty.
	Command []string
	Detach  bool
	// Remove deletes the bottle when the agent exits instead of keeping it for resume.
	Remove bool
	Stdio  Stdio
	// HostFiles are the host files the bottle names, read before the start
	// (plan.ReadHostFiles).
	HostFiles plan.HostFiles
	// identity is set on resume.
	identity string
	slot     int
}

// Start runs a new bottle. Attached, it returns the agent's exit status once the agent
// ends (the bottle is then stopped, ready for resume); detached, it returns 0 once the
// agent runs. Any failure before that removes everything the start created.
func (e *Engine) Start(ctx context.Context, so StartOptions) (int, error) {
	agent := so.Manifest.Agents[so.Agent]
	if agent == nil {
		return 0, fmt.Errorf("unknown agent %q in %s", so.Agent, so.ManifestPath)
	}
	if so.identity == "" {
		id, err := e.newIdentity(ctx, so.Agent)
		if err != nil {
			return 0, err
		}
		so.identity = id
	}
	return e.run(ctx, so, nil)
}

// newIdentity draws identities until one is unused (a collision of 24 random bits is rare,
// but a leftover of an old bottle with the same name must not be adopted).
func (e *Engine) newIdentity(ctx context.Context, agent string) (string, error) {
	for range 5 {
		suffix, err := hostenv.NewSuffix()
		if err != nil {
			return "", err
		}
		id := agent + "-" + suffix
		if _, err := e.store.Load(id); err == nil {
			continue
		}
		if exists, err := e.ctr.Exists(ctx, plan.ContainerName(id, plan.RoleAgent)); err != nil {
			return "", err
		} else if exists {
			continue
		}
		return id, nil
	}
	return "", errors.New("could not draw an unused bottle identity; run `bottle cleanup`")
}

// run is the transaction shared by start and resume; prev is the recorded metadata on
// resume (its containers are replaced, the agent's snapshot kept).
func (e *Engine) run(ctx context.Context, so StartOptions, prev *state.Meta) (exit int, err error) {
	// Ctrl-C or SIGTERM during setup cancels it, and the undo stack takes back every step.
	setupCtx, stopSignals := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stopSignals()
	undo := &undoStack{}
	committed := false
	defer func() {
		if !committed {
			if setupCtx.Err() != nil && ctx.Err() == nil {
				err = errors.New("start interrupted; everything it had created is removed again")
			}
			if uerr := undo.run(ctx, e.log); uerr != nil {
				err = errors.Join(err, fmt.Errorf("could not take back everything; run `bottle cleanup`: %w", uerr))
			}
		}
	}()

	t0 := time.Now()
	step := func(name string) {
		e.log.Debug("start step done", "step", name, "elapsed", time.Since(t0).Round(time.Millisecond))
	}
	agent := so.Manifest.Agents[so.Agent]
	bottle := so.Manifest.Bottles[agent.Bottle]
	if bottle.Supervise {
		return 0, fmt.Errorf("bottle %q enables supervise, but this version of bottle has no supervise sidecar yet; set supervise = false to start", agent.Bottle)
	}
	rt, err := ctr.DetectRuntime(cmp.Or(e.opts.RuntimeOverride, bottle.Runtime, "auto"), e.opts.RunscPath, e.opts.AllowUnsafeRunc)
	if err != nil {
		return 0, err
	}
	if ok, err := e.ctr.ImageExists(setupCtx, agent.Image); err != nil {
		return 0, err
	} else if !ok {
		return 0, fmt.Errorf("agent image %s is not in containerd (namespace %s); import an OCI archive of it with `bottle image import FILE` (the Claude Code image: `sudo scripts/build-agent-image.sh`)", agent.Image, e.opts.Namespace)
	}
	pipelockImage := plan.PipelockImageFor(bottle, e.opts.PipelockImage)
	pipelockPresent := false
	if cmp.Or(e.opts.FilterOverride, bottle.Filter) != plan.FilterBuiltin {
		if pipelockPresent, err = e.ctr.ImageExists(setupCtx, pipelockImage); err != nil {
			return 0, err
		}
	}
	e.log.Info("preparing bottle", "identity", so.identity, "runtime", rt.String())
	// The sidecar image is checked while the address slot and the firewall rules are made.
	type imageResult struct {
		ref string
		err error
	}
	sidecarImageC := make(chan imageResult, 1)
	go func() {
		ref, err := e.ctr.EnsureSidecarImage(setupCtx, e.opts.Version, filepath.Join(e.opts.StateDir, "sidecar-image.hash"))
		sidecarImageC <- imageResult{ref, err}
	}()
	waitImage := sync.OnceValue(func() imageResult { return <-sidecarImageC })
	defer waitImage() // never leave it running past the undo

	slot := so.slot
	if prev == nil {
		if slot, err = e.net.ReserveSlot(so.identity, e.opts.Pool); err != nil {
			return 0, err
		}
		undo.push("release slot", func(context.Context) error { return e.net.ReleaseSlot(so.identity) })
	}
	meta := &state.Meta{
		Identity: so.identity, Agent: so.Agent, ManifestPath: so.ManifestPath, Workspace: so.Workspace,
		CopyCwd: so.CopyCwd, Command: so.Command, Slot: slot, Pool: e.opts.Pool.String(),
		Runtime: rt.String(), Phase: state.PhaseStarting, Detached: so.Detach,
		Pid: os.Getpid(), CreatedAt: time.Now().UTC(), StartedAt: time.Now().UTC(),
	}
	if prev != nil {
		meta.CreatedAt, meta.Pool = prev.CreatedAt, prev.Pool
	}
	meta.PidStart, _ = state.ProcessStart(meta.Pid)
	internal, egress, err := e.networks(meta)
	if err != nil {
		return 0, err
	}
	// The rules match the bridges by name; they are in force before any task starts (the
	// netns and bridges may come first: nothing can send before a sandbox runs).
	undo.push("remove firewall", func(ctx context.Context) error {
		return errors.Join(e.net.RemoveFirewall(ctx, so.identity), e.net.RemoveNetworks(ctx, so.identity, []netns.Network{internal, egress}))
	})
	firewallC := make(chan error, 1)
	go func() { firewallC <- e.net.InstallFirewall(setupCtx, so.identity, internal) }()
	waitFirewall := sync.OnceValue(func() error { return <-firewallC })
	defer waitFirewall()

	img := waitImage()
	if img.err != nil {
		return 0, img.err
	}
	sidecarImage := img.ref
	step("images")

	outside, err := e.sidecarSettings(prev)
	if err != nil {
		return 0, err
	}
	meta.Sidecars = outside
	hosts := make([]plan.HostEntry, 0, len(outside.Hosts))
	for _, h := range outside.Hosts {
		addr, err := netip.ParseAddr(h.Addr)
		if err != nil {
			return 0, fmt.Errorf("sidecar hosts entry %s: %w", h.Name, err)
		}
		hosts = append(hosts, plan.HostEntry{Name: h.Name, Addr: addr})
	}
	p, err := plan.Build(plan.Input{
		Manifest: so.Manifest, ManifestPath: so.ManifestPath, AgentName: so.Agent,
		LookupEnv: e.lookupEnv, Identity: so.identity, WorkspaceOwner: hostenv.Owner(so.Workspace),
		Workspace: so.Workspace, CopyWorkspace: so.CopyCwd, Command: so.Command,
		StateDir: e.opts.StateDir, Internal: internal.Subnet, Egress: egress.Subnet,
		SidecarImage: sidecarImage, PipelockImage: pipelockImage, PipelockPresent: pipelockPresent,
		SidecarHosts: hosts, ExtraCA: outside.ExtraCA,
		RuntimeOverride: rt.String(), FilterOverride: e.opts.FilterOverride,
		SidecarResolvConf: outside.ResolvConf, ReadFile: so.HostFiles.Read, Strict: true,
	})
	if err != nil {
		return 0, err
	}
	if p.Filter == plan.FilterPipelock && !pipelockPresent {
		return 0, fmt.Errorf("filter pipelock: image %s is not in containerd; import it with `bottle image import FILE`, or use filter = \"builtin\"", pipelockImage)
	}
	meta.Filter = p.Filter
	for _, c := range p.Containers {
		rc := state.Container{Name: c.Name, Role: c.Role}
		for _, a := range c.Attachments {
			rc.Attachments = append(rc.Attachments, state.Attachment{Network: a.Network, IfName: a.IfName, Address: a.Address.String()})
		}
		meta.Containers = append(meta.Containers, rc)
	}
	if prev == nil {
		// Create leaves nothing when it fails; from here on the dir is ours to remove.
		if err := e.store.Create(meta); err != nil {
			return 0, err
		}
		undo.push("remove bottle dir", func(context.Context) error { return e.store.Remove(so.identity) })
	} else {
		if err := e.store.Save(meta); err != nil {
			return 0, err
		}
		undo.push("mark stopped", func(context.Context) error {
			meta.Phase, meta.Pid, meta.PidStart = state.PhaseStopped, 0, 0
			return e.store.Save(meta)
		})
	}
	e.killPoint(setupCtx, "meta")
	step("meta")

	if err := e.writeStage(p); err != nil {
		return 0, err
	}

	// Every part is prepared at once: each sidecar gets its netns and container and starts
	// as soon as it can, while the agent's netns and container are made.
	sidecars := slices.DeleteFunc(slices.Clone(p.Containers), func(c *plan.Container) bool { return c.Role == plan.RoleAgent })
	sidecarsDone := make(chan error, 1)
	// The sidecars' sandboxes take longest to boot: their networks come first (CNI calls
	// are serialized), then the agent's.
	var sidecarsPrepared sync.WaitGroup
	sidecarsPrepared.Add(len(sidecars))
	go func() {
		err := parallel(sidecars, func(c *plan.Container) error {
			err := e.prepareContainer(setupCtx, undo, meta, p, c, rt, so, prev != nil)
			sidecarsPrepared.Done()
			if err != nil {
				return err
			}
			if err := waitFirewall(); err != nil {
				return err
			}
			return e.startSidecar(setupCtx, p, c)
		})
		if err == nil {
			e.killPoint(setupCtx, "sidecars")
			step("sidecars ready")
		}
		sidecarsDone <- err
	}()
	// Whatever happens, the sidecars' goroutine has finished before undo runs.
	waitSidecars := sync.OnceValue(func() error { return <-sidecarsDone })
	sidecarsPrepared.Wait()
	if err := e.prepareContainer(setupCtx, undo, meta, p, p.Container(plan.RoleAgent), rt, so, prev != nil); err != nil {
		return 0, errors.Join(err, waitSidecars())
	}
	if err := waitFirewall(); err != nil {
		return 0, errors.Join(err, waitSidecars())
	}
	e.killPoint(setupCtx, "firewall")
	e.killPoint(setupCtx, "containers")
	step("agent container")

	agentName := plan.ContainerName(so.identity, plan.RoleAgent)
	banner := fmt.Sprintf("bottle %s: filter %s; %s", so.identity, p.Filter, p.AllowlistSummary)
	if so.Detach {
		if err := errors.Join(waitSidecars(), setupCtx.Err()); err != nil {
			return 0, err
		}
		e.log.Info(banner)
		if _, err := e.ctr.Start(setupCtx, agentName, e.logPath(so.identity, plan.RoleAgent)); err != nil {
			return 0, err
		}
		meta.Phase, meta.Pid, meta.PidStart = state.PhaseRunning, 0, 0
		if err := e.store.Save(meta); err != nil {
			return 0, err
		}
		committed = true
		return 0, nil
	}
	// The agent's sandbox boots while the sidecars start; its process starts only once
	// they serve. Until then a failure still takes everything back. From then on the
	// sidecars are watched (restarted if they exit).
	var watch *sidecarWatch
	commit := func() error {
		if err := waitSidecars(); err != nil {
			return err
		}
		if err := setupCtx.Err(); err != nil { // interrupted at the last moment
			return err
		}
		e.log.Info(banner)
		meta.Phase = state.PhaseRunning
		if err := e.store.Save(meta); err != nil {
			return err
		}
		committed = true
		// From here on signals go to the agent (ctr.Run forwards them), not to our setup.
		stopSignals()
		watch = e.watchSidecars(ctx, meta, p)
		return nil
	}
	// Once the agent has exited, the rest of the bottle is taken down while its task is
	// deleted.
	stopCtx, cancelStop := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
	defer cancelStop()
	restDone := make(chan error, 1)
	restStarted := false // Exited runs on this goroutine, inside Run
	exited := func(int) {
		step("agent exited")
		restStarted = true
		go func() {
			watch.stop()
			restDone <- e.stopParts(stopCtx, meta, false)
		}()
	}
	exit, runErr := e.ctr.Run(ctx, agentName, ctr.IO{Stdin: so.Stdio.In, Stdout: so.Stdio.Out, Stderr: so.Stdio.Err, TTY: so.Stdio.TTY, BeforeStart: commit, Exited: exited})
	if !committed {
		return 0, errors.Join(runErr, waitSidecars())
	}
	step("agent ran")
	watch.stop() // (already stopped if the agent exited)
	if !restStarted && ctr.Unreachable(runErr) {
		// Run rode out a containerd restart for ReconnectTimeout; now containerd is gone
		// for good. The tasks run on under their shims, on their netns: nothing is
		// taken down, and the record says running (ps tells the truth once it is back).
		return exit, fmt.Errorf("lost containerd, so bottle %s is left as it is (its tasks may still run); once containerd is back, `bottle resume %s` continues it or `bottle stop %s` stops it: %w", so.identity, so.identity, so.identity, runErr)
	}
	var stopErr error
	if restStarted {
		stopErr = <-restDone
	} else { // the agent did not exit normally (Run failed): stop everything
		stopErr = e.stopMeta(stopCtx, meta)
	}
	reason := watch.reason()
	if stopErr == nil {
		meta.Phase, meta.Pid, meta.PidStart, meta.Reason = state.PhaseStopped, 0, 0, reason
		if err := e.store.Save(meta); err != nil {
			// The bottle is down all the same, and `bottle ps` tells that from its tasks.
			e.log.Warn("bottle stopped, but recording that failed", "identity", so.identity, "error", err)
		}
		if so.Remove {
			stopErr = e.removeMeta(ctx, meta)
		}
	}
	step("stopped")
	if reason != "" {
		stopErr = errors.Join(fmt.Errorf("bottle %s stopped: %s; `bottle resume %s` starts it again", so.identity, reason, so.identity), stopErr)
	}
	if runErr != nil {
		return exit, errors.Join(runErr, stopErr)
	}
	return exit, stopErr
}

// prepareContainer wires one container's netns and creates the container (on resume it
// replaces the recorded container; the agent keeps its writable snapshot).
func (e *Engine) prepareContainer(ctx context.Context, undo *undoStack, meta *state.Meta, p *plan.Plan, c *plan.Container, rt ctr.Runtime, so StartOptions, resume bool) error {
	nsPath, release, err := e.setupNetns(ctx, meta, c.Name)
	if err != nil {
		return err
	}
	undo.push("teardown netns "+c.Name, release)
	cfg, err := e.ctr.ImageConfig(ctx, c.Image)
	if err != nil {
		return err
	}
	spec, err := finalizeSpec(c, cfg.Env, append(slices.Clone(cfg.Entrypoint), cfg.Cmd...), nsPath, c.Role == plan.RoleAgent && so.Stdio.TTY && !so.Detach)
	if err != nil {
		return err
	}
	cs := ctr.ContainerSpec{Name: c.Name, Image: c.Image, Labels: c.Labels, Spec: spec, Runtime: rt}
	if resume {
		exists, err := e.ctr.Exists(ctx, c.Name)
		if err != nil {
			return err
		}
		if exists && c.Role == plan.RoleAgent {
			return e.ctr.Update(ctx, cs)
		}
		if exists {
			if err := e.ctr.Delete(ctx, c.Name); err != nil {
				return err
			}
		}
	}
	if err := e.ctr.Create(ctx, cs); err != nil {
		return err
	}
	if !resume {
		undo.push("delete container "+c.Name, func(ctx context.Context) error { return e.ctr.Delete(ctx, c.Name) })
	}
	return nil
}

// setupNetns gives container name a fresh netns with its recorded attachments.
func (e *Engine) setupNetns(ctx context.Context, meta *state.Meta, name string) (nsPath string, release func(context.Context) error, err error) {
	atts, err := e.attachments(meta, recorded(meta, name))
	if err != nil {
		return "", nil, err
	}
	return e.net.Setup(ctx, name, atts)
}

// writeStage writes the plan's stage files, the sidecars' writable run dirs and, with
// --cwd, the copy of the workspace.
func (e *Engine) writeStage(p *plan.Plan) error {
	for _, f := range p.StageFiles {
		path := filepath.Join(p.StageDir, f.Name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return fmt.Errorf("stage dir of %s: %w", p.Identity, err)
		}
		// Atomic: a failed write leaves the old file (resume) or none.
		if err := state.WriteFile(path, []byte(f.Content), os.FileMode(f.Mode)); err != nil {
			return fmt.Errorf("write stage file %s: %w", path, err)
		}
	}
	for _, c := range p.Containers {
		if c.Role == plan.RoleAgent {
			continue
		}
		dir := filepath.Join(p.StageDir, plan.SidecarRunDir(c.Role))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("sidecar run dir %s: %w", dir, err)
		}
		if err := os.Chown(dir, plan.SidecarUID, plan.SidecarUID); err != nil {
			return fmt.Errorf("sidecar run dir %s: %w", dir, err)
		}
	}
	// The bottle dir is private, but the agent (non-root) must traverse to its mounts.
	for _, d := range []string{filepath.Dir(p.StageDir), p.StageDir} {
		if err := os.Chmod(d, 0o711); err != nil {
			return err
		}
	}
	if p.Workspace.Copy {
		if _, err := os.Stat(p.Workspace.Source); err == nil {
			return nil // resume keeps the agent's copy
		}
		if err := os.MkdirAll(p.Workspace.Source, 0o755); err != nil {
			return fmt.Errorf("workspace copy of %s: %w", p.Identity, err)
		}
		if out, err := exec.Command("cp", "-a", "--", p.Workspace.Host+"/.", p.Workspace.Source).CombinedOutput(); err != nil {
			return fmt.Errorf("copy workspace %s: %v: %s", p.Workspace.Host, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// sidecarSettings are the options given now, else (on resume) the recorded ones, else
// for the resolver the host's own.
func (e *Engine) sidecarSettings(prev *state.Meta) (state.SidecarSettings, error) {
	var rec state.SidecarSettings
	if prev != nil {
		rec = prev.Sidecars
	}
	out := state.SidecarSettings{ResolvConf: e.opts.SidecarResolvConf, ExtraCA: e.opts.ExtraCA}
	for _, h := range e.opts.SidecarHosts {
		out.Hosts = append(out.Hosts, state.HostEntry{Name: h.Name, Addr: h.Addr.String()})
	}
	if out.ResolvConf == "" {
		out.ResolvConf = rec.ResolvConf
	}
	if len(out.Hosts) == 0 {
		out.Hosts = rec.Hosts
	}
	if out.ExtraCA == "" {
		out.ExtraCA = rec.ExtraCA
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
