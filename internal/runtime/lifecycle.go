package runtime

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/bottle-dev/bottle/internal/ctr"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/netns"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/state"
)

// stopTimeout is how long a container gets between SIGTERM and SIGKILL.
const stopTimeout = 10 * time.Second

// Stop ends a bottle's tasks and takes down their network namespaces; containers,
// snapshots, metadata, the address slot, the (empty) bridges and the firewall rules stay
// so `bottle resume` can continue it. Stopping a stopped bottle is fine. When the
// record cannot be written (a full disk) the bottle is stopped all the same.
func (e *Engine) Stop(ctx context.Context, identity names.Identity) error {
	m, err := e.store.Load(identity)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
	defer cancel()
	if err := e.stopMeta(ctx, m); err != nil {
		return err
	}
	if m.Phase == state.PhaseStopped {
		return nil
	}
	if rec, err := e.loadProtectRecord(identity); err == nil {
		e.checkWorkspace(m, rec, auditStop)
	}
	e.recordLifecycle(identity, auditStop)
	m.Phase, m.Pid, m.PidStart, m.Reason = state.PhaseStopped, 0, 0, ""
	if err := e.store.Save(m); err != nil {
		return fmt.Errorf("bottle %s is stopped, but recording that failed (`bottle ps` shows it stopped all the same): %w", identity, err)
	}
	return nil
}

func (e *Engine) stopMeta(ctx context.Context, m *state.Meta) error {
	return e.stopParts(ctx, m, true, false)
}

// stopParts stops a bottle in one pass; withAgent false leaves the agent's task to its
// caller (an attached start whose agent has exited and is being deleted). With remove
// (an attached start with --rm) it deletes the sidecars' containers and the bridges
// right away too; removeMeta(downNetworks) then does the rest.
func (e *Engine) stopParts(ctx context.Context, m *state.Meta, withAgent, remove bool) error {
	t0 := time.Now()
	defer func() { e.log.Debug("stopped", "identity", m.Identity, "took", time.Since(t0).Round(time.Millisecond)) }()
	if err := e.pingBeforeTakedown(ctx, "stop", m); err != nil {
		return err
	}
	var errs []error
	if withAgent {
		errs = append(errs, e.stopAgent(ctx, m))
	}
	nets, containers, err := e.bottleNets(m)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	// The bridges and the firewall rules stay until the bottle is removed.
	teardown, kill := e.net.TeardownContainers, e.ctr.DeleteTask
	if remove {
		teardown, kill = e.net.TeardownBottle, e.ctr.Delete
	}
	waitNet := async(func() error { return teardown(ctx, m.Identity.String(), containers, nets) })
	errs = append(errs, parallel(sidecarsOf(m), func(c state.Container) error { return kill(ctx, c.Name) }), waitNet())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop bottle %s: %w", m.Identity, err)
	}
	return nil
}

// pingBeforeTakedown refuses a stop or removal while containerd does not answer: nobody
// can then tell which tasks still use their netns, so nothing is taken down.
func (e *Engine) pingBeforeTakedown(ctx context.Context, what string, m *state.Meta) error {
	if err := e.ctr.Ping(ctx, pingWait); err != nil {
		return fmt.Errorf("%s bottle %s: nothing taken down; retry once containerd answers: %w", what, m.Identity, err)
	}
	return nil
}

// stopAgent stops the agent gracefully (SIGTERM, SIGKILL after stopTimeout): it may have
// work worth a clean exit. It goes before the sidecars, so it never runs without its
// proxies. The sidecars get SIGKILL at once (see sidecarsOf).
func (e *Engine) stopAgent(ctx context.Context, m *state.Meta) error {
	for _, c := range m.Containers {
		if c.Role != names.RoleAgent {
			continue
		}
		if _, err := e.ctr.Stop(ctx, c.Name, stopTimeout); err != nil && !errdefs.IsNotFound(err) {
			return err
		}
	}
	return nil
}

// sidecarsOf lists a bottle's sidecars. They hold no state worth a graceful shutdown
// (git-gate's spool only holds a push while it is checked, in the bottle's stage dir),
// so a takedown kills them at once, while the host side of every netns goes (a sandbox
// keeps its own copy of its interfaces).
func sidecarsOf(m *state.Meta) []state.Container {
	var out []state.Container
	for _, c := range m.Containers {
		if c.Role != names.RoleAgent {
			out = append(out, c)
		}
	}
	return out
}

// bottleNets returns a bottle's networks and the attachments of each recorded container.
func (e *Engine) bottleNets(m *state.Meta) ([]netns.Network, map[string][]netns.Attachment, error) {
	internal, egress, err := e.networks(m)
	if err != nil {
		return nil, nil, err
	}
	containers := map[string][]netns.Attachment{}
	for _, c := range m.Containers {
		atts, err := e.attachments(m, c)
		if err != nil {
			return nil, nil, err
		}
		containers[c.Name] = atts
	}
	return []netns.Network{internal, egress}, containers, nil
}

