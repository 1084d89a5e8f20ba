package ctr

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// IO connects a process to the caller. With TTY the container's process must have been
// created with Process.Terminal=true; Stderr is then unused (the terminal merges it).
// When Stdin is a terminal and TTY is set, it is put into raw mode for the duration and
// the container's console follows its size.
type IO struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	TTY    bool
	// BeforeStart, when set, runs once the task exists (for runsc: its sandbox is up) but
	// before its process starts; an error removes the task. Run uses it to boot the
	// sandbox while other work finishes.
	BeforeStart func() error
	// Exited, when set, is called once the process has exited and its output is
	// delivered, before the task is deleted (deletion takes a while under runsc; the
	// caller can start its own teardown meanwhile).
	Exited func(code int)
}

// ForwardedSignals are relayed from bottle to the container's process while it runs
// attached. SIGCHLD, SIGURG (Go runtime preemption), SIGPIPE and SIGWINCH (handled as
// a resize) are not.
var ForwardedSignals = []os.Signal{
	unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2,
}

// killer is a task or exec process.
type killer interface {
	Kill(context.Context, syscall.Signal, ...client.KillOpts) error
}

// ioCloser closes a process's stdin.
type ioCloser interface {
	CloseIO(context.Context, ...client.IOCloserOpts) error
}

type resizer interface {
	Resize(ctx context.Context, w, h uint32) error
}

// Run starts the task of container name attached to stdio, forwards signals, and
// returns the exit status once it ends. The finished task is deleted (the container
// stays). If ctx is cancelled the task is killed.
func (c *Client) Run(ctx context.Context, name string, stdio IO) (int, error) {
	ctx = c.ctx(ctx)
	cont, err := c.c.LoadContainer(ctx, name)
	if err != nil {
		return -1, fmt.Errorf("run container %s: %w", name, err)
	}
	spec, err := cont.Spec(ctx)
	if err != nil {
		return -1, fmt.Errorf("run container %s: spec: %w", name, err)
	}
	if spec.Process == nil || spec.Process.Terminal != stdio.TTY {
		return -1, fmt.Errorf("run container %s: TTY=%v does not match the spec's process.terminal", name, stdio.TTY)
	}
	if err := c.clearStoppedTask(ctx, cont); err != nil {
		return -1, fmt.Errorf("run container %s: %w", name, err)
	}

	att := newAttachment(stdio)
	defer att.restore()
	task, err := c.newTask(ctx, cont, att.creator())
	if err != nil {
		att.ready(nil)
		return -1, fmt.Errorf("run container %s: new task: %w", name, err)
	}
	att.ready(task)
	if stdio.BeforeStart != nil {
		if err := stdio.BeforeStart(); err != nil {
			_, derr := c.deleteProcess(ctx, task)
			return -1, errors.Join(err, derr)
		}
	}
	// Raw only now: what BeforeStart prints (the banner) ends its lines as a cooked
	// terminal does, and Ctrl-C until here interrupts the setup, not the agent.
	if err := att.makeRaw(); err != nil {
		_, derr := c.deleteProcess(ctx, task)
		return -1, errors.Join(fmt.Errorf("run container %s: %w", name, err), derr)
	}
	code, err := c.runProcess(ctx, task, att)
	if err == nil && stdio.Exited != nil {
		stdio.Exited(code)
	}
	// Lost containerd for good: the task runs on under its shim; leave it be.
	if !Unreachable(err) {
		if _, derr := c.deleteProcess(ctx, task); derr != nil {
			err = errors.Join(err, derr)
		}
	}
	if err != nil {
		return code, fmt.Errorf("run container %s: %w", name, err)
	}
	return code, nil
}

// process is a task or an exec process.
type process interface {
	killer
	IO() cio.IO
	resizer
	Wait(context.Context) (<-chan client.ExitStatus, error)
	Start(context.Context) error
	Status(context.Context) (client.Status, error)
}

