// Package imagebuild builds a bottle's own agent image from a Dockerfile with BuildKit:
// a private buildkitd per build, on containerd's store (its containerd worker), its RUN
// steps under gVisor, without network, FROM the bottle's current agent image as found in
// containerd, the result written straight into containerd's image store.
package imagebuild

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bottle-dev/bottle/internal/names"
)

// Registry is the pseudo-registry of per-bottle images: nothing is pushed to or pulled
// from it, it only keeps their names apart from any real image.
const Registry = "bottle.local"

// ImageRef is the name of a bottle's n-th built agent image: bottle.local/<identity>:<n>.
func ImageRef(identity names.Identity, n int) string {
	return ImageRepo(identity) + ":" + strconv.Itoa(n)
}

// ImageRepo is the repository of a bottle's built images (ImageRef without the tag).
func ImageRepo(identity names.Identity) string {
	return Registry + "/" + identity.String()
}

// DefaultTimeout bounds a build that sets none.
const DefaultTimeout = 10 * time.Minute

// Runtime is how buildkitd's containerd worker runs RUN steps: a containerd runtime type
// with, for containerd's runc shim, the OCI binary (runsc) and its state root.
type Runtime struct {
	Type       string // e.g. io.containerd.runc.v2, io.containerd.runsc.v1
	BinaryName string // runsc, for the runc shim
	Root       string // runc/runsc --root (empty: the shim's default)
}

// Spec describes one build.
type Spec struct {
	Dockerfile string
	// Base is the current agent image; the Dockerfile must be FROM it (see Validate).
	Base string
	// Target is the image the build writes to containerd (see ImageRef).
	Target string
	// Containerd is containerd's socket; Namespace and Snapshotter are the bottle's, so
	// the image is unpacked for the snapshotter its containers use.
	Containerd, Namespace, Snapshotter string
	Runtime                            Runtime
	// Dir is a private directory (it must not exist yet) for buildkitd's root, socket,
	// config and the build context; it is removed after the build.
	Dir     string
	Timeout time.Duration
	// Progress receives buildctl's plain progress lines (nil: discarded).
	Progress io.Writer
	// Buildkitd and Buildctl are the executables (empty: looked up on PATH).
	Buildkitd, Buildctl string
}

// startTimeout bounds how long buildkitd may take to serve.
const startTimeout = 30 * time.Second

// stopTimeout is how long buildkitd gets between SIGTERM and SIGKILL.
const stopTimeout = 10 * time.Second