// settle stops a bottle that nobody looks after any more and keeps it for resume: it ran
// attached to a process that is gone, or its record says running while its tasks are
// gone (a reboot), so what is left of it (netns, CNI state) belongs to no task. It
// reports whether it stopped m.
func (e *Engine) settle(ctx context.Context, m *state.Meta) (bool, error) {
	if m.Phase != state.PhaseRunning {
		return false, nil
	}
	if !state.Unattended(m) {
		if phase, _, err := e.phase(ctx, m); err != nil || phase != state.PhaseStopped {
			return false, err
		}
	}
	if err := e.Stop(ctx, m.Identity); err != nil {
		return false, err
	}
	return true, nil
}

// Remove deletes a stopped bottle and everything of it: containers, snapshots, netns,
// firewall rules, its address slot and its state dir (stage files, logs, workspace copy).
// A bottle that is not stopped (nor abandoned part way) is only removed with force.
func (e *Engine) Remove(ctx context.Context, identity names.Identity, force bool) error {
	m, err := e.store.Load(identity)
	if err != nil {
		return err
	}
	// A bottle whose recorded stop completed and that runs no task since is not
	// stopped again: its netns are down already.
	down := downNothing
	if !force && !state.Orphaned(m) {
		phase, _, err := e.phase(ctx, m)
		if err != nil {
			return err
		}
		if phase != state.PhaseStopped {
			return fmt.Errorf("bottle %s is %s; stop it first with `bottle stop %s`, or remove it anyway with `bottle rm --force %s`", identity, phase, identity, identity)
		}
		if m.Phase == state.PhaseStopped {
			down = downStopped
		}
	}
	if m.CopyCwd {
		e.log.Info("removing the bottle's workspace copy with it", "identity", identity, "path", e.workspaceDir(m))
	}
	rec, recErr := e.loadProtectRecord(identity)
	if err := e.removeMeta(ctx, m, down); err != nil {
		return err
	}
	if recErr == nil {
		e.checkWorkspace(m, rec, auditRemove)
	}
	e.recordLifecycle(identity, auditRemove)
	return nil
}

// downTo is how much of a bottle a removal finds taken down already.
type downTo int

const (
	downNothing  downTo = iota // its tasks may run and its netns exist
	downStopped                // a completed stop: no task, no netns; containers and bridges stay
	downNetworks               // also the bridges gone: stopParts with remove (start --rm)
)

// removeMeta takes a bottle down and deletes it in one pass; what down says is gone
// already is not taken down again.
func (e *Engine) removeMeta(ctx context.Context, m *state.Meta, down downTo) error {
	t0 := time.Now()
	defer func() { e.log.Debug("removed", "identity", m.Identity, "took", time.Since(t0).Round(time.Millisecond)) }()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
	defer cancel()
	if err := e.pingBeforeTakedown(ctx, "remove", m); err != nil {
		return fmt.Errorf("%w (state kept)", err)
	}
	var errs []error
	if down == downNothing {
		errs = append(errs, e.stopAgent(ctx, m))
	}
	// Containers by label too: a start killed between recording and creating leaves none
	// unrecorded, but a damaged state dir must not strand containers.
	containers := map[string]bool{}
	for _, c := range m.Containers {
		// (stopParts with remove deleted the sidecars; any it missed, List finds.)
		if down != downNetworks || c.Role == names.RoleAgent {
			containers[c.Name] = true
		}
	}
	if infos, err := e.ctr.List(ctx, map[string]string{names.LabelIdentity: m.Identity.String()}); err == nil {
		for _, i := range infos {
			containers[i.Name] = true
		}
	} else {
		errs = append(errs, err)
	}
	// Every container is deleted at once (Delete kills a sidecar's task with SIGKILL)
	// while the networking goes: every netns first unless a stop took them down, then
	// RemoveNetworks, which also catches what no record names (its GC of the networks).
	waitNet := func() error { return nil }
	if nets, atts, err := e.bottleNets(m); err != nil {
		errs = append(errs, err)
	} else {
		waitNet = async(func() error {
			if down == downNothing {
				if err := e.net.TeardownBottle(ctx, m.Identity.String(), atts, nets); err != nil {
					return err
				}
			}
			return e.net.RemoveNetworks(ctx, m.Identity.String(), nets)
		})
	}
	errs = append(errs, parallel(slices.Collect(maps.Keys(containers)), func(n string) error { return e.ctr.Delete(ctx, n) }), waitNet())
	errs = append(errs, e.removeAgentImages(ctx, m.Identity), e.net.RemoveFirewall(ctx, m.Identity.String()), e.net.ReleaseSlot(m.Identity.String()))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove bottle %s (state kept; retry or run `bottle cleanup`): %w", m.Identity, err)
	}
	e.unmountPins(m.Identity) // a killed start's
	// Its agent is gone: what protect made in the workspace goes too.
	if rec, err := e.loadProtectRecord(m.Identity); err == nil && !m.CopyCwd {
		e.removeMade(m.Identity, m.Workspace, rec)
	}
	return e.store.Remove(m.Identity)
}