// runProcess waits, starts, relays signals and console size, and returns the exit code.
func (c *Client) runProcess(ctx context.Context, p process, att *attachment) (int, error) {
	// Wait before Start, or a fast exit is missed.
	statusC, err := c.waitExit(ctx, p)
	if err != nil {
		return -1, fmt.Errorf("wait: %w", err)
	}
	// Catch signals from now on, but relay them only once Start returned: the client's
	// task is not safe for Kill during Start.
	started := make(chan struct{})
	sigc := forwardSignals(ctx, p, started)
	defer stopSignals(sigc)
	// A task's console exists before Start: size it now so the first program sees the
	// right size; exec consoles only exist after Start, so size again then.
	resize, stopResize := att.followResize(ctx, p)
	defer stopResize()
	err = p.Start(ctx)
	close(started)
	if err != nil {
		return -1, fmt.Errorf("start: %w", err)
	}
	resize()
	select {
	case st := <-statusC:
		if st.err != nil {
			// The wait may have been cut short by ctx: gRPC can report its deadline a
			// moment before ctx itself is done.
			select {
			case <-ctx.Done():
				return -1, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
			return -1, fmt.Errorf("exit status: %w", st.err)
		}
		drainIO(p.IO())
		return st.code, nil
	case <-ctx.Done():
		return -1, ctx.Err()
	}
}

// exitResult is a process's exit code, or why it could not be had.
type exitResult struct {
	code int
	err  error
}

// waitExit waits for p to exit and rides out a containerd restart: when the wait breaks
// because containerd stopped answering, it waits again once containerd is back (tasks
// are restored from their shims), after at most ReconnectTimeout of silence each time.
// The process's own IO does not pass through containerd and goes on meanwhile.
func (c *Client) waitExit(ctx context.Context, p process) (<-chan exitResult, error) {
	statusC, err := p.Wait(ctx)
	if err != nil {
		return nil, err
	}
	out := make(chan exitResult, 1)
	go func() {
		for {
			var st client.ExitStatus
			select {
			case st = <-statusC:
			case <-ctx.Done():
				out <- exitResult{-1, ctx.Err()}
				return
			}
			code, _, err := st.Result()
			if !Unreachable(err) || ctx.Err() != nil {
				out <- exitResult{int(code), errgrpc.ToNative(err)}
				return
			}
			slog.Warn("lost the connection to containerd; waiting for it to come back", "address", c.address, "for", ReconnectTimeout)
			if err := c.Ping(ctx, ReconnectTimeout); err != nil {
				out <- exitResult{-1, err}
				return
			}
			slog.Info("containerd is back", "address", c.address)
			// containerd drops, when it starts, a task whose processes all ended while it
			// was down ("leaked shim"): its exit status is lost with it.
			if _, err := p.Status(ctx); errdefs.IsNotFound(err) {
				out <- exitResult{-1, fmt.Errorf("it ended while containerd was down, and containerd dropped its task and exit status when it came back: %w", err)}
				return
			}
			if statusC, err = p.Wait(ctx); err != nil {
				out <- exitResult{-1, errgrpc.ToNative(err)}
				return
			}
		}
	}()
	return out, nil
}

// WaitTask waits until the task of container name exits and returns its exit status;
// like Run it rides out a containerd restart. A container without a task gives an
// error that errdefs.IsNotFound recognizes.
func (c *Client) WaitTask(ctx context.Context, name string) (int, error) {
	ctx = c.ctx(ctx)
	var task client.Task
	for retried := false; ; retried = true {
		cont, err := c.c.LoadContainer(ctx, name)
		if err == nil {
			task, err = cont.Task(ctx, nil)
		}
		if err == nil {
			break
		}
		if retried || !Unreachable(err) {
			return -1, fmt.Errorf("wait for container %s: %w", name, err)
		}
		if err := c.Ping(ctx, ReconnectTimeout); err != nil {
			return -1, fmt.Errorf("wait for container %s: %w", name, err)
		}
	}
	exitC, err := c.waitExit(ctx, task)
	if err != nil {
		return -1, fmt.Errorf("wait for container %s: %w", name, err)
	}
	st := <-exitC
	if st.err != nil {
		return -1, fmt.Errorf("wait for container %s: %w", name, st.err)
	}
	return st.code, nil
}

// ioDrainTimeout bounds the wait for output still in flight after the exit; a
// background process that inherited stdout could otherwise hold it open forever.
const ioDrainTimeout = 5 * time.Second

// drainIO waits until the shim has delivered all output. Deleting the process first
// loses it: containerd's task.Delete cancels the IO, closing our end of the FIFOs
// while the shim may still be copying (seen under runsc with short-lived processes).
func drainIO(pio cio.IO) {
	if pio == nil {
		return
	}
	done := make(chan struct{})
	go func() {
		pio.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(ioDrainTimeout):
		slog.Debug("container output still open after the process exited; not waiting longer")
	}
}

// deleteProcess kills (if still running) and removes a task or exec process. It runs
// on its own timeout even when ctx was cancelled.
func (c *Client) deleteProcess(ctx context.Context, p client.Process) (*client.ExitStatus, error) {
	tctx, cancel := c.teardownCtx(ctx)
	defer cancel()
	return killAndDelete(tctx, p)
}

// killAndDelete is client.WithProcessKill without its pitfall under runsc: killing a
// task that already exited fails with "sandbox is not running" (not NotFound), which
// aborted the delete. Only live processes are killed here.
func killAndDelete(ctx context.Context, p client.Process) (*client.ExitStatus, error) {
	st, err := p.Status(ctx)
	if errdefs.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	if st.Status != client.Stopped && p.Pid() != 0 {
		waitC, err := p.Wait(ctx)
		if err != nil {
			return nil, fmt.Errorf("wait: %w", err)
		}
		var opts []client.KillOpts
		if _, isTask := p.(client.Task); isTask {
			opts = append(opts, client.WithKillAll)
		}
		if kerr := p.Kill(ctx, unix.SIGKILL, opts...); kerr != nil {
			// It may have exited meanwhile; only a process still alive is a failure.
			if st, err := p.Status(ctx); err == nil && st.Status != client.Stopped {
				return nil, fmt.Errorf("SIGKILL: %w", kerr)
			}
		} else {
			select {
			case <-waitC:
			case <-ctx.Done():
				return nil, fmt.Errorf("no exit after SIGKILL: %w", ctx.Err())
			}
		}
	}
	exit, err := deleteOnShim(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("delete: %w", err)
	}
	return exit, nil
}

// deleteOnShim deletes p; a p already gone is fine. A shim may exit before it has
// answered the delete of its last task; containerd then reports the connection closed,
// but it has removed the task all the same.
func deleteOnShim(ctx context.Context, p client.Process) (*client.ExitStatus, error) {
	exit, err := p.Delete(ctx)
	if err != nil && strings.Contains(err.Error(), ttrpc.ErrClosed.Error()) {
		if _, serr := p.Status(ctx); errdefs.IsNotFound(serr) {
			return nil, nil
		}
	}
	if err != nil && !errdefs.IsNotFound(err) {
		return nil, err
	}
	return exit, nil
}

// clearStoppedTask deletes an exited task left from a previous start; a live task is
// an error.
func (c *Client) clearStoppedTask(ctx context.Context, cont client.Container) error {
	task, err := cont.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load task: %w", err)
	}
	st, err := task.Status(ctx)
	if err != nil {
		return fmt.Errorf("task status: %w", err)
	}
	if st.Status != client.Stopped {
		return fmt.Errorf("its task is %s (stop it first): %w", st.Status, errdefs.ErrFailedPrecondition)
	}
	if _, err := deleteOnShim(ctx, task); err != nil {
		return fmt.Errorf("delete stopped task: %w", err)
	}
	return nil
}

