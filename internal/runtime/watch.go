package runtime

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	goruntime "runtime"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/bottle-dev/bottle/internal/ctr"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/state"
)

// sidecarRestarts is how often an attached start restarts one sidecar that exits before
// it stops the bottle instead.
const sidecarRestarts = 3

// sidecarWatch looks after the sidecars of a bottle that runs attached. (A detached
// bottle has no process of bottle to watch it: `bottle ps` shows a dead sidecar as
// "degraded", and `bottle resume` starts it again.)
type sidecarWatch struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	why    string // why the bottle is being stopped; empty while all is well
}

// watchSidecars waits on every sidecar's task while the agent runs. A sidecar that exits
// is started again in a fresh netns with the same addresses and must pass its ready
// check; when that fails, or the sidecar was restarted sidecarRestarts times already,
// the agent is stopped, which stops the bottle, and the reason is kept for the record.
func (e *Engine) watchSidecars(ctx context.Context, meta *state.Meta, p *plan.Plan) *sidecarWatch {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w := &sidecarWatch{cancel: cancel}
	if p.Container(names.RoleSupervise) != nil {
		w.wg.Go(func() { e.announceProposals(ctx, p.Identity) })
	}
	for _, c := range p.Containers {
		if c.Role != names.RoleAgent {
			w.wg.Add(1)
			go func() {
				defer w.wg.Done()
				e.watchSidecar(ctx, w, meta, p, c)
			}()
		}
	}
	return w
}

func (e *Engine) watchSidecar(ctx context.Context, w *sidecarWatch, meta *state.Meta, p *plan.Plan, c *plan.Container) {
	agent := meta.Identity.Container(names.RoleAgent)
	for restarts := 0; ; restarts++ {
		code, err := e.ctr.WaitTask(ctx, c.Name)
		if ctx.Err() != nil {
			return
		}
		what := fmt.Sprintf("%s exited %d", c.Role, code)
		if err != nil {
			if !errdefs.IsNotFound(err) { // containerd is gone for good: the start says so
				e.log.Debug("stopped watching sidecar", "sidecar", c.Name, "error", err)
				return
			}
			what = c.Role + " lost its task"
		}
		// The bottle going down is no failure (`bottle stop` ends the agent first).
		if info, err := e.ctr.Info(ctx, agent); err != nil || info.TaskStatus != ctr.TaskRunning {
			return
		}
		if restarts == sidecarRestarts {
			w.fail(ctx, e, agent, fmt.Sprintf("%s (restarted %d times already)", what, restarts))
			return
		}
		e.log.Warn("sidecar exited; restarting it", "sidecar", c.Name, "status", what)
		if err := e.restartSidecar(ctx, meta, p, c); err != nil {
			if ctx.Err() == nil {
				w.fail(ctx, e, agent, fmt.Sprintf("%s; restarting it failed: %v", what, err))
			}
			return
		}
		e.log.Info("sidecar restarted", "sidecar", c.Name)
	}
}

// restartSidecar starts an exited sidecar again: a netns serves one sandbox start, so it
// gets a fresh one with the same addresses, and its old task is replaced.
func (e *Engine) restartSidecar(ctx context.Context, meta *state.Meta, p *plan.Plan, c *plan.Container) error {
	nsPath, _, err := e.setupNetns(ctx, meta, c.Name)
	if err != nil {
		return err
	}
	if err := announce(nsPath, peers(meta, c.Name)); err != nil {
		e.log.Debug("announcing the restarted sidecar to its peers", "sidecar", c.Name, "error", err)
	}
	return e.startSidecar(ctx, p, c)
}

// fail records why the bottle stops and ends the agent: SIGTERM, SIGKILL after
// stopTimeout. Only the first reason counts.
func (w *sidecarWatch) fail(ctx context.Context, e *Engine, agent, why string) {
	w.mu.Lock()
	first := w.why == ""
	if first {
		w.why = why
	}
	w.mu.Unlock()
	if !first {
		return
	}
	e.log.Error("stopping the bottle: "+why, "agent", agent)
	if err := e.ctr.Kill(ctx, agent, syscall.SIGTERM); err != nil {
		e.log.Debug("SIGTERM to the agent", "error", err)
	}
	select {
	case <-ctx.Done(): // the agent exited
	case <-time.After(stopTimeout):
		if err := e.ctr.Kill(ctx, agent, syscall.SIGKILL); err != nil {
			e.log.Debug("SIGKILL to the agent", "error", err)
		}
	}
}

// stop ends the watch and returns once none of it runs any more; again, it does nothing.
func (w *sidecarWatch) stop() {
	if w != nil {
		w.cancel()
		w.wg.Wait()
	}
}

// reason is why the watch stopped the bottle; empty if it did not.
func (w *sidecarWatch) reason() string {
	if w == nil {
		return ""
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.why
}

// peers are the addresses of the other containers on the networks of container name.
func peers(m *state.Meta, name string) []netip.Addr {
	nets := map[string]bool{}
	for _, a := range recorded(m, name).Attachments {
		nets[a.Network] = true
	}
	var out []netip.Addr
	for _, c := range m.Containers {
		for _, a := range c.Attachments {
			if c.Name != name && nets[a.Network] {
				out = append(out, a.Address)
			}
		}
	}
	return out
}

// announce makes peers learn the interface of a fresh netns, whose MAC is new: otherwise
// a peer (the agent) keeps sending to the old one until its neighbor entry times out,
// up to a minute. From inside the netns, before a sandbox takes its interfaces over, a
// datagram to each peer's discard port makes the kernel ask for the peer's address, and
// that ARP request updates the asker's entry in the peer's neighbor cache (RFC 4861
// 7.2.3, which gVisor follows for ARP too).
func announce(nsPath string, peers []netip.Addr) error {
	errc := make(chan error, 1)
	go func() {
		// The thread enters the netns and is never unlocked: it ends with the goroutine.
		goruntime.LockOSThread()
		fd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", nsPath, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", nsPath, err)
			return
		}
		var errs []error
		for _, p := range peers {
			conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(p, 9)))
			if err == nil {
				_, err = conn.Write([]byte{0})
				conn.Close()
			}
			errs = append(errs, err)
		}
		errc <- errors.Join(errs...)
	}()
	return <-errc
}

// recorded returns the recorded container named name.
func recorded(m *state.Meta, name string) state.Container {
	for _, c := range m.Containers {
		if c.Name == name {
			return c
		}
	}
	return state.Container{}
}
