package runtime

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/bottle-dev/bottle/internal/ctr"
	"github.com/bottle-dev/bottle/internal/hostenv"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/netns"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/state"
)

// sidecarReadyTimeout bounds how long start waits for a sidecar to serve.
const sidecarReadyTimeout = 20 * time.Second

// logSettleTimeout bounds the wait for an exited sidecar's last output to reach its log.
const logSettleTimeout = 2 * time.Second

// StartOptions describe one `bottle start`: what it runs, and how.
type StartOptions struct {
	PlanOptions
	Detach bool
	// Remove deletes the bottle when the agent exits instead of keeping it for resume.
	Remove bool
	Stdio  Stdio
}

// Start runs a new bottle. Attached, it returns the agent's exit status once the agent
// ends (the bottle is then stopped, ready for resume); detached, it returns 0 once the
// agent runs. Any failure before that removes everything the start created.
func (e *Engine) Start(ctx context.Context, so StartOptions) (int, error) {
	if _, _, err := so.bottle(); err != nil {
		return 0, err
	}
	id, err := e.newIdentity(ctx, so.Agent)
	if err != nil {
		return 0, err
	}
	return e.run(ctx, id, so, nil)
}

// newIdentity draws identities until one is unused (a collision of 24 random bits is rare,
// but a leftover of an old bottle with the same name must not be adopted).
func (e *Engine) newIdentity(ctx context.Context, agent string) (names.Identity, error) {
	for range 5 {
		suffix, err := hostenv.NewSuffix()
		if err != nil {
			return "", err
		}
		id, err := names.NewIdentity(agent, suffix)
		if err != nil {
			return "", err
		}
		if _, err := e.store.Load(id); err == nil {
			continue
		}
		if exists, err := e.ctr.Exists(ctx, id.Container(names.RoleAgent)); err != nil {
			return "", err
		} else if exists {
			continue
		}
		return id, nil
	}
	return "", errors.New("could not draw an unused bottle identity; run `bottle cleanup`")
}

// starter is one start or resume in progress. Its steps run in the order of run; each
// pushes onto undo how to take back what it made, so a failure or an interrupt at any
// point takes back exactly what exists, in reverse order.
type starter struct {
	e    *Engine
	ctx  context.Context // cancelled by Ctrl-C, SIGTERM or SIGHUP during setup
	id   names.Identity
	so   StartOptions
	prev *state.Meta // the recorded bottle on resume: its containers are replaced, the agent's snapshot kept
	undo undoStack
	t0   time.Time

	rt               ctr.Runtime
	pipelockPresent  bool
	meta             *state.Meta
	internal, egress netns.Network
	p                *plan.Plan
	st               *selfTest    // nil: --no-self-test
	protectScan      func() error // the workspace's scan before the agent runs (prepareProtect)
	pins             []*os.File   // the protected paths the agent's mounts use (pinProtect)
	pinPoints        []string     // their mounts in bottle's state dir (pinProtect)
	committed        bool
}