// taskCreateTimeout bounds the creation of a task (for runsc: booting its sandbox).
const taskCreateTimeout = 60 * time.Second

// newTask creates a task even when ctx ends meanwhile: a create abandoned half way is
// finished by containerd anyway, and its shim and sandbox would then belong to nobody.
// If ctx has ended, the new task is removed again.
func (c *Client) newTask(ctx context.Context, cont client.Container, ioc cio.Creator) (client.Task, error) {
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), taskCreateTimeout)
	defer cancel()
	task, err := cont.NewTask(tctx, ioc)
	if err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		_, derr := c.deleteProcess(ctx, task)
		return nil, errors.Join(ctx.Err(), derr)
	}
	return task, nil
}

// Start starts the task of container name detached, its stdout and stderr appended to
// logPath (made absolute; parent created 0700). It returns the task's pid.
func (c *Client) Start(ctx context.Context, name, logPath string) (uint32, error) {
	ctx = c.ctx(ctx)
	abs, err := filepath.Abs(logPath)
	if err != nil {
		return 0, fmt.Errorf("start container %s: log path %s: %w", name, logPath, err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return 0, fmt.Errorf("start container %s: log directory: %w", name, err)
	}
	cont, err := c.c.LoadContainer(ctx, name)
	if err != nil {
		return 0, fmt.Errorf("start container %s: %w", name, err)
	}
	if err := c.clearStoppedTask(ctx, cont); err != nil {
		return 0, fmt.Errorf("start container %s: %w", name, err)
	}
	task, err := c.newTask(ctx, cont, cio.LogFile(abs))
	if err != nil {
		return 0, fmt.Errorf("start container %s: new task: %w", name, err)
	}
	if err := task.Start(ctx); err != nil {
		_, derr := c.deleteProcess(ctx, task)
		return 0, errors.Join(fmt.Errorf("start container %s: %w", name, err), derr)
	}
	return task.Pid(), nil
}

// Exec runs args in the running container name with the container process's env,
// user, cwd and capabilities, attached to stdio, and returns its exit status.
func (c *Client) Exec(ctx context.Context, name string, args []string, stdio IO) (int, error) {
	if len(args) == 0 {
		return -1, fmt.Errorf("exec in container %s: no command", name)
	}
	ctx = c.ctx(ctx)
	cont, err := c.c.LoadContainer(ctx, name)
	if err != nil {
		return -1, fmt.Errorf("exec in container %s: %w", name, err)
	}
	spec, err := cont.Spec(ctx)
	if err != nil {
		return -1, fmt.Errorf("exec in container %s: spec: %w", name, err)
	}
	task, err := cont.Task(ctx, nil)
	if err != nil {
		return -1, fmt.Errorf("exec in container %s: it has no running task: %w", name, err)
	}
	pspec := specs.Process{}
	if spec.Process != nil {
		pspec = *spec.Process
	}
	pspec.Args = args
	pspec.Terminal = stdio.TTY
	pspec.ConsoleSize = nil

	id, err := execID()
	if err != nil {
		return -1, fmt.Errorf("exec in container %s: %w", name, err)
	}
	att := newAttachment(stdio)
	defer att.restore()
	if err := att.makeRaw(); err != nil {
		return -1, fmt.Errorf("exec in container %s: %w", name, err)
	}
	proc, err := task.Exec(ctx, id, &pspec, att.creator())
	if err != nil {
		att.ready(nil)
		return -1, fmt.Errorf("exec in container %s: %w", name, err)
	}
	att.ready(proc)
	code, err := c.runProcess(ctx, proc, att)
	if _, derr := c.deleteProcess(ctx, proc); derr != nil {
		err = errors.Join(err, derr)
	}
	if err != nil {
		return code, fmt.Errorf("exec in container %s: %w", name, err)
	}
	return code, nil
}

func execID() (string, error) {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("exec id: %w", err)
	}
	return "exec-" + hex.EncodeToString(b), nil
}