// Resume starts a stopped bottle again with its recorded identity, agent, workspace and
// command, a fresh netns per container, and the manifest (and the host files it names)
// as they read now.
func (e *Engine) Resume(ctx context.Context, identity names.Identity, loadManifest func(path string) (*manifest.Manifest, string, plan.HostFiles, error), detach bool, stdio Stdio) (int, error) {
	m, err := e.store.Load(identity)
	if err != nil {
		return 0, err
	}
	phase, reason, err := e.phase(ctx, m)
	if err != nil {
		return 0, err
	}
	switch {
	case state.Orphaned(m):
		return 0, fmt.Errorf("bottle %s was abandoned part way through its start; remove it with `bottle rm %s` (or `bottle cleanup`)", identity, identity)
	case m.Phase == state.PhaseStarting:
		return 0, fmt.Errorf("bottle %s is starting (process %d)", identity, m.Pid)
	case phase == state.PhaseStopped:
	case m.Phase == state.PhaseRunning && !m.Detached && state.OwnerAlive(m):
		return 0, fmt.Errorf("bottle %s is %s, attached to process %d; stop it first with `bottle stop %s`", identity, phase, m.Pid, identity)
	case phase == state.PhaseRunning && !state.Unattended(m):
		return 0, fmt.Errorf("bottle %s is running; stop it first with `bottle stop %s`", identity, identity)
	default: // degraded, exited, or its attached process is gone: nobody looks after it
		e.log.Info("stopping what is left of the bottle before resuming it", "identity", identity, "phase", phase, "reason", reason)
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
		defer cancel()
		if err := e.stopMeta(sctx, m); err != nil {
			return 0, err
		}
	}
	man, path, files, err := loadManifest(m.ManifestPath)
	if err != nil {
		return 0, err
	}
	if man.Agents[m.Agent] == nil {
		return 0, fmt.Errorf("agent %q of bottle %s is no longer in %s", m.Agent, identity, path)
	}
	return e.run(ctx, identity, resumeOptions(m, man, path, files, detach, stdio), m)
}

// resumeOptions start a recorded bottle again with its recorded agent, workspace and
// command.
func resumeOptions(m *state.Meta, man *manifest.Manifest, path string, files plan.HostFiles, detach bool, stdio Stdio) StartOptions {
	return StartOptions{
		PlanOptions: PlanOptions{
			Manifest: man, ManifestPath: path, Agent: m.Agent, Workspace: m.Workspace, CopyCwd: m.CopyCwd,
			Command: m.Command, HostFiles: files,
		},
		Detach: detach, Stdio: stdio,
	}
}

// Phases derived from the tasks, besides the recorded ones (state.Phase*).
const (
	// PhaseDegraded: the agent runs, a sidecar does not (its way out may be dead).
	PhaseDegraded = "degraded"
	// PhaseExited: the agent's task ended while sidecars still run (a detached agent
	// finished; `bottle stop` ends the rest).
	PhaseExited = "exited"
)

// pingWait is how long a stop waits for containerd to answer (e.g. while it restarts).
const pingWait = 10 * time.Second

// Status is one bottle as `bottle ps` shows it.
type Status struct {
	Identity names.Identity `json:"identity"`
	Agent    string         `json:"agent"`
	// Phase is told from the tasks: starting, running, degraded, exited or stopped.
	Phase string `json:"phase"`
	// Reason explains the phase, e.g. "filter exited 137".
	Reason    string `json:"reason,omitempty"`
	Orphaned  bool   `json:"orphaned"`
	Workspace string `json:"workspace"`
	// Copy is the workspace copy the agent works in (--cwd), removed with the bottle.
	Copy       string            `json:"copy,omitempty"`
	CreatedAt  time.Time         `json:"created_at"`
	Containers map[string]string `json:"containers"` // role -> task status
}