// run is the transaction shared by start and resume; prev is the recorded metadata on
// resume.
func (e *Engine) run(ctx context.Context, id names.Identity, so StartOptions, prev *state.Meta) (exit int, err error) {
	// Ctrl-C or SIGTERM during setup cancels it, and the undo stack takes back every step.
	setupCtx, stopSignals := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stopSignals()
	s := &starter{e: e, ctx: setupCtx, id: id, so: so, prev: prev, t0: time.Now()}
	defer func() {
		if !s.committed {
			if setupCtx.Err() != nil && ctx.Err() == nil {
				err = errors.New("start interrupted; everything it had created is removed again")
			}
			if uerr := s.undo.run(ctx, e.log); uerr != nil {
				err = errors.Join(err, fmt.Errorf("could not take back everything; run `bottle cleanup`: %w", uerr))
			}
		}
	}()
	// Every wait below is also deferred (after the undo's defer, so it runs first): no
	// background step runs on while its work is taken back.
	if err := s.check(); err != nil {
		return 0, err
	}
	e.log.Debug("setting up", "identity", id, "runtime", s.rt.String())
	// The sidecar image is checked while the address slot and the firewall are made.
	var sidecarImage string
	waitImage := async(func() (err error) {
		sidecarImage, err = e.ctr.EnsureSidecarImage(setupCtx, e.opts.Version, filepath.Join(e.opts.StateDir, "sidecar-image.hash"))
		return err
	})
	defer waitImage()
	if err := s.reserveSlot(); err != nil {
		return 0, err
	}
	waitFirewall := s.installFirewall()
	defer waitFirewall()
	if err := waitImage(); err != nil {
		return 0, err
	}
	s.step("images")
	if err := s.plan(sidecarImage); err != nil {
		return 0, err
	}
	if err := s.record(); err != nil {
		return 0, err
	}
	// Only now: a start refused before this point leaves no bottle to name.
	e.log.Info("preparing bottle", "identity", id, "runtime", s.rt.String())
	e.killPoint(setupCtx, "meta")
	s.step("meta")
	if err := e.writeStage(s.p); err != nil {
		return 0, err
	}
	if s.protectScan, err = s.prepareProtect(); err != nil {
		return 0, err
	}
	defer s.protectScan()
	defer s.unpin()
	if s.st, err = s.prepareSelfTest(); err != nil {
		return 0, err
	}
	defer s.st.close()
	// The self-test's canary binds the egress gateway's address before the sidecars'
	// CNI setups put it on the bridge (IP_FREEBIND), so nothing waits for them.
	if err := s.st.listen(s); err != nil {
		return 0, err
	}
	waitSidecars := s.bootSidecars(waitFirewall)
	defer waitSidecars()
	// The agent's netns and container are made while the sidecars' are (CNI setups run
	// at once) and while they boot.
	if err := s.prepare(s.p.Container(names.RoleAgent)); err != nil {
		return 0, errors.Join(err, waitSidecars())
	}
	if err := waitFirewall(); err != nil {
		return 0, errors.Join(err, waitSidecars())
	}
	e.killPoint(setupCtx, "firewall")
	if e.opts.Fault == FaultRemoveFirewall {
		if err := e.net.RemoveFirewall(setupCtx, id.String()); err != nil {
			return 0, errors.Join(err, waitSidecars())
		}
	}
	if s.st != nil {
		// Checked while the sidecars boot; awaited right before the agent's task starts.
		s.st.firewall = async(func() error { return e.net.CheckFirewall(setupCtx, id.String(), s.internal) })
		defer s.st.firewall()
	}
	e.killPoint(setupCtx, "containers")
	s.step("agent container")
	if so.Detach {
		return 0, s.runDetached(waitSidecars)
	}
	return s.runAttached(ctx, stopSignals, waitSidecars)
}

// step logs a finished step with the time since the start began.
func (s *starter) step(name string) {
	s.e.log.Debug("start step done", "step", name, "elapsed", time.Since(s.t0).Round(time.Millisecond))
}

// async runs fn in the background; the returned wait blocks until fn has returned and
// gives its error, as often as it is called.
func async(fn func() error) (wait func() error) {
	done := make(chan struct{})
	var err error
	go func() {
		defer close(done)
		err = fn()
	}()
	return func() error {
		<-done
		return err
	}
}

// check refuses a start that cannot work before anything is made: the runtime, the
// agent image. It notes whether the pipelock image is present.
func (s *starter) check() error {
	agent, bottle, err := s.so.bottle()
	if err != nil {
		return err
	}
	if s.rt, err = ctr.DetectRuntime(cmp.Or(s.e.opts.RuntimeOverride, bottle.Runtime, "auto"), s.e.opts.RunscPath, s.e.opts.AllowUnsafeRunc); err != nil {
		return err
	}
	if s.prev != nil && s.prev.AgentImage != "" {
		if ok, err := s.e.ctr.ImageExists(s.ctx, s.prev.AgentImage); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("bottle %s: its own agent image %s is gone from containerd (namespace %s)", s.id, s.prev.AgentImage, s.e.opts.Namespace)
		}
	} else if ok, err := s.e.ctr.ImageExists(s.ctx, agent.Image); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("agent image %s is not in containerd (namespace %s); import an OCI archive of it with `bottle image import FILE` (the Claude Code image: `sudo scripts/build-agent-image.sh`)", agent.Image, s.e.opts.Namespace)
	}
	s.pipelockPresent, err = s.e.pipelockPresent(s.ctx, bottle)
	return err
}