// Kill sends sig to the init process of container name's task.
func (c *Client) Kill(ctx context.Context, name string, sig syscall.Signal) error {
	ctx = c.ctx(ctx)
	cont, err := c.c.LoadContainer(ctx, name)
	if err != nil {
		return fmt.Errorf("kill container %s: %w", name, err)
	}
	task, err := cont.Task(ctx, nil)
	if err != nil {
		return fmt.Errorf("kill container %s: task: %w", name, err)
	}
	if err := task.Kill(ctx, sig); err != nil {
		return fmt.Errorf("kill container %s with %v: %w", name, sig, err)
	}
	return nil
}

// Stop sends SIGTERM to container name's task, SIGKILL after timeout, waits for it to
// exit and deletes the task (the container stays). No task is fine. It runs even when
// ctx is already cancelled. It returns the exit code (-1 without a task).
func (c *Client) Stop(ctx context.Context, name string, timeout time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(c.ctx(context.WithoutCancel(ctx)), timeout+teardownTimeout)
	defer cancel()
	cont, err := c.c.LoadContainer(ctx, name)
	if err != nil {
		return -1, fmt.Errorf("stop container %s: %w", name, err)
	}
	task, err := cont.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return -1, nil
	}
	if err != nil {
		return -1, fmt.Errorf("stop container %s: task: %w", name, err)
	}
	statusC, err := task.Wait(ctx)
	if err != nil {
		return -1, fmt.Errorf("stop container %s: wait: %w", name, err)
	}
	st, err := task.Status(ctx)
	if err != nil {
		return -1, fmt.Errorf("stop container %s: status: %w", name, err)
	}
	if st.Status != client.Stopped {
		if err := task.Kill(ctx, unix.SIGTERM); err != nil && !errdefs.IsNotFound(err) {
			return -1, fmt.Errorf("stop container %s: SIGTERM: %w", name, err)
		}
		select {
		case <-statusC:
		case <-time.After(timeout):
			slog.Debug("container did not stop after SIGTERM, sending SIGKILL", "container", name, "timeout", timeout)
			if err := task.Kill(ctx, unix.SIGKILL, client.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
				return -1, fmt.Errorf("stop container %s: SIGKILL: %w", name, err)
			}
			select {
			case <-statusC:
			case <-ctx.Done():
				return -1, fmt.Errorf("stop container %s: no exit after SIGKILL: %w", name, ctx.Err())
			}
		}
	}
	exit, err := deleteOnShim(ctx, task)
	if err != nil {
		return -1, fmt.Errorf("stop container %s: delete task: %w", name, err)
	}
	if exit == nil {
		return -1, nil
	}
	return int(exit.ExitCode()), nil
}