// Build validates s.Dockerfile and builds it into s.Target. Nothing of the build is left
// behind but the image: buildkitd is stopped (by its pid), its cache pruned (so
// containerd keeps no snapshot or lease of it) and s.Dir removed.
func Build(ctx context.Context, s Spec) (err error) {
	if err := Validate(s.Dockerfile, s.Base); err != nil {
		return err
	}
	if s.Runtime.Type == "" {
		return errors.New("image build: no runtime for RUN steps")
	}
	buildkitd, err := lookup(s.Buildkitd, "buildkitd")
	if err != nil {
		return err
	}
	buildctl, err := lookup(s.Buildctl, "buildctl")
	if err != nil {
		return err
	}
	if s.Timeout <= 0 {
		s.Timeout = DefaultTimeout
	}
	if s.Progress == nil {
		s.Progress = io.Discard
	}
	ctx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	unlock, err := lockDir(s.Dir)
	if err != nil {
		return fmt.Errorf("image build of %s: %w", s.Target, err)
	}
	defer unlock()
	// What a killed build left is no other build's (the lock says so).
	if err := os.RemoveAll(s.Dir); err != nil {
		return fmt.Errorf("image build of %s: %w", s.Target, err)
	}
	if err := os.Mkdir(s.Dir, 0o700); err != nil {
		return fmt.Errorf("image build of %s: %w", s.Target, err)
	}
	defer func() {
		if rerr := os.RemoveAll(s.Dir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("image build of %s: remove %s: %w", s.Target, s.Dir, rerr))
		}
	}()
	sock := filepath.Join(s.Dir, "sock")
	if len(sock) > 100 { // a unix socket path holds at most 107 bytes
		return fmt.Errorf("image build of %s: socket path %s is too long; use a shorter state dir", s.Target, sock)
	}
	ctxDir := filepath.Join(s.Dir, "context")
	if err := os.Mkdir(ctxDir, 0o700); err != nil {
		return fmt.Errorf("image build of %s: %w", s.Target, err)
	}
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(s.Dockerfile), 0o600); err != nil {
		return fmt.Errorf("image build of %s: %w", s.Target, err)
	}
	if s.Runtime.BinaryName != "" {
		wrapper := filepath.Join(s.Dir, "runsc")
		if err := os.WriteFile(wrapper, []byte(runscWrapper(s.Runtime.BinaryName)), 0o700); err != nil {
			return fmt.Errorf("image build of %s: %w", s.Target, err)
		}
		s.Runtime.BinaryName = wrapper
	}
	conf := filepath.Join(s.Dir, "buildkitd.toml")
	if err := os.WriteFile(conf, []byte(config(s, sock)), 0o600); err != nil {
		return fmt.Errorf("image build of %s: %w", s.Target, err)
	}
	d, err := startDaemon(ctx, buildkitd, buildctl, conf, sock, filepath.Join(s.Dir, "buildkitd.log"))
	if err != nil {
		return fmt.Errorf("image build of %s: %w", s.Target, err)
	}
	defer func() {
		// The cache lives in containerd (snapshots and leases of this namespace) and
		// only this buildkitd knows it: prune it before the daemon and its root go.
		pctx, pcancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer pcancel()
		perr := d.ctl(pctx, io.Discard, "prune", "--all")
		if perr != nil {
			perr = fmt.Errorf("prune build cache: %w", perr)
		}
		if serr := d.stop(); serr != nil {
			perr = errors.Join(perr, serr)
		}
		if perr != nil {
			err = errors.Join(err, fmt.Errorf("image build of %s: %w", s.Target, perr))
		}
	}()
	err = d.ctl(ctx, s.Progress, "build", "--progress=plain",
		"--frontend=dockerfile.v0",
		"--local=context="+ctxDir, "--local=dockerfile="+ctxDir,
		// The base comes from containerd's store: nothing is pulled.
		"--opt=image-resolve-mode=local",
		// Every RUN step gets its own empty network namespace.
		"--opt=force-network-mode=none",
		"--output=type=image,name="+s.Target+",unpack=true")
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			return fmt.Errorf("image build of %s: took longer than %s: %w", s.Target, s.Timeout, err)
		}
		return fmt.Errorf("image build of %s: %w", s.Target, err)
	}
	return nil
}

// lockDir takes the lock of build dir dir (a file next to it), so one build at a time
// uses it; the lock goes with the process.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errors.New("another image build of this bottle runs")
		}
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

// lookup finds an executable: the given path, else name on PATH.
func lookup(path, name string) (string, error) {
	if path != "" {
		return path, nil
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found: install BuildKit with `sudo scripts/install-buildkit.sh` (setup-host.sh runs it): %w", name, err)
	}
	return p, nil
}

// config is buildkitd's configuration: only the containerd worker, in the bottle's
// namespace and snapshotter, RUN steps under the bottle's gVisor runtime. (Runtime options
// cannot be given as flags.)
func config(s Spec, sock string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "root = %q\n\n[grpc]\n  address = [%q]\n\n", filepath.Join(s.Dir, "root"), "unix://"+sock)
	b.WriteString("[worker.oci]\n  enabled = false\n\n")
	fmt.Fprintf(&b, "[worker.containerd]\n  enabled = true\n  address = %q\n  namespace = %q\n  snapshotter = %q\n  gc = false\n\n",
		s.Containerd, s.Namespace, s.Snapshotter)
	fmt.Fprintf(&b, "[worker.containerd.runtime]\n  name = %q\n", s.Runtime.Type)
	if s.Runtime.BinaryName != "" || s.Runtime.Root != "" {
		b.WriteString("\n[worker.containerd.runtime.options]\n")
		if s.Runtime.BinaryName != "" {
			fmt.Fprintf(&b, "  BinaryName = %q\n", s.Runtime.BinaryName)
		}
		if s.Runtime.Root != "" {
			fmt.Fprintf(&b, "  Root = %q\n", s.Runtime.Root)
		}
	}
	return b.String()
}