// reserveSlot reserves the bottle's address slot (a resumed bottle keeps its own) and
// works out its networks. Undo: release the slot.
func (s *starter) reserveSlot() error {
	e := s.e
	slot := 0
	if s.prev == nil {
		var err error
		if slot, err = e.net.ReserveSlot(s.id.String(), e.opts.Pool); err != nil {
			return err
		}
		s.undo.push("release slot", func(context.Context) error { return e.net.ReleaseSlot(s.id.String()) })
	} else {
		slot = s.prev.Slot
	}
	now := time.Now().UTC()
	s.meta = &state.Meta{
		Identity: s.id, Agent: s.so.Agent, ManifestPath: s.so.ManifestPath, Workspace: s.so.Workspace,
		CopyCwd: s.so.CopyCwd, Command: s.so.Command, Slot: slot, Pool: e.opts.Pool.String(),
		Runtime: s.rt.String(), Phase: state.PhaseStarting, Detached: s.so.Detach,
		Pid: os.Getpid(), CreatedAt: now, StartedAt: now,
	}
	if s.prev != nil {
		s.meta.CreatedAt, s.meta.Pool = s.prev.CreatedAt, s.prev.Pool
		s.meta.AgentImage, s.meta.AgentImageSeq = s.prev.AgentImage, s.prev.AgentImageSeq
	}
	s.meta.PidStart, _ = state.ProcessStart(s.meta.Pid)
	var err error
	s.internal, s.egress, err = e.networks(s.meta)
	return err
}

// installFirewall puts the bottle's firewall rules in force in the background; wait
// returns once they are. The rules match the bridges by name, so the netns and bridges
// may come first: nothing can send before a sandbox runs, and no task starts before
// wait. Undo: remove the rules and the bridges.
func (s *starter) installFirewall() (wait func() error) {
	e, id := s.e, s.id.String()
	nets := []netns.Network{s.internal, s.egress}
	s.undo.push("remove firewall", func(ctx context.Context) error {
		return errors.Join(e.net.RemoveFirewall(ctx, id), e.net.RemoveNetworks(ctx, id, nets))
	})
	return async(func() error { return e.net.InstallFirewall(s.ctx, id, s.internal, s.egress) })
}

// plan builds the bottle's plan and fills the record with its containers.
func (s *starter) plan(sidecarImage string) error {
	_, bottle, err := s.so.bottle()
	if err != nil {
		return err
	}
	outside, err := s.e.sidecarSettings(s.prev)
	if err != nil {
		return err
	}
	s.meta.Sidecars = outside
	p, err := s.e.buildPlan(s.so.PlanOptions, planFacts{
		identity: s.id, internal: s.internal.Subnet, egress: s.egress.Subnet, runtime: s.rt.String(),
		sidecarImage: sidecarImage, pipelockPresent: s.pipelockPresent, outside: outside, strict: true,
	})
	if err != nil {
		return err
	}
	if p.Filter == plan.FilterPipelock && !s.pipelockPresent {
		return fmt.Errorf("filter pipelock: image %s is not in containerd; import it with `bottle image import FILE`, or use filter = \"builtin\"", s.e.pipelockImage(bottle))
	}
	if s.meta.AgentImage != "" { // the bottle's own image wins over the manifest's
		p.Container(names.RoleAgent).Image = s.meta.AgentImage
	}
	s.p = p
	for _, w := range p.Warnings {
		s.e.log.Warn(w)
	}
	s.meta.Filter = p.Filter
	for _, c := range p.Containers {
		s.meta.Containers = append(s.meta.Containers, state.Container{Name: c.Name, Role: c.Role, Attachments: c.Attachments})
	}
	return nil
}