// forwardSignals relays ForwardedSignals to p, from when started is closed until
// stopSignals.
func forwardSignals(ctx context.Context, p killer, started <-chan struct{}) chan os.Signal {
	sigc := make(chan os.Signal, 32)
	signal.Notify(sigc, ForwardedSignals...)
	go func() {
		<-started
		for s := range sigc {
			sig, ok := s.(syscall.Signal)
			if !ok {
				continue
			}
			slog.Debug("forwarding signal to container", "signal", sig)
			if err := p.Kill(ctx, sig); err != nil {
				if errdefs.IsNotFound(err) {
					return
				}
				slog.Warn("forwarding signal to container failed", "signal", sig, "error", err)
			}
		}
	}()
	return sigc
}

func stopSignals(sigc chan os.Signal) {
	signal.Stop(sigc)
	close(sigc)
}

// attachment wires stdio to a process: raw mode, console size, and closing the
// process's stdin when the caller's Stdin reaches EOF.
type attachment struct {
	stdio    IO
	terminal *os.File // the caller's terminal (raw mode, size), when TTY and Stdin is one
	oldState *term.State

	once  sync.Once
	procC chan ioCloser
}

func newAttachment(stdio IO) *attachment {
	a := &attachment{stdio: stdio, procC: make(chan ioCloser, 1)}
	if stdio.TTY {
		if f, ok := stdio.Stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			a.terminal = f
		}
	}
	return a
}

func (a *attachment) makeRaw() error {
	if a.terminal == nil {
		return nil
	}
	st, err := term.MakeRaw(int(a.terminal.Fd()))
	if err != nil {
		return fmt.Errorf("terminal raw mode: %w", err)
	}
	a.oldState = st
	return nil
}

func (a *attachment) restore() {
	if a.oldState != nil {
		if err := term.Restore(int(a.terminal.Fd()), a.oldState); err != nil {
			slog.Warn("restoring the terminal failed", "error", err)
		}
		a.oldState = nil
	}
}

// ready hands the created process (nil on failure) to the stdin EOF handler.
func (a *attachment) ready(p ioCloser) {
	a.once.Do(func() { a.procC <- p; close(a.procC) })
}

func (a *attachment) creator() cio.Creator {
	var stdin io.Reader
	if a.stdio.Stdin != nil {
		stdin = &eofCloser{r: a.stdio.Stdin, procC: a.procC}
	}
	stdout, stderr := a.stdio.Stdout, a.stdio.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	mu := &sync.Mutex{}
	stdout, stderr = lockedWriter{mu, stdout}, lockedWriter{mu, stderr}
	if a.stdio.TTY {
		return cio.NewCreator(cio.WithStreams(stdin, stdout, nil), cio.WithTerminal)
	}
	return cio.NewCreator(cio.WithStreams(stdin, stdout, stderr))
}

// followResize sets the console size now and on every SIGWINCH until stop. resize
// sets it once more. Both are no-ops without a terminal.
func (a *attachment) followResize(ctx context.Context, p resizer) (resize func(), stop func()) {
	if a.terminal == nil {
		return func() {}, func() {}
	}
	fd := int(a.terminal.Fd())
	resize = func() {
		w, h, err := term.GetSize(fd)
		if err != nil {
			slog.Debug("terminal size", "error", err)
			return
		}
		if err := p.Resize(ctx, uint32(w), uint32(h)); err != nil && !errdefs.IsNotFound(err) {
			slog.Debug("resize container console", "error", err)
		}
	}
	resize()
	winch := make(chan os.Signal, 4)
	signal.Notify(winch, unix.SIGWINCH)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-winch:
				resize()
			case <-done:
				return
			}
		}
	}()
	return resize, func() {
		signal.Stop(winch)
		close(done)
	}
}

// lockedWriter serializes writes of the stdout and stderr copiers, which may share
// one writer (e.g. a bytes.Buffer, whose concurrent ReadFrom calls lose data).
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// eofCloser closes the process's stdin once r is exhausted, so the process sees EOF.
type eofCloser struct {
	r     io.Reader
	procC chan ioCloser
}

func (e *eofCloser) Read(b []byte) (int, error) {
	n, err := e.r.Read(b)
	if errors.Is(err, io.EOF) {
		// The process may not exist yet when stdin is short; wait until it does.
		if p := <-e.procC; p != nil {
			if cerr := p.CloseIO(context.Background(), client.WithStdinCloser); cerr != nil && !errdefs.IsNotFound(cerr) {
				slog.Debug("closing container stdin", "error", cerr)
			}
		}
	}
	return n, err
}