// runscWrapper is the OCI binary BuildKit's RUN steps get under containerd's runc shim:
// runsc with --overlay2=none, so a step's writes reach the root file system BuildKit
// snapshots (by default runsc keeps them in an overlay inside the sandbox, and the
// step's result would be empty); and a kill of a sandbox that has already exited
// succeeds: BuildKit deletes each step's task with a kill first (containerd's
// WithProcessKill), and runsc, unlike runc, fails that kill with "sandbox is not
// running", which fails the step (internal/ctr's killAndDelete avoids the same pitfall
// for bottle's own containers).
func runscWrapper(runsc string) string {
	q := "'" + strings.ReplaceAll(runsc, "'", `'\''`) + "'"
	return `#!/bin/sh
# Written by bottle for one image build (see internal/imagebuild).
kill=
for a in "$@"; do [ "$a" = kill ] && kill=1; done
[ -n "$kill" ] || exec ` + q + ` --overlay2=none "$@"
out=$(` + q + ` --overlay2=none "$@" 2>&1) && exit 0
case $out in *"sandbox is not running"*) exit 0 ;; esac
printf '%s\n' "$out" >&2
exit 1
`
}

// daemon is a running private buildkitd.
type daemon struct {
	cmd      *exec.Cmd
	done     chan struct{}
	buildctl string
	addr     string
	log      string
}

// startDaemon starts buildkitd in a network namespace of its own, so nothing the
// daemon itself fetches (a remote ADD, an image pull, a frontend) can leave the host:
// it only talks to containerd, over a unix socket. It returns once buildkitd serves.
func startDaemon(ctx context.Context, buildkitd, buildctl, conf, sock, logPath string) (*daemon, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(buildkitd, "--config", conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start buildkitd: %w", err)
	}
	d := &daemon{cmd: cmd, done: make(chan struct{}), buildctl: buildctl, addr: "unix://" + sock, log: logPath}
	go func() {
		_ = cmd.Wait()
		close(d.done)
	}()
	deadline := time.Now().Add(startTimeout)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = d.ctl(cctx, io.Discard, "debug", "workers")
		cancel()
		if err == nil {
			return d, nil
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("buildkitd exited: %s", d.logTail())
		case <-ctx.Done():
			return nil, errors.Join(ctx.Err(), d.stop())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, errors.Join(fmt.Errorf("buildkitd did not serve within %s: %w; %s", startTimeout, err, d.logTail()), d.stop())
		}
	}
}

// ctl runs buildctl against the daemon; its output goes to out, and the end of it is
// in the error when it fails.
func (d *daemon) ctl(ctx context.Context, out io.Writer, args ...string) error {
	cmd := exec.CommandContext(ctx, d.buildctl, append([]string{"--addr", d.addr}, args...)...)
	var tail tailBuffer
	w := io.MultiWriter(out, &tail)
	cmd.Stdout, cmd.Stderr = w, w
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("buildctl %s: %w: %s", args[0], err, tail.String())
	}
	return nil
}

// stop ends buildkitd by its pid: SIGTERM, SIGKILL after stopTimeout.
func (d *daemon) stop() error {
	select {
	case <-d.done:
		return nil
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(stopTimeout):
	}
	_ = d.cmd.Process.Kill()
	select {
	case <-d.done:
		return nil
	case <-time.After(stopTimeout):
		return fmt.Errorf("buildkitd (pid %d) did not exit", d.cmd.Process.Pid)
	}
}

// logTail is the end of buildkitd's log, for an error.
func (d *daemon) logTail() string {
	data, _ := os.ReadFile(d.log)
	var t tailBuffer
	t.Write(data)
	return t.String()
}

// tailBuffer keeps the last lines written to it.
type tailBuffer struct{ b bytes.Buffer }

const tailMax = 2 << 10

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b.Write(p)
	if t.b.Len() > 2*tailMax {
		keep := t.b.Bytes()[t.b.Len()-tailMax:]
		t.b = *bytes.NewBuffer(append([]byte(nil), keep...))
	}
	return len(p), nil
}

// String is the last lines, without a leading partial line.
func (t *tailBuffer) String() string {
	data := t.b.Bytes()
	if len(data) > tailMax {
		data = data[len(data)-tailMax:]
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return strings.Join(lines, "\n")
}