// record writes the bottle's metadata (phase starting) before any container exists, so
// `bottle cleanup` finds whatever a killed start leaves. Undo: remove the bottle's dir
// (a start), or record the bottle stopped (a resume).
func (s *starter) record() error {
	e, meta := s.e, s.meta
	if s.prev != nil {
		if err := e.store.Save(meta); err != nil {
			return err
		}
		s.undo.push("mark stopped", func(context.Context) error {
			meta.Phase, meta.Pid, meta.PidStart = state.PhaseStopped, 0, 0
			return e.store.Save(meta)
		})
		return nil
	}
	// Create leaves nothing when it fails; from here on the dir is ours to remove.
	if err := e.store.Create(meta); err != nil {
		return err
	}
	// A start that never ran its agent leaves no trail either, unless its self-test said
	// why: that record stays for `bottle audit` (and `bottle audit prune`).
	s.undo.push("remove bottle dir", func(context.Context) error {
		if s.st != nil && s.st.keepTrail {
			e.log.Warn("the audit trail of the failed start is kept: `bottle audit "+s.id.String()+"` shows its self-test; `bottle audit prune "+s.id.String()+"` removes it", "identity", s.id)
			return e.store.Remove(s.id)
		}
		return errors.Join(e.store.Remove(s.id), e.removeTrail(s.id))
	})
	return nil
}

// bootSidecars prepares every sidecar at once in the background and starts each as soon
// as it is prepared and the firewall is in force; wait returns once all serve (or one
// failed).
func (s *starter) bootSidecars(waitFirewall func() error) (wait func() error) {
	sidecars := slices.DeleteFunc(slices.Clone(s.p.Containers), func(c *plan.Container) bool { return c.Role == names.RoleAgent })
	return async(func() error {
		err := parallel(sidecars, func(c *plan.Container) error {
			if err := s.prepare(c); err != nil {
				return err
			}
			if err := waitFirewall(); err != nil {
				return err
			}
			return s.e.startSidecar(s.ctx, s.p, c)
		})
		if err == nil {
			s.e.killPoint(s.ctx, "sidecars")
			s.step("sidecars ready")
		}
		return err
	})
}

// prepare gives one container a fresh netns and creates it (on resume it replaces the
// recorded container; the agent keeps its writable snapshot). Undo: tear the netns
// down; delete the container (a start).
func (s *starter) prepare(c *plan.Container) error {
	e, ctx := s.e, s.ctx
	nsPath, release, err := e.setupNetns(ctx, s.meta, c.Name)
	if err != nil {
		return err
	}
	s.undo.push("teardown netns "+c.Name, release)
	if c.Role == names.RoleAgent && e.opts.Fault == FaultDefaultRoute {
		if err := injectDefaultRoute(ctx, nsPath, s.egress.Gateway()); err != nil {
			return err
		}
	}
	cfg, err := e.ctr.ImageConfig(ctx, c.Image)
	if err != nil {
		return err
	}
	tty := c.Role == names.RoleAgent && s.so.Stdio.TTY && !s.so.Detach
	spec, err := finalizeSpec(c, cfg.Env, append(slices.Clone(cfg.Entrypoint), cfg.Cmd...), nsPath, tty)
	if err != nil {
		return err
	}
	if c.Role == names.RoleAgent && s.st != nil {
		if err := s.st.wrap(spec); err != nil {
			return err
		}
	}
	if c.Role == names.RoleAgent {
		if err := s.pinProtect(spec); err != nil {
			return err
		}
	}
	cs := ctr.ContainerSpec{Name: c.Name, Image: c.Image, Labels: c.Labels, Spec: spec, Runtime: s.rt}
	if s.prev != nil {
		exists, err := e.ctr.Exists(ctx, c.Name)
		if err != nil {
			return err
		}
		if exists && c.Role == names.RoleAgent {
			// Update refuses another image or runtime type (the bottle's own image was
			// built meanwhile): then the agent gets a new container; its workspace is a
			// mount and stays.
			if err := e.ctr.Update(ctx, cs); !errors.Is(err, errdefs.ErrFailedPrecondition) {
				return err
			}
			e.log.Info("the agent's image changed: new agent container", "image", c.Image)
		}
		if exists {
			if err := e.ctr.Delete(ctx, c.Name); err != nil {
				return err
			}
		}
	}
	if s.prev == nil {
		// Pushed before Create: an interrupt can cancel the call after containerd made
		// the container, and Delete tolerates one that is not there.
		s.undo.push("delete container "+c.Name, func(ctx context.Context) error { return e.ctr.Delete(ctx, c.Name) })
	}
	return e.ctr.Create(ctx, cs)
}