// List returns every recorded bottle with its phase and its containers' task states.
func (e *Engine) List(ctx context.Context) ([]Status, error) {
	metas, _, err := e.store.List()
	if err != nil {
		return nil, err
	}
	infos, err := e.ctr.List(ctx, nil)
	if err != nil {
		return nil, err
	}
	tasks := byName(infos)
	out := make([]Status, 0, len(metas))
	for _, m := range metas {
		phase, reason := phaseOf(m, tasks)
		s := Status{Identity: m.Identity, Agent: m.Agent, Phase: phase, Reason: reason, Orphaned: state.Orphaned(m), Workspace: m.Workspace, CreatedAt: m.CreatedAt, Containers: map[string]string{}}
		if m.CopyCwd {
			s.Copy = e.workspaceDir(m)
		}
		for _, c := range m.Containers {
			st := "missing"
			if i, ok := tasks[c.Name]; ok {
				st = string(i.TaskStatus)
			}
			s.Containers[c.Role] = st
		}
		out = append(out, s)
	}
	return out, nil
}

func byName(infos []ctr.ContainerInfo) map[string]ctr.ContainerInfo {
	m := make(map[string]ctr.ContainerInfo, len(infos))
	for _, i := range infos {
		m[i.Name] = i
	}
	return m
}

// phase tells one bottle's phase from its tasks (see phaseOf).
func (e *Engine) phase(ctx context.Context, m *state.Meta) (phase, reason string, err error) {
	infos, err := e.ctr.List(ctx, map[string]string{names.LabelIdentity: m.Identity.String()})
	if err != nil {
		return "", "", fmt.Errorf("bottle %s: %w", m.Identity, err)
	}
	phase, reason = phaseOf(m, byName(infos))
	return phase, reason, nil
}

// phaseOf tells a bottle's phase from its tasks, since the record can be stale (a
// reboot, a killed process, a full disk, a sidecar that died). The record only says
// whether a start is in progress and why bottle stopped a bottle by itself.
func phaseOf(m *state.Meta, tasks map[string]ctr.ContainerInfo) (phase, reason string) {
	if m.Phase == state.PhaseStarting {
		if state.Orphaned(m) {
			return state.PhaseStarting, "abandoned part way; `bottle cleanup` removes it"
		}
		return state.PhaseStarting, ""
	}
	agentUp, agent := false, ""
	var up, down []string
	for _, c := range m.Containers {
		i, ok := tasks[c.Name]
		alive := ok && i.TaskStatus != ctr.TaskNone && i.TaskStatus != ctr.TaskStopped
		var what string
		switch {
		case alive:
		case !ok:
			what = c.Role + " container is missing"
		case i.TaskStatus == ctr.TaskStopped:
			what = fmt.Sprintf("%s exited %d", c.Role, i.ExitStatus)
		default:
			what = c.Role + " has no task"
		}
		switch {
		case c.Role == names.RoleAgent:
			agentUp, agent = alive, what
		case alive:
			up = append(up, c.Role)
		default:
			down = append(down, what)
		}
	}
	switch {
	case agentUp && len(down) == 0 && state.Unattended(m):
		return state.PhaseRunning, fmt.Sprintf("the process it ran attached to (%d) is gone", m.Pid)
	case agentUp && len(down) == 0:
		return state.PhaseRunning, ""
	case agentUp:
		return PhaseDegraded, strings.Join(down, ", ")
	case len(up) > 0:
		return PhaseExited, strings.Join(append([]string{agent}, down...), ", ")
	}
	return state.PhaseStopped, m.Reason
}

// Exec runs args in a running bottle's agent container.
func (e *Engine) Exec(ctx context.Context, identity names.Identity, args []string, stdio Stdio) (int, error) {
	if _, err := e.store.Load(identity); err != nil {
		return 0, err
	}
	return e.ctr.Exec(ctx, identity.Container(names.RoleAgent), args, ctr.IO{Stdin: stdio.In, Stdout: stdio.Out, Stderr: stdio.Err, TTY: stdio.TTY})
}

// Logs copies a container's log to w; with follow it keeps copying until ctx ends or the
// container's task is gone.
func (e *Engine) Logs(ctx context.Context, identity names.Identity, role string, follow bool, w io.Writer) error {
	m, err := e.store.Load(identity)
	if err != nil {
		return err
	}
	found := false
	for _, c := range m.Containers {
		found = found || c.Role == role
	}
	if !found {
		return fmt.Errorf("bottle %s has no %s container", identity, role)
	}
	path := e.logPath(identity, role)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		if role == names.RoleAgent && !m.Detached {
			return fmt.Errorf("bottle %s ran attached: its agent's output went to the terminal, not to a log", identity)
		}
		return fmt.Errorf("no log for %s of bottle %s yet", role, identity)
	}
	if err != nil {
		return fmt.Errorf("open log %s: %w", path, err)
	}
	defer f.Close()
	r := bufio.NewReader(f)
	for {
		if _, err := io.Copy(w, r); err != nil {
			return err
		}
		if !follow {
			return nil
		}
		info, err := e.ctr.Info(ctx, identity.Container(role))
		if err != nil || info.TaskStatus != ctr.TaskRunning {
			_, err := io.Copy(w, r)
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}
