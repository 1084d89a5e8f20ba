package runtime

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/containerd/errdefs"

	"github.com/bottle-dev/bottle/internal/ctr"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/netns"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/state"
)

// stopTimeout is how long a container gets between SIGTERM and SIGKILL.
const stopTimeout = 10 * time.Second

// load reads a bottle's metadata, checking the identity's form first.
func (e *Engine) load(identity string) (*state.Meta, error) {
	if _, _, err := plan.ParseIdentity(identity); err != nil {
		return nil, err
	}
	return e.store.Load(identity)
}

// Stop ends a bottle's tasks and takes down their network namespaces; containers,
// snapshots, metadata, the address slot, the (empty) bridges and the firewall rules stay
// so `bottle resume` can continue it. Stopping a stopped bottle is fine.
func (e *Engine) Stop(ctx context.Context, identity string) error {
	m, err := e.load(identity)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
	defer cancel()
	if err := e.stopMeta(ctx, m); err != nil {
		return err
	}
	m.Phase, m.Pid, m.PidStart = state.PhaseStopped, 0, 0
	return e.store.Save(m)
}

func (e *Engine) stopMeta(ctx context.Context, m *state.Meta) error {
	return e.stopParts(ctx, m, true)
}

// stopParts stops a bottle; withAgent false leaves the agent's task to its caller (an
// attached start whose agent has exited and is being deleted).
func (e *Engine) stopParts(ctx context.Context, m *state.Meta, withAgent bool) error {
	t0 := time.Now()
	defer func() { e.log.Debug("stopped", "identity", m.Identity, "took", time.Since(t0).Round(time.Millisecond)) }()
	stop := func(c state.Container) error {
		if _, err := e.ctr.Stop(ctx, c.Name, stopTimeout); err != nil && !errdefs.IsNotFound(err) {
			return err
		}
		return nil
	}
	// The agent first, so it never runs without its proxies; then at once the sidecars and
	// the networks of every container (a sandbox keeps its own copy of its interfaces, so
	// the host side can go while it shuts down). The bridges and the firewall rules stay
	// until the bottle is removed.
	var errs []error
	var sidecars []state.Container
	for _, c := range m.Containers {
		if c.Role != plan.RoleAgent {
			sidecars = append(sidecars, c)
		} else if withAgent {
			errs = append(errs, stop(c))
		}
	}
	internal, egress, err := e.networks(m)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	containers := map[string][]netns.Attachment{}
	for _, c := range m.Containers {
		atts, err := e.attachments(m, c)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		containers[c.Name] = atts
	}
	var netErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		netErr = e.net.TeardownContainers(ctx, m.Identity, containers, []netns.Network{internal, egress})
	}()
	errs = append(errs, parallel(sidecars, stop))
	<-done
	errs = append(errs, netErr)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop bottle %s: %w", m.Identity, err)
	}
	return nil
}

// Remove stops a bottle and deletes everything of it: containers, snapshots, netns,
// firewall rules, its address slot and its state dir (stage files, logs, workspace copy).
func (e *Engine) Remove(ctx context.Context, identity string) error {
	m, err := e.load(identity)
	if err != nil {
		return err
	}
	if m.Phase == state.PhaseRunning && m.Pid != 0 && state.OwnerAlive(m) && m.Pid != os.Getpid() {
		return fmt.Errorf("bottle %s is running attached to process %d; stop it first with `bottle stop %s`", identity, m.Pid, identity)
	}
	return e.removeMeta(ctx, m)
}

func (e *Engine) removeMeta(ctx context.Context, m *state.Meta) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
	defer cancel()
	errs := []error{e.stopMeta(ctx, m)}
	// Containers by label too: a start killed between recording and creating leaves none
	// unrecorded, but a damaged state dir must not strand containers.
	names := map[string]bool{}
	for _, c := range m.Containers {
		names[c.Name] = true
	}
	if infos, err := e.ctr.List(ctx, map[string]string{plan.LabelIdentity: m.Identity}); err == nil {
		for _, i := range infos {
			names[i.Name] = true
		}
	} else {
		errs = append(errs, err)
	}
	for n := range names {
		errs = append(errs, e.ctr.Delete(ctx, n))
	}
	if internal, egress, err := e.networks(m); err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, e.net.RemoveNetworks(ctx, m.Identity, []netns.Network{internal, egress}))
	}
	errs = append(errs, netns.RemoveFirewall(ctx, m.Identity), netns.ReleaseSlot(e.opts.StateDir, m.Identity))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove bottle %s (state kept; retry or run `bottle cleanup`): %w", m.Identity, err)
	}
	return e.store.Remove(m.Identity)
}