// banner is the line that tells the user the bottle runs, and how it filters.
func (s *starter) banner() string {
	return fmt.Sprintf("bottle %s: filter %s; %s", s.id, s.p.Filter, s.p.AllowlistSummary)
}

// runDetached starts the agent once the sidecars serve and records the bottle running;
// the start is then committed. (A failure before that deletes the agent's container,
// and its task with it.)
func (s *starter) runDetached(waitSidecars func() error) error {
	e := s.e
	if err := errors.Join(waitSidecars(), s.ctx.Err()); err != nil {
		return err
	}
	if err := errors.Join(s.protectScan(), s.st.beforeStart(e, s.id)); err != nil {
		return err
	}
	e.log.Info(s.banner())
	if _, err := e.ctr.Start(s.ctx, s.id.Container(names.RoleAgent), e.logPath(s.id, names.RoleAgent)); err != nil {
		return err
	}
	s.unpin() // the task has its mounts
	// Committed only once the self-test passed: a failure takes the bottle back.
	if s.st != nil {
		if err := s.st.await(s.ctx, e, s.id); err != nil {
			return err
		}
	}
	s.meta.Phase, s.meta.Pid, s.meta.PidStart = state.PhaseRunning, 0, 0
	if err := e.store.Save(s.meta); err != nil {
		return err
	}
	s.committed = true
	e.recordLifecycle(s.id, s.startEvent())
	return nil
}

