package ctr

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/bottle-dev/bottle/internal/ociarchive"
	"github.com/bottle-dev/bottle/internal/testutil"
)

const (
	testNamespace = "bottle-ctrtest"
	busyboxRef    = "bottle.test/busybox:ctr-e2e"
	hostBusybox   = "/bin/busybox"
)

// e2e holds a connected client, the resolved runtime and the imported test image.
type e2e struct {
	c  *Client
	rt Runtime
}

// setupE2E connects to the harness's private containerd, resolves runsc-runc and
// imports the busybox test image (removed again at the end of the test).
func setupE2E(t testing.TB) *e2e {
	t.Helper()
	testutil.RequireRoot(t)
	addr := testutil.ContainerdAddress(t)
	rt, err := DetectRuntime(string(HandlerRunscRunc), "", false)
	if err != nil {
		testutil.Missing(t, "static runsc: %v", err)
	}
	if _, err := os.Stat(hostBusybox); err != nil || checkStatic(hostBusybox) != nil {
		testutil.Missing(t, "static %s (Debian package busybox-static)", hostBusybox)
	}
	ctx := context.Background()
	var opts []Option
	// The harness gives tests a private runc/runsc state directory.
	if root := os.Getenv("BOTTLE_TEST_RUNC_ROOT"); root != "" {
		opts = append(opts, WithRuncRoot(root))
	}
	c, err := Connect(ctx, addr, testNamespace, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if v, err := c.Version(ctx); err != nil || !strings.HasPrefix(v, "2.") {
		t.Fatalf("containerd version %q, %v: bottle needs containerd v2", v, err)
	}

	t.Cleanup(func() {
		if err := c.removeImage(ctx, busyboxRef); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	start := time.Now()
	if err := c.ImportImage(ctx, ociarchive.BusyboxImage(busyboxRef, hostBusybox), nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("import+unpack of the busybox image (%s snapshotter): %v", c.snapshotter, time.Since(start))
	return &e2e{c: c, rt: rt}
}

func randomName(t testing.TB) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "bottle-ctrtest-" + hex.EncodeToString(b)
}

// create makes a container from the busybox image running args and deletes it at the
// end of the test.
func (e *e2e) create(t testing.TB, labels map[string]string, spec *specs.Spec) string {
	t.Helper()
	name := randomName(t)
	t.Cleanup(func() {
		if err := e.c.Delete(context.Background(), name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if err := e.c.Create(context.Background(), ContainerSpec{
		Name: name, Image: busyboxRef, Labels: labels, Spec: spec, Runtime: e.rt,
	}); err != nil {
		t.Fatal(err)
	}
	return name
}

// testSpec is a minimal hand-built OCI spec: new pid/ipc/uts/mount/network namespaces
// (no network path: runsc makes an empty one with loopback only).
func testSpec(terminal bool, args ...string) *specs.Spec {
	caps := []string{
		"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_SETGID", "CAP_SETUID",
		"CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_KILL", "CAP_AUDIT_WRITE",
	}
	return &specs.Spec{
		Version:  specs.Version,
		Hostname: "bottle-test",
		Process: &specs.Process{
			Terminal:        terminal,
			Args:            args,
			Env:             []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "BOTTLE_TEST=yes"},
			Cwd:             "/tmp",
			Capabilities:    &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps},
			NoNewPrivileges: true,
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace},
			},
			MaskedPaths:   []string{"/proc/kcore", "/proc/keys", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/sys", "/proc/sysrq-trigger"},
		},
	}
}

// assertGone checks through the client that no container, task or snapshot of name is left.
func (e *e2e) assertGone(t *testing.T, name string) {
	t.Helper()
	ctx := e.c.ctx(context.Background())
	if _, err := e.c.c.ContainerService().Get(ctx, name); !errdefs.IsNotFound(err) {
		t.Errorf("container %s still exists (%v)", name, err)
	}
	tasks, err := e.c.tasks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tasks[name]; ok {
		t.Errorf("task %s still exists", name)
	}
	if _, err := e.c.c.SnapshotService(e.c.snapshotter).Stat(ctx, name+SnapshotSuffix); !errdefs.IsNotFound(err) {
		t.Errorf("snapshot %s still exists (%v)", name+SnapshotSuffix, err)
	}
}

func TestE2ERunOutputAndExitCode(t *testing.T) {
	e := setupE2E(t)
	ctx := context.Background()
	start := time.Now()
	name := e.create(t, map[string]string{"bottle.role": "test"},
		testSpec(false, "sh", "-c", `echo hello; echo oops >&2; echo "$BOTTLE_TEST $(pwd) $(hostname)"; exit 7`))
	created := time.Now()
	var stdout, stderr bytes.Buffer
	code, err := e.c.Run(ctx, name, IO{Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("create %v + run %v under %s", created.Sub(start), time.Since(created), e.rt)
	if code != 7 {
		t.Errorf("exit code %d, want 7", code)
	}
	if stdout.String() != "hello\nyes /tmp bottle-test\n" || stderr.String() != "oops\n" {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
	info, err := e.c.Info(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if info.TaskStatus != TaskNone || info.Image != busyboxRef || info.Runtime != RuntimeTypeRunc || info.Labels["bottle.role"] != "test" {
		t.Errorf("after Run: %+v", info)
	}
	// The container can be run again (a fresh task).
	code, err = e.c.Run(ctx, name, IO{Stdout: &stdout})
	if err != nil || code != 7 {
		t.Fatalf("second run: %d, %v", code, err)
	}
	if err := e.c.Delete(ctx, name); err != nil {
		t.Fatal(err)
	}
	e.assertGone(t, name)
	// Deleting again is fine.
	if err := e.c.Delete(ctx, name); err != nil {
		t.Fatalf("second delete: %v", err)
	}
}

func TestE2ERunsUnderGVisor(t *testing.T) {
	e := setupE2E(t)
	name := e.create(t, nil, testSpec(false, "dmesg"))
	var out bytes.Buffer
	code, err := e.c.Run(context.Background(), name, IO{Stdout: &out, Stderr: &out})
	if err != nil || code != 0 {
		t.Fatalf("dmesg: %d, %v: %s", code, err, out.String())
	}
	if !strings.Contains(out.String(), "gVisor") {
		t.Fatalf("the container's kernel log does not come from gVisor:\n%s", out.String())
	}
}

func TestE2EFreshNetnsHasOnlyLoopback(t *testing.T) {
	e := setupE2E(t)
	name := e.create(t, nil, testSpec(false, "sh", "-c", "cat /proc/net/dev"))
	var out bytes.Buffer
	code, err := e.c.Run(context.Background(), name, IO{Stdout: &out, Stderr: &out})
	if err != nil || code != 0 {
		t.Fatalf("run: %d, %v: %s", code, err, out.String())
	}
	// runsc copies only interfaces that are up; in a fresh netns even lo is down, so
	// the sandbox has no interface at all. Either way nothing but lo may be there.
	for _, line := range strings.Split(out.String(), "\n") {
		if i := strings.Index(line, ":"); i > 0 {
			if iface := strings.TrimSpace(line[:i]); iface != "lo" {
				t.Fatalf("interface %q in a fresh netns:\n%s", iface, out.String())
			}
		}
	}
	if !strings.Contains(out.String(), "Receive") {
		t.Fatalf("/proc/net/dev not read:\n%s", out.String())
	}
}

func TestE2EStdinEOF(t *testing.T) {
	e := setupE2E(t)
	name := e.create(t, nil, testSpec(false, "sh", "-c", "cat; echo done"))
	var out bytes.Buffer
	code, err := e.c.Run(context.Background(), name, IO{Stdin: strings.NewReader("from stdin\n"), Stdout: &out})
	if err != nil || code != 0 {
		t.Fatalf("run: %d, %v", code, err)
	}
	if out.String() != "from stdin\ndone\n" {
		t.Fatalf("stdout %q", out.String())
	}
}

// openPTY returns a pseudo-terminal pair (master, slave).
func openPTY(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		testutil.Missing(t, "/dev/ptmx: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	slave, err := os.OpenFile(filepath.Join("/dev/pts", itoa(int(n))), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slave.Close() })
	return master, slave
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func TestE2ETTYRawModeAndSize(t *testing.T) {
	e := setupE2E(t)
	master, slave := openPTY(t)
	if err := unix.IoctlSetWinsize(int(slave.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 41, Col: 103}); err != nil {
		t.Fatal(err)
	}
	before, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	// Keep the master drained so nothing blocks.
	go func() { _, _ = bytesDiscard(master) }()

	name := e.create(t, nil, testSpec(true, "sh", "-c", "test -t 0 && test -t 1 && echo tty; stty size; exit 3"))
	var out syncBuffer
	code, err := e.c.Run(context.Background(), name, IO{Stdin: slave, Stdout: &out, TTY: true})
	if err != nil || code != 3 {
		t.Fatalf("run: %d, %v: %q", code, err, out.String())
	}
	got := strings.ReplaceAll(out.String(), "\r", "")
	if !strings.Contains(got, "tty\n") || !strings.Contains(got, "41 103") {
		t.Fatalf("TTY output %q (want tty and size 41 103)", got)
	}
	after, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if after.Lflag != before.Lflag || after.Iflag != before.Iflag || after.Oflag != before.Oflag {
		t.Fatalf("terminal not restored: before %+v after %+v", before, after)
	}
	// Run with TTY against a spec without a terminal is refused up front.
	name2 := e.create(t, nil, testSpec(false, "true"))
	if _, err := e.c.Run(context.Background(), name2, IO{TTY: true}); err == nil || !strings.Contains(err.Error(), name2) {
		t.Fatalf("TTY mismatch: %v", err)
	}
}

func bytesDiscard(f *os.File) (int64, error) {
	buf := make([]byte, 4096)
	var n int64
	for {
		m, err := f.Read(buf)
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the IO goroutine and the test, with a hook
// that fires when a marker appears.
type syncBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	marker string
	seen   chan struct{}
	once   sync.Once
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.buf.Write(p)
	if s.marker != "" && strings.Contains(s.buf.String(), s.marker) {
		s.once.Do(func() { close(s.seen) })
	}
	return n, err
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func TestE2ESignalForwarding(t *testing.T) {
	e := setupE2E(t)
	name := e.create(t, nil, testSpec(false, "sh", "-c", `trap 'echo got TERM; exit 42' TERM; echo ready; sleep 100 & wait`))
	out := &syncBuffer{marker: "ready", seen: make(chan struct{})}
	go func() {
		select {
		case <-out.seen:
			// Run relays SIGTERM to the container instead of letting it end this process.
			_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
		case <-time.After(30 * time.Second):
		}
	}()
	code, err := e.c.Run(context.Background(), name, IO{Stdout: out})
	if err != nil {
		t.Fatal(err)
	}
	if code != 42 || !strings.Contains(out.String(), "got TERM") {
		t.Fatalf("exit %d, output %q", code, out.String())
	}
}

func TestE2EDetachedLogsExecStopListDelete(t *testing.T) {
	e := setupE2E(t)
	ctx := context.Background()
	identity := "ctrtest-" + randomName(t)[len("bottle-ctrtest-"):]
	labels := map[string]string{"bottle.identity": identity, "bottle.role": "agent", "bottle.agent": "ctrtest"}
	name := e.create(t, labels, testSpec(false, "sh", "-c",
		`trap 'echo term; exit 3' TERM; echo started; while true; do sleep 0.2; done`))
	other := e.create(t, map[string]string{"bottle.identity": identity, "bottle.role": "filter"}, testSpec(false, "true"))

	logPath := filepath.Join(t.TempDir(), "logs", name+".log")
	pid, err := e.c.Start(ctx, name, logPath)
	if err != nil {
		t.Fatal(err)
	}
	if pid == 0 {
		t.Error("Start returned pid 0")
	}
	waitForFile(t, logPath, "started\n")

	if _, err := e.c.Start(ctx, name, logPath); err == nil || !errdefs.IsFailedPrecondition(err) {
		t.Errorf("second Start of a running container: %v", err)
	}

	list, err := e.c.List(ctx, map[string]string{"bottle.identity": identity, "bottle.role": "agent"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != name || list[0].TaskStatus != TaskRunning || list[0].Pid != pid || list[0].Labels["bottle.agent"] != "ctrtest" {
		t.Fatalf("List by labels: %+v", list)
	}
	list, err = e.c.List(ctx, map[string]string{"bottle.identity": identity})
	if err != nil || len(list) != 2 {
		t.Fatalf("List by identity: %+v, %v", list, err)
	}
	left, err := e.c.Leftovers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, ci := range left.Containers {
		if ci.Name == name || ci.Name == other {
			found++
		}
	}
	if found != 2 {
		t.Errorf("Leftovers misses the test containers: %+v", left)
	}

	var out bytes.Buffer
	code, err := e.c.Exec(ctx, name, []string{"sh", "-c", `echo "$BOTTLE_TEST $(pwd)"; exit 5`}, IO{Stdout: &out, Stderr: &out})
	if err != nil || code != 5 || out.String() != "yes /tmp\n" {
		t.Fatalf("exec: %d, %v, %q", code, err, out.String())
	}

	start := time.Now()
	code, err = e.c.Stop(ctx, name, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stop (SIGTERM honoured): %v", time.Since(start))
	if code != 3 {
		t.Errorf("exit code after SIGTERM %d, want 3", code)
	}
	waitForFile(t, logPath, "started\nterm\n")
	if info, err := e.c.Info(ctx, name); err != nil || info.TaskStatus != TaskNone {
		t.Errorf("after Stop: %+v, %v", info, err)
	}
	// Stop without a task is fine.
	if _, err := e.c.Stop(ctx, name, time.Second); err != nil {
		t.Errorf("Stop without task: %v", err)
	}
	for _, n := range []string{name, other} {
		if err := e.c.Delete(ctx, n); err != nil {
			t.Fatal(err)
		}
		e.assertGone(t, n)
	}
	list, err = e.c.List(ctx, map[string]string{"bottle.identity": identity})
	if err != nil || len(list) != 0 {
		t.Fatalf("List after delete: %+v, %v", list, err)
	}
}

func TestE2EStopEscalatesToSIGKILL(t *testing.T) {
	e := setupE2E(t)
	ctx := context.Background()
	name := e.create(t, nil, testSpec(false, "sh", "-c", `trap '' TERM; echo started; while true; do sleep 0.2; done`))
	logPath := filepath.Join(t.TempDir(), "out.log")
	if _, err := e.c.Start(ctx, name, logPath); err != nil {
		t.Fatal(err)
	}
	waitForFile(t, logPath, "started\n")
	start := time.Now()
	code, err := e.c.Stop(ctx, name, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stop with SIGKILL escalation: %v, exit %d", time.Since(start), code)
	if code != 128+int(syscall.SIGKILL) {
		t.Errorf("exit code %d, want %d", code, 128+int(syscall.SIGKILL))
	}
	// Delete of a container with a running task kills it too.
	if _, err := e.c.Start(ctx, name, logPath); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Delete(ctx, name); err != nil {
		t.Fatal(err)
	}
	e.assertGone(t, name)
}

func TestE2EImageEnvAndSidecarImage(t *testing.T) {
	e := setupE2E(t)
	ctx := context.Background()
	cfg, err := e.c.ImageConfig(ctx, busyboxRef)
	env := cfg.Env
	if err != nil || len(env) != 1 || !strings.HasPrefix(env[0], "PATH=") {
		t.Fatalf("ImageConfig: %v, %v", env, err)
	}
	if _, err := e.c.ImageConfig(ctx, "bottle.test/missing:1"); !errdefs.IsNotFound(err) {
		t.Errorf("ImageConfig of a missing image: %v", err)
	}
	if err := e.c.ensureImage(ctx, "bottle.test/missing:1"); !errdefs.IsNotFound(err) {
		t.Errorf("EnsureImage of a missing image: %v", err)
	}

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var reports []Progress // the first start of a bottle version reports the write
	e.c.progress = func(p Progress) { reports = append(reports, p) }
	defer func() { e.c.progress = nil }()
	start := time.Now()
	hashCache := filepath.Join(t.TempDir(), "hash")
	ref, err := e.c.ensureSidecarImage(ctx, "test", exe, ociarchive.HostCABundle, hashCache)
	if err != nil {
		if _, serr := os.Stat(ociarchive.HostCABundle); serr != nil {
			testutil.Missing(t, "CA bundle %s", ociarchive.HostCABundle)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.c.removeImage(ctx, ref); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	t.Logf("sidecar image %s from a %s executable: %v", ref, fileSize(exe), time.Since(start))
	if !strings.HasPrefix(ref, SidecarRepository+":test-") {
		t.Errorf("sidecar ref %s", ref)
	}
	// The layer is compressed: the archive is smaller than the executable.
	if n := len(reports); n < 3 || reports[0].Step != "writing image "+ref || reports[n-2].Step != "unpacking "+ref ||
		!reports[n-1].Finished || reports[n-1].Failed || reports[n-1].Done < 1<<20 {
		t.Errorf("progress of the sidecar image write (%d reports): %+v", n, reports[max(0, n-3):])
	}
	reports = nil
	start = time.Now()
	again, err := e.c.ensureSidecarImage(ctx, "test", exe, ociarchive.HostCABundle, hashCache)
	if err != nil || again != ref {
		t.Fatalf("second EnsureSidecarImage: %s, %v", again, err)
	}
	if len(reports) != 0 {
		t.Errorf("an image already present reported progress: %+v", reports)
	}
	t.Logf("sidecar image already present: %v", time.Since(start))
	cfg, err = e.c.ImageConfig(ctx, ref)
	if err != nil || !strings.Contains(strings.Join(cfg.Env, " "), "SSL_CERT_FILE="+ociarchive.HostCABundle) {
		t.Fatalf("sidecar env %v, %v", cfg.Env, err)
	}
	if len(cfg.Entrypoint) != 1 || cfg.Entrypoint[0] != ociarchive.SidecarExecutablePath {
		t.Fatalf("sidecar config %+v, %v", cfg, err)
	}
	if err := e.c.ensureImage(ctx, ref); err != nil {
		t.Fatal(err)
	}
	// The image works when its executable is static (CGO_ENABLED=0, like bottle's
	// release build): run the test binary itself in it, listing no tests.
	if checkStatic(exe) != nil {
		t.Logf("test binary %s is dynamic (build with CGO_ENABLED=0 to also run it in the sidecar image)", exe)
		return
	}
	spec := testSpec(false, ociarchive.SidecarExecutablePath, "-test.run=^$")
	name := randomName(t)
	t.Cleanup(func() {
		if err := e.c.Delete(ctx, name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if err := e.c.Create(ctx, ContainerSpec{Name: name, Image: ref, Spec: spec, Runtime: e.rt}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	code, err := e.c.Run(ctx, name, IO{Stdout: &out, Stderr: &out})
	if err != nil || code != 0 || !strings.Contains(out.String(), "PASS") {
		t.Fatalf("sidecar image run: %d, %v: %s", code, err, out.String())
	}
}

func TestE2ECreateTwiceKeepsTheFirst(t *testing.T) {
	e := setupE2E(t)
	ctx := context.Background()
	name := e.create(t, nil, testSpec(false, "sh", "-c", "echo first"))
	err := e.c.Create(ctx, ContainerSpec{Name: name, Image: busyboxRef, Spec: testSpec(false, "true"), Runtime: e.rt})
	if !errdefs.IsAlreadyExists(err) || !strings.Contains(err.Error(), name) {
		t.Fatalf("second Create: %v", err)
	}
	var out bytes.Buffer
	if code, err := e.c.Run(ctx, name, IO{Stdout: &out}); err != nil || code != 0 || out.String() != "first\n" {
		t.Fatalf("first container after a failed duplicate: %d, %v, %q", code, err, out.String())
	}
	if err := e.c.Create(ctx, ContainerSpec{Name: "bad name", Image: busyboxRef, Spec: testSpec(false, "true"), Runtime: e.rt}); err == nil {
		t.Fatal("invalid name accepted")
	}
	missing := randomName(t)
	err = e.c.Create(ctx, ContainerSpec{Name: missing, Image: "bottle.test/missing:1", Spec: testSpec(false, "true"), Runtime: e.rt})
	if !errdefs.IsNotFound(err) {
		t.Fatalf("Create from a missing image: %v", err)
	}
	e.assertGone(t, missing)
}

func TestE2ELeftoverSnapshot(t *testing.T) {
	e := setupE2E(t)
	ctx := e.c.ctx(context.Background())
	key := randomName(t) + SnapshotSuffix
	if _, err := e.c.c.SnapshotService(e.c.snapshotter).Prepare(ctx, key, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.c.RemoveSnapshot(context.Background(), key) })
	left, err := e.c.Leftovers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(left.Snapshots, key) || left.Empty() {
		t.Fatalf("Leftovers misses snapshot %s: %+v", key, left)
	}
	if err := e.c.RemoveSnapshot(ctx, key); err != nil {
		t.Fatal(err)
	}
	if left, err = e.c.Leftovers(ctx); err != nil || slices.Contains(left.Snapshots, key) {
		t.Fatalf("after RemoveSnapshot: %+v, %v", left, err)
	}
}

func TestE2ERunCancelledKillsTask(t *testing.T) {
	e := setupE2E(t)
	name := e.create(t, nil, testSpec(false, "sleep", "100"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	_, err := e.c.Run(ctx, name, IO{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run with an expiring context: %v", err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("Run returned after %v", d)
	}
	if info, err := e.c.Info(context.Background(), name); err != nil || info.TaskStatus != TaskNone {
		t.Fatalf("after cancelled Run: %+v, %v", info, err)
	}
}

// BenchmarkCreateRunTrue measures create + run + delete of /bin/true under runsc-runc.
func BenchmarkCreateRunTrue(b *testing.B) {
	e := setupE2E(b)
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		name := randomName(b)
		if err := e.c.Create(ctx, ContainerSpec{Name: name, Image: busyboxRef, Spec: testSpec(false, "/bin/true"), Runtime: e.rt}); err != nil {
			b.Fatal(err)
		}
		code, err := e.c.Run(ctx, name, IO{})
		if derr := e.c.Delete(ctx, name); derr != nil {
			b.Fatal(derr)
		}
		if err != nil || code != 0 {
			b.Fatalf("/bin/true: %d, %v", code, err)
		}
	}
}

func fileSize(p string) string {
	st, err := os.Stat(p)
	if err != nil {
		return "?"
	}
	return itoa(int(st.Size()>>20)) + " MiB"
}

func waitForFile(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never contained %q; has %q", path, want, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestE2EUpdateKeepsSnapshot(t *testing.T) {
	e := setupE2E(t)
	ctx := context.Background()
	persistent := func(s *specs.Spec) *specs.Spec {
		s.Annotations = map[string]string{"dev.gvisor.flag.overlay2": "none"} // as plan sets it for agents
		return s
	}
	name := e.create(t, map[string]string{"bottle.role": "agent", "old": "x"}, persistent(testSpec(false, "sh", "-c", "echo kept > /root/state")))
	if code, err := e.c.Run(ctx, name, IO{}); err != nil || code != 0 {
		t.Fatalf("first run: %d, %v", code, err)
	}
	cs := ContainerSpec{Name: name, Image: busyboxRef, Labels: map[string]string{"bottle.role": "agent"}, Spec: persistent(testSpec(false, "cat", "/root/state")), Runtime: e.rt}
	if err := e.c.Update(ctx, cs); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if code, err := e.c.Run(ctx, name, IO{Stdout: &out}); err != nil || code != 0 || out.String() != "kept\n" {
		t.Fatalf("run after update: %d, %v, %q", code, err, out.String())
	}
	info, err := e.c.Info(ctx, name)
	if err != nil || info.Labels["old"] != "" || info.Labels["bottle.role"] != "agent" {
		t.Fatalf("labels after update: %+v, %v", info, err)
	}
	cs.Image = "bottle.test/other:1"
	if err := e.c.Update(ctx, cs); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("Update to another image: %v", err)
	}
}

func TestE2EDeleteTaskKeepsContainer(t *testing.T) {
	e := setupE2E(t)
	ctx := context.Background()
	name := e.create(t, nil, testSpec(false, "sleep", "100"))
	if _, err := e.c.Start(ctx, name, filepath.Join(t.TempDir(), "log")); err != nil {
		t.Fatal(err)
	}
	if root := os.Getenv("BOTTLE_TEST_RUNC_ROOT"); root != "" {
		// runsc keeps <root>/<namespace>/<id>_sandbox:<id>.state and similar files.
		matches, _ := filepath.Glob(filepath.Join(root, testNamespace, "*"+name+"*"))
		if len(matches) == 0 {
			entries, _ := os.ReadDir(filepath.Join(root, testNamespace))
			t.Errorf("no runsc state for %s under the private runc root %s: %v", name, root, entries)
		}
	}
	if err := e.c.DeleteTask(ctx, name); err != nil {
		t.Fatal(err)
	}
	info, err := e.c.Info(ctx, name)
	if err != nil || info.TaskStatus != TaskNone {
		t.Fatalf("after DeleteTask: %+v, %v", info, err)
	}
	if err := e.c.DeleteTask(ctx, name); err != nil {
		t.Fatalf("DeleteTask without a task: %v", err)
	}
	if err := e.c.DeleteTask(ctx, randomName(t)); err != nil {
		t.Fatalf("DeleteTask of a missing container: %v", err)
	}
}