// Resume starts a stopped bottle again with its recorded identity, agent, workspace and
// command, a fresh netns per container, and the manifest as it reads now.
func (e *Engine) Resume(ctx context.Context, identity string, loadManifest func(path string) (*manifest.Manifest, string, error), detach bool, stdio Stdio) (int, error) {
	m, err := e.load(identity)
	if err != nil {
		return 0, err
	}
	switch {
	case state.Orphaned(m):
		return 0, fmt.Errorf("bottle %s was abandoned part way; remove it with `bottle rm %s` (or `bottle cleanup`)", identity, identity)
	case m.Phase != state.PhaseStopped:
		return 0, fmt.Errorf("bottle %s is %s; stop it first with `bottle stop %s`", identity, m.Phase, identity)
	}
	man, path, err := loadManifest(m.ManifestPath)
	if err != nil {
		return 0, err
	}
	if man.Agents[m.Agent] == nil {
		return 0, fmt.Errorf("agent %q of bottle %s is no longer in %s", m.Agent, identity, path)
	}
	so := StartOptions{
		Manifest: man, ManifestPath: path, Agent: m.Agent, Workspace: m.Workspace, CopyCwd: m.CopyCwd,
		Command: m.Command, Detach: detach, Stdio: stdio, identity: identity, slot: m.Slot,
	}
	return e.run(ctx, so, m)
}

// Status is one bottle as `bottle ps` shows it.
type Status struct {
	Identity   string            `json:"identity"`
	Agent      string            `json:"agent"`
	Phase      string            `json:"phase"`
	Orphaned   bool              `json:"orphaned"`
	Workspace  string            `json:"workspace"`
	CreatedAt  time.Time         `json:"created_at"`
	Containers map[string]string `json:"containers"` // role -> task status
}

// List returns every recorded bottle with its containers' task states.
func (e *Engine) List(ctx context.Context) ([]Status, error) {
	metas, _, err := e.store.List()
	if err != nil {
		return nil, err
	}
	infos, err := e.ctr.List(ctx, nil)
	if err != nil {
		return nil, err
	}
	tasks := map[string]ctr.TaskStatus{}
	for _, i := range infos {
		tasks[i.Name] = i.TaskStatus
	}
	out := make([]Status, 0, len(metas))
	for _, m := range metas {
		s := Status{Identity: m.Identity, Agent: m.Agent, Phase: m.Phase, Orphaned: state.Orphaned(m), Workspace: m.Workspace, CreatedAt: m.CreatedAt, Containers: map[string]string{}}
		for _, c := range m.Containers {
			st, ok := tasks[c.Name]
			if !ok {
				st = "missing"
			}
			s.Containers[c.Role] = string(st)
		}
		out = append(out, s)
	}
	return out, nil
}

// Exec runs args in a running bottle's agent container.
func (e *Engine) Exec(ctx context.Context, identity string, args []string, stdio Stdio) (int, error) {
	if _, err := e.load(identity); err != nil {
		return 0, err
	}
	return e.ctr.Exec(ctx, plan.ContainerName(identity, plan.RoleAgent), args, ctr.IO{Stdin: stdio.In, Stdout: stdio.Out, Stderr: stdio.Err, TTY: stdio.TTY})
}

// Logs copies a container's log to w; with follow it keeps copying until ctx ends or the
// container's task is gone.
func (e *Engine) Logs(ctx context.Context, identity, role string, follow bool, w io.Writer) error {
	m, err := e.load(identity)
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
		if role == plan.RoleAgent && !m.Detached {
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
		info, err := e.ctr.Info(ctx, plan.ContainerName(identity, role))
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