// runAttached runs the agent on the terminal. Its sandbox boots while the sidecars
// start; its process starts only once they serve, and the start commits then (until then
// a failure still takes everything back). From then on the sidecars are watched
// (restarted if they exit), and once the agent exits the bottle is stopped (or removed).
func (s *starter) runAttached(ctx context.Context, stopSignals func(), waitSidecars func() error) (int, error) {
	e, meta := s.e, s.meta
	var watch *sidecarWatch
	// The self-test's report is awaited while the agent runs: a failed test exits before
	// the agent's command runs, and a new bottle is then removed as a failed start would be.
	awaitCtx, cancelAwait := context.WithCancel(ctx)
	defer cancelAwait()
	waitSelfTest := func() error { return nil }
	commit := func() error {
		if err := waitSidecars(); err != nil {
			return err
		}
		if err := s.ctx.Err(); err != nil { // interrupted at the last moment
			return err
		}
		if err := errors.Join(s.protectScan(), s.st.beforeStart(e, s.id)); err != nil {
			return err
		}
		s.unpin() // the task exists, with its mounts
		if s.st != nil {
			waitSelfTest = async(func() error {
				err := s.st.await(awaitCtx, e, s.id)
				if err != nil && awaitCtx.Err() == nil {
					// Only the canary fails after the command started: end it.
					_ = e.ctr.Kill(awaitCtx, s.id.Container(names.RoleAgent), syscall.SIGKILL)
				}
				return err
			})
		}
		e.log.Info(s.banner())
		meta.Phase = state.PhaseRunning
		if err := e.store.Save(meta); err != nil {
			return err
		}
		s.committed = true
		e.recordLifecycle(s.id, s.startEvent())
		// From here on signals go to the agent (ctr.Run forwards them), not to our setup.
		stopSignals()
		watch = e.watchSidecars(ctx, meta, s.p)
		return nil
	}
	// Once the agent has exited, the rest of the bottle is taken down while its task is
	// deleted.
	stopCtx, cancelStop := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
	defer cancelStop()
	so := s.so
	var waitRest func() error // set by exited, which runs on this goroutine, inside Run
	exited := func(int) {
		s.step("agent exited")
		if waitSelfTest() != nil && s.prev == nil {
			so.Remove = true // as a failed start; a resumed bottle keeps its work, stopped
		}
		waitRest = async(func() error {
			watch.stop()
			return e.stopParts(stopCtx, meta, false, so.Remove)
		})
	}
	exit, runErr := e.ctr.Run(ctx, s.id.Container(names.RoleAgent), ctr.IO{Stdin: so.Stdio.In, Stdout: so.Stdio.Out, Stderr: so.Stdio.Err, TTY: so.Stdio.TTY, BeforeStart: commit, Exited: exited})
	if !s.committed {
		return 0, errors.Join(runErr, waitSidecars())
	}
	if waitRest == nil {
		cancelAwait() // the agent did not run to its end: no report is coming
	}
	selfTestErr := waitSelfTest()
	if errors.Is(selfTestErr, context.Canceled) {
		selfTestErr = nil
	}
	s.step("agent ran")
	watch.stop() // (already stopped if the agent exited)
	if waitRest == nil && ctr.Unreachable(runErr) {
		// Run rode out a containerd restart for ReconnectTimeout; now containerd is gone
		// for good. The tasks run on under their shims, on their netns: nothing is
		// taken down, and the record says running (ps tells the truth once it is back).
		return exit, fmt.Errorf("lost containerd, so bottle %s is left as it is (its tasks may still run); once containerd is back, `bottle resume %s` continues it or `bottle stop %s` stops it: %w", s.id, s.id, s.id, runErr)
	}
	var stopErr error
	down := downNetworks // what stopParts with remove takes down
	if waitRest != nil {
		stopErr = waitRest()
	} else { // the agent did not exit normally (Run failed): stop everything
		stopErr, down = e.stopMeta(stopCtx, meta), downStopped
	}
	reason := watch.reason()
	if rec, err := e.loadProtectRecord(s.id); err == nil {
		e.checkWorkspace(meta, rec, endEvent(so.Remove))
	}
	if stopErr == nil {
		meta.Phase, meta.Pid, meta.PidStart, meta.Reason = state.PhaseStopped, 0, 0, reason
		if err := e.store.Save(meta); err != nil {
			// The bottle is down all the same, and `bottle ps` tells that from its tasks.
			e.log.Warn("bottle stopped, but recording that failed", "identity", s.id, "error", err)
		}
		if so.Remove {
			stopErr = e.removeMeta(ctx, meta, down)
		}
		if stopErr == nil {
			e.recordLifecycle(s.id, endEvent(so.Remove))
		}
	}
	s.step("stopped")
	if s.p.Workspace.Copy && !so.Remove {
		e.warnCopyFindings(s.id, s.p.Workspace.Source, s.p.Workspace.Host)
	}
	switch {
	case reason != "":
		stopErr = errors.Join(fmt.Errorf("bottle %s stopped: %s; `bottle resume %s` starts it again, `bottle rm %s` removes it", s.id, reason, s.id, s.id), stopErr)
	case stopErr == nil && runErr == nil && !so.Remove:
		// The kept bottle holds a slot, bridges and firewall chains: say how to go on or
		// let go, after the agent's last output.
		e.log.Info(fmt.Sprintf("bottle %s stopped and kept: `bottle resume %s` continues it, `bottle rm %s` removes it", s.id, s.id, s.id))
	}
	if runErr != nil || selfTestErr != nil {
		return exit, errors.Join(selfTestErr, runErr, stopErr)
	}
	return exit, stopErr
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
// --cwd, the copy of the workspace (they go with the bottle's dir), and prepares the
// audit trail (which does not).
func (e *Engine) writeStage(p *plan.Plan) error {
	if err := prepareAudit(p); err != nil {
		return err
	}
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
		if c.Role == names.RoleAgent {
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
	if err := e.prepareSupervise(p); err != nil {
		return err
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
		// The copy is the agent's to edit: it belongs to the agent's user.
		u := p.Container(names.RoleAgent).Spec.Process.User
		if err := lchownTree(p.Workspace.Source, int(u.UID), int(u.GID)); err != nil {
			return fmt.Errorf("workspace copy of %s: %w", p.Identity, err)
		}
		e.log.Info("workspace copy (removed with the bottle; `bottle cp` takes files out)", "path", p.Workspace.Source)
	}
	return nil
}
