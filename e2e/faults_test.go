package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/ctr"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/netns"
	"github.com/bottle-dev/bottle/internal/testutil"
)

// sidecarRecovery bounds how long after a sidecar's sandbox is killed the bottle is
// working again (attached: restarted) or says what is wrong (detached: ps).
const sidecarRecovery = 30 * time.Second

// faultToken is a dummy credential: the egress-proxy needs one route to exist.
var faultToken = []string{"E2E_FAULT_TOKEN=not-a-secret"}

// writeFaultManifest writes agents whose bottle has both sidecars (filter, egress-proxy).
func (e *env) writeFaultManifest(agents ...string) {
	e.t.Helper()
	var b strings.Builder
	for _, a := range agents {
		fmt.Fprintf(&b, "[agents.%s]\nbottle = \"b\"\nimage = %q\ncommand = [\"/bin/sleep\", \"600\"]\n\n", a, testImage)
	}
	b.WriteString("[bottles.b]\nruntime = \"runsc-runc\"\nfilter = \"builtin\"\n\n" +
		"[[bottles.b.egress_proxy.routes]]\nhost = \"api.route.test\"\ntoken_ref = \"E2E_FAULT_TOKEN\"\n")
	if err := os.WriteFile(e.manifest, []byte(b.String()), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// sidecars are the sidecars of writeFaultManifest: host part on the internal network, port.
var sidecars = []struct {
	role       string
	host, port int
}{{names.RoleFilter, 2, 8888}, {names.RoleEgressProxy, 3, 9000}}

// reach asks, from inside the agent, a sidecar's /healthz on the internal network: the
// agent's own way out.
func (e *env) reach(id string, host, port int) string {
	e.t.Helper()
	script := fmt.Sprintf(`a=$(ip -o -4 addr show eth0 | awk '{print $4}' | cut -d/ -f1); base=${a%%.*}
if printf 'GET /healthz HTTP/1.0\r\n\r\n' | nc -w 2 "$base.%d" %d 2>/dev/null | grep -q '200 OK'; then echo REACHED; else echo BLOCKED; fi`, host, port)
	out, _, _ := e.bottle(nil, "exec", id, "--", "/bin/sh", "-c", script)
	return strings.TrimSpace(out)
}

// taskPid returns the host pid of a container's task (under runsc: its sandbox), 0 if it
// has no running task.
func (e *env) taskPid(name string) int {
	e.t.Helper()
	ctx := context.Background()
	c, err := ctr.Connect(ctx, e.address, namespace)
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	info, err := c.Info(ctx, name)
	if err != nil || info.TaskStatus != ctr.TaskRunning {
		return 0
	}
	return int(info.Pid)
}

// killSandbox SIGKILLs the sandbox of a bottle's container (found by its task pid, so
// only the test's own bottle is hit) and returns the pid.
func (e *env) killSandbox(id, role string) int {
	e.t.Helper()
	pid := e.taskPid(names.Identity(id).Container(role))
	if pid == 0 {
		e.t.Fatalf("%s of %s has no running task", role, id)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if !bytes.Contains(cmdline, []byte(id)) {
		e.t.Fatalf("task pid %d of %s is not its sandbox: %q", pid, role, cmdline)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		e.t.Fatalf("kill -9 %d (%s sandbox): %v", pid, role, err)
	}
	return pid
}

// status is a bottle's ps entry with the reason for its phase.
type status struct {
	psEntry
	Reason string `json:"reason"`
}

// status returns bottle id's ps entry.
func (e *env) status(id string) status {
	e.t.Helper()
	var list []status
	if err := json.Unmarshal([]byte(e.must("ps", "--json")), &list); err != nil {
		e.t.Fatalf("ps --json: %v", err)
	}
	for _, p := range list {
		if p.Identity == id {
			return p
		}
	}
	e.t.Fatalf("bottle %s not in ps: %+v", id, list)
	return status{}
}

// eventually polls cond until it holds or timeout passes (then the test fails with what).
func (e *env) eventually(timeout time.Duration, what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: not after %s; ps: %+v", what, timeout, e.ps())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// background runs bottle in the background; wait returns its exit status and stderr.
func (e *env) background(extraEnv []string, args ...string) (stdout *testutil.SyncBuffer, wait func(time.Duration) (int, string), cmd *exec.Cmd) {
	e.t.Helper()
	cmd = e.command(extraEnv, args...)
	var out, errOut testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	done := make(chan int, 1)
	go func() {
		err := cmd.Wait()
		var ee *exec.ExitError
		switch {
		case err == nil:
			done <- 0
		case errors.As(err, &ee):
			done <- ee.ExitCode()
		default:
			done <- -1
		}
	}()
	exited := false
	e.t.Cleanup(func() {
		if !exited {
			cmd.Process.Kill()
			<-done
		}
		if e.t.Failed() {
			e.t.Logf("bottle %v, stderr:\n%s", args, errOut.String())
		}
	})
	return &out, func(timeout time.Duration) (int, string) {
		e.t.Helper()
		select {
		case code := <-done:
			exited = true
			return code, errOut.String()
		case <-time.After(timeout):
			e.t.Fatalf("bottle %v still runs after %s; stderr:\n%s", args, timeout, errOut.String())
			return 0, ""
		}
	}, cmd
}

// oneLineError checks that a failed command's error is one line (its last) mentioning
// want: every line on stderr is a log line or the error, each starting "bottle: ", so an
// error of several lines shows as a line without that prefix.
func oneLineError(t *testing.T, errOut, want string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	for _, l := range lines {
		if !strings.HasPrefix(l, "bottle: ") {
			t.Errorf("error of more than one line; stderr:\n%s", errOut)
			return
		}
	}
	if last := lines[len(lines)-1]; !strings.Contains(last, want) || strings.Contains(last, "bottle: warn: ") || strings.Contains(last, "bottle: error: ") {
		t.Errorf("last line is not an error mentioning %q; stderr:\n%s", want, errOut)
	}
}

// TestSidecarKilledIsRestarted: an attached start restarts a sidecar whose sandbox was
// killed (fresh netns, same address) and the agent's way out works again within
// sidecarRecovery; a sidecar that keeps dying stops the bottle with a one-line reason.
func TestSidecarKilledIsRestarted(t *testing.T) {
	e := newEnv(t)
	e.writeFaultManifest("watched")
	_, wait, _ := e.background(faultToken, "start", "watched")
	id := e.waitPhase("watched", "running", 60*time.Second)
	for _, s := range sidecars {
		if got := e.reach(id, s.host, s.port); got != "REACHED" {
			t.Fatalf("agent cannot reach its %s before the kill (%s): the probe proves nothing", s.role, got)
		}
		t0 := time.Now()
		old := e.killSandbox(id, s.role)
		e.eventually(sidecarRecovery, s.role+" serves the agent again", func() bool {
			pid := e.taskPid(names.Identity(id).Container(s.role))
			return pid != 0 && pid != old && e.status(id).Phase == "running" && e.reach(id, s.host, s.port) == "REACHED"
		})
		t.Logf("%s: killed, restarted and reachable from the agent after %s", s.role, time.Since(t0).Round(100*time.Millisecond))
	}

	// A filter that keeps dying (it was restarted once above): its fourth death stops
	// the bottle, with the reason.
	var last int
	for range 3 {
		e.eventually(sidecarRecovery, "filter serves again", func() bool {
			pid := e.taskPid(names.Identity(id).Container(names.RoleFilter))
			return pid != 0 && pid != last && e.reach(id, 2, 8888) == "REACHED"
		})
		last = e.killSandbox(id, names.RoleFilter)
	}
	code, errOut := wait(60 * time.Second)
	if code == 0 {
		t.Errorf("start exited 0 after its filter kept dying")
	}
	oneLineError(t, errOut, "stopped: filter exited 137 (restarted 3 times already)")
	if st := e.status(id); st.Phase != "stopped" || !strings.Contains(st.Reason, "filter exited 137") {
		t.Errorf("ps after the bottle stopped itself: %+v", st)
	}
	if out := e.must("ps"); !strings.Contains(out, "stopped: filter exited 137") {
		t.Errorf("ps does not say why:\n%s", out)
	}
	e.must("rm", id)
	e.assertNothingLeft(id)
}

// TestSidecarKilledInDetachedBottle: nobody watches a detached bottle, but ps tells a dead
// sidecar from its task, and resume brings the bottle back.
func TestSidecarKilledInDetachedBottle(t *testing.T) {
	e := newEnv(t)
	e.writeFaultManifest("unwatched")
	if out, errOut, code := e.bottle(faultToken, "start", "--detach", "unwatched"); code != 0 {
		t.Fatalf("start: exit %d: %s %s", code, out, errOut)
	}
	id := e.identityOf("unwatched")
	for _, s := range sidecars {
		e.killSandbox(id, s.role)
		want := s.role + " exited 137"
		e.eventually(sidecarRecovery, "ps says "+want, func() bool {
			st := e.status(id)
			return st.Phase == "degraded" && strings.Contains(st.Reason, want)
		})
		if out := e.must("ps"); !strings.Contains(out, "degraded: ") || !strings.Contains(out, want) {
			t.Errorf("ps:\n%s", out)
		}
		if out, errOut, code := e.bottle(faultToken, "resume", "--detach", id); code != 0 {
			t.Fatalf("resume of a degraded bottle: exit %d: %s %s", code, out, errOut)
		}
		if st := e.status(id); st.Phase != "running" || st.Reason != "" {
			t.Errorf("after resume: %+v", st)
		}
		if got := e.reach(id, s.host, s.port); got != "REACHED" {
			t.Errorf("agent cannot reach its %s after resume: %s", s.role, got)
		}
	}
	e.must("stop", id)
	e.must("rm", id)
	e.assertNothingLeft(id)
}

// privateContainerd starts a containerd of the test's own (scripts/containerd-test.sh),
// which the test may restart or kill; the test's bottle commands use it. It returns
// its dir.
func privateContainerd(t *testing.T) string {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.ContainerdAddress(t)
	dir, err := os.MkdirTemp("/var/tmp", "bottle-ctrd.")
	if err != nil {
		t.Fatal(err)
	}
	script, err := filepath.Abs("../scripts/containerd-test.sh")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(script, "start", dir).CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		t.Fatalf("start a private containerd: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(script, "stop", dir).CombinedOutput(); err != nil {
			t.Errorf("stop the private containerd: %v\n%s", err, out)
		}
	})
	t.Setenv("BOTTLE_TEST_CONTAINERD_ADDRESS", filepath.Join(dir, "containerd.sock"))
	t.Setenv("BOTTLE_TEST_RUNC_ROOT", filepath.Join(dir, "runc"))
	return dir
}

// keepContainerd makes sure, before the test's final cleanup runs, that the private
// containerd is up again even when the test failed while it was down.
func keepContainerd(t *testing.T, dir string) {
	t.Cleanup(func() {
		if _, err := os.Stat(filepath.Join(dir, "containerd.sock")); err != nil || exec.Command("ctr", "--address", filepath.Join(dir, "containerd.sock"), "version").Run() != nil {
			containerdScript(t, "restart", dir)
		}
	})
}

func containerdScript(t *testing.T, verb, dir string) {
	t.Helper()
	if out, err := exec.Command("../scripts/containerd-test.sh", verb, dir).CombinedOutput(); err != nil {
		t.Fatalf("containerd-test.sh %s: %v\n%s", verb, err, out)
	}
}

// stopContainerd ends the private containerd (signal sig, by its pid) and waits until it
// is gone; its shims and their tasks keep running.
func stopContainerd(t *testing.T, dir string, sig syscall.Signal) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "containerd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); !bytes.Contains(cmdline, []byte(dir)) {
		t.Fatalf("pid %d is not the private containerd: %q", pid, cmdline)
	}
	syscall.Kill(pid, sig)
	for i := 0; syscall.Kill(pid, 0) == nil; i++ {
		if i > 300 {
			t.Fatalf("containerd %d still runs 30 s after %v", pid, sig)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestContainerdRestartDuringAttachedRun: containerd restarts while an attached bottle
// runs (once while the agent keeps running, once while its agent exits); the agent's
// command completes and bottle exits with its status.
func TestContainerdRestartDuringAttachedRun(t *testing.T) {
	dir := privateContainerd(t)
	e := newEnv(t)
	keepContainerd(t, dir)
	e.writeManifest("survive")
	workspace := filepath.Dir(e.manifest)
	gate := filepath.Join(workspace, "go")
	started := filepath.Join(workspace, "started")
	script := `touch /workspace/started; while [ ! -e /workspace/go ]; do sleep 0.2; done; echo survived; exit 5`
	// The record says running just before the agent's process starts: the faults below
	// wait until the agent itself runs.
	agentRuns := func() {
		t.Helper()
		for i := 0; ; i++ {
			if _, err := os.Stat(started); err == nil {
				return
			}
			if i > 600 {
				t.Fatal("the agent did not start within 60 s")
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	out, wait, _ := e.background(nil, "start", "survive", "--", "/bin/sh", "-c", script)
	id := e.waitPhase("survive", "running", 60*time.Second)
	agentRuns()
	containerdScript(t, "restart", dir)
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	code, errOut := wait(2 * time.Minute)
	if code != 5 || !strings.Contains(out.String(), "survived") {
		t.Fatalf("restart while the agent runs: exit %d (want 5), stdout %q, stderr:\n%s", code, out.String(), errOut)
	}
	if st := e.status(id); st.Phase != "stopped" {
		t.Errorf("after the run: %+v", st)
	}

	// The agent exits while containerd is down: containerd drops such a task when it
	// comes back, and its exit status with it. bottle says so, and stops the bottle.
	os.Remove(gate)
	os.Remove(started)
	out, wait, _ = e.background(nil, "resume", id)
	e.waitPhase("survive", "running", 60*time.Second)
	agentRuns()
	stopContainerd(t, dir, syscall.SIGKILL)
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // let the agent exit meanwhile
	containerdScript(t, "restart", dir)
	code, errOut = wait(2 * time.Minute)
	if code == 0 || !strings.Contains(out.String(), "survived") {
		t.Fatalf("agent exit while containerd is down: exit %d, stdout %q, stderr:\n%s", code, out.String(), errOut)
	}
	oneLineError(t, errOut, "ended while containerd was down")
	if st := e.status(id); st.Phase != "stopped" {
		t.Errorf("after the run: %+v", st)
	}

	// containerd gone for good: after ctr.ReconnectTimeout the start gives up with a
	// one-line error and takes down nothing the running tasks use.
	os.Remove(gate)
	os.Remove(started)
	_, wait, cmd := e.background(nil, "resume", id)
	e.waitPhase("survive", "running", 60*time.Second)
	agentRuns()
	stopContainerd(t, dir, syscall.SIGKILL)
	code, errOut = wait(ctr.ReconnectTimeout + time.Minute)
	if code == 0 {
		t.Errorf("start without containerd exited 0")
	}
	oneLineError(t, errOut, "lost containerd, so bottle "+id+" is left as it is")
	if files, _ := filepath.Glob(filepath.Join(netns.DefaultNetnsDir, "*", "bottle-bottle-"+id+"-*")); len(files) != 2 {
		t.Errorf("netns files of the running tasks: %v, want the agent's and the filter's", files)
	}
	containerdScript(t, "restart", dir)
	if st := e.status(id); st.Phase != "running" || !strings.Contains(st.Reason, fmt.Sprintf("(%d) is gone", cmd.Process.Pid)) {
		t.Errorf("once containerd is back: %+v", st)
	}
	e.must("stop", id)
	e.must("rm", id)
	e.assertNothingLeft(id)
}

// killTree SIGKILLs the processes whose command line contains marker, and all their
// descendants: the shims of the private containerd and their runsc processes.
func killTree(t *testing.T, marker string) {
	t.Helper()
	paths, _ := filepath.Glob("/proc/[0-9]*/stat")
	children := map[int][]int{}
	var roots []int
	for _, p := range paths {
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		stat, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], pid)
		if cmdline, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "cmdline")); bytes.Contains(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}), []byte(marker)) {
			roots = append(roots, pid)
		}
	}
	if len(roots) == 0 {
		t.Fatalf("no process of %q to kill", marker)
	}
	for len(roots) > 0 {
		pid := roots[0]
		roots = append(roots[1:], children[pid]...)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// unmountUnder unmounts every mount at or below dir, deepest first.
func unmountUnder(t *testing.T, dir string) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var mps []string
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			mps = append(mps, f[4])
		}
	}
	for i := len(mps) - 1; i >= 0; i-- {
		if err := syscall.Unmount(mps[i], syscall.MNT_DETACH); err != nil {
			t.Logf("unmount %s: %v", mps[i], err)
		}
	}
}

// TestRebootSimulation: containerd, shims and sandboxes die at once and the runtime state
// and netns files are gone, as after a reboot. ps then shows every bottle's true phase,
// cleanup removes only what is left over, and resume works.
func TestRebootSimulation(t *testing.T) {
	dir := privateContainerd(t)
	e := newEnv(t)
	keepContainerd(t, dir)
	// (No identity may contain "detach": runsc exec --detach drops every argument that
	// does, so exec in such a bottle fails; a gVisor bug.)
	e.writeManifest("rb-background", "rb-attached", "rb-stopped", "rb-abandoned")
	e.must("start", "--detach", "rb-background", "--", "/bin/sleep", "600")
	_, wait, attached := e.background(nil, "start", "rb-attached", "--", "/bin/sleep", "600")
	e.waitPhase("rb-attached", "running", 60*time.Second)
	e.must("start", "--detach", "rb-stopped", "--", "/bin/sleep", "600")
	e.must("stop", e.identityOf("rb-stopped"))
	cmd := e.command([]string{"BOTTLE_TEST_KILL_AT=sidecars"}, "start", "rb-abandoned", "--", "/bin/true")
	if out, err := cmd.CombinedOutput(); !killedBySignal(err) {
		t.Fatalf("abandoned start was not killed (%v): %s", err, out)
	}
	kept := []string{e.identityOf("rb-background"), e.identityOf("rb-attached"), e.identityOf("rb-stopped")}
	abandoned := e.identityOf("rb-abandoned")

	// The "reboot".
	attached.Process.Kill()
	wait(30 * time.Second)
	stopContainerd(t, dir, syscall.SIGKILL)
	killTree(t, "-address "+filepath.Join(dir, "containerd.sock"))
	for _, d := range []string{filepath.Join(dir, "state"), filepath.Join(dir, "runc")} {
		unmountUnder(t, d)
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(d, 0o711); err != nil { // as the boot makes /run/containerd, /run/runc
			t.Fatal(err)
		}
	}
	for _, id := range []string{kept[0], kept[1], abandoned} { // the stopped one has none
		files, _ := filepath.Glob(filepath.Join(netns.DefaultNetnsDir, "*", "bottle-bottle-"+id+"-*"))
		if len(files) == 0 {
			t.Errorf("no netns files of %s to remove: the simulation misses them", id)
		}
		for _, f := range files {
			syscall.Unmount(f, syscall.MNT_DETACH)
			os.Remove(f)
		}
	}
	containerdScript(t, "restart", dir)

	for _, id := range kept {
		if st := e.status(id); st.Phase != "stopped" {
			t.Errorf("after the reboot, %s: %+v; want stopped", id, st)
		}
	}
	if st := e.status(abandoned); st.Phase != "starting" || !strings.Contains(st.Reason, "abandoned") {
		t.Errorf("after the reboot, abandoned start %s: %+v", abandoned, st)
	}
	out := e.must("cleanup")
	if !strings.Contains(out, "removed 1 bottles: "+abandoned) || !strings.Contains(out, "stopped 2 bottles nobody looked after") {
		t.Errorf("cleanup did not remove just the abandoned start and settle the two that ran:\n%s", out)
	}
	e.assertNothingLeft(abandoned)
	for _, id := range kept {
		if st := e.status(id); st.Phase != "stopped" {
			t.Errorf("after cleanup, %s: %+v", id, st)
		}
		e.must("resume", "--detach", id)
		if st := e.status(id); st.Phase != "running" {
			t.Errorf("after resume, %s: %+v", id, st)
		}
		e.must("exec", id, "--", "/bin/true")
		e.must("stop", id)
		e.must("rm", id)
	}
	e.assertNothingLeft(kept...)
}

// TestFullStateDisk: a tmpfs state dir that is full at each write of a start (one more
// inode, then one more page each round) gives a one-line error and leaves nothing; a stop
// on a full disk takes the tasks down although it cannot record it, and ps says stopped.
func TestFullStateDisk(t *testing.T) {
	e := newEnv(t)
	e.writeManifest("full")
	e.stateDir = filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(e.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	mounted := false
	mount := func(opts string) {
		t.Helper()
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", e.stateDir).CombinedOutput(); err != nil {
			t.Fatalf("mount tmpfs %s: %v: %s", opts, err, out)
		}
		mounted = true
	}
	unmount := func() {
		t.Helper()
		if mounted {
			if err := syscall.Unmount(e.stateDir, 0); err != nil {
				t.Fatalf("unmount %s: %v", e.stateDir, err)
			}
			mounted = false
		}
	}
	t.Cleanup(func() {
		if mounted {
			e.bottle(nil, "cleanup", "--all")
			unmount()
		}
	})

	// Full before the start: every write fails, the first being the sidecar image's hash
	// cache (best effort, it must not leave its temporary file either).
	mount("size=16m")
	fill(t, e.stateDir)
	_, errOut, code := e.bottle(nil, "start", "--detach", "full", "--", "/bin/sleep", "600")
	if code == 0 {
		t.Fatal("start on a full disk succeeded")
	}
	oneLineError(t, errOut, "no space left on device")
	unfill(e.stateDir)
	if left := stateLeftovers(t, e.stateDir); len(left) > 0 {
		t.Errorf("start on a full disk failed and left %v in the state dir", left)
	}
	unmount()

	// One more inode each round, then (with inodes to spare) one more page: each round
	// the start fails at a later write, until it succeeds.
	var id string
	for _, sweep := range []string{"size=16m,nr_inodes=%d", "nr_inodes=1000,size=%d"} {
		id = ""
		for n := 1; n <= 200 && id == ""; n++ {
			arg := n
			if strings.HasSuffix(sweep, "size=%d") {
				arg = n * os.Getpagesize()
			}
			opts := fmt.Sprintf(sweep, arg)
			mount(opts)
			// --debug: a start that fails before its record names its identity only there.
			out, errOut, code := e.bottle(nil, "--debug", "start", "--detach", "full", "--", "/bin/sleep", "600")
			if code == 0 {
				t.Logf("start succeeds with %s", opts)
				id = e.identityOf("full")
				continue
			}
			oneLineError(t, errOut, "no space left on device")
			if !strings.Contains(errOut, "no space left") {
				t.Errorf("%s: start failed for another reason: %s", opts, errOut)
			}
			failed := ""
			for _, l := range strings.Split(errOut, "\n") {
				if _, rest, ok := strings.Cut(l, "identity="); ok && failed == "" {
					failed = strings.Fields(rest)[0]
				}
			}
			if failed == "" {
				t.Fatalf("%s: no identity in the start's log:\n%s %s", opts, out, errOut)
			}
			e.assertNothingLeft(failed)
			if left := stateLeftovers(t, e.stateDir); len(left) > 0 {
				t.Errorf("%s: start failed (%s) and left %v in the state dir", opts, strings.TrimSpace(errOut), left)
			}
			unmount()
		}
		if id == "" {
			t.Fatalf("start never succeeded (%s)", sweep)
		}
		if sweep != "nr_inodes=1000,size=%d" {
			e.must("rm", "--force", id)
			e.assertNothingLeft(id)
			unmount()
		}
	}

	// Fill what is left: every page and every inode.
	fill(t, e.stateDir)
	for i := 0; ; i++ {
		if err := os.WriteFile(filepath.Join(e.stateDir, fmt.Sprintf("filler-%d", i)), nil, 0o600); err != nil {
			break
		}
	}
	_, errOut, code = e.bottle(nil, "stop", id)
	if code == 0 {
		t.Errorf("stop on a full disk claims it recorded the stop")
	}
	oneLineError(t, errOut, "is stopped, but recording that failed")
	if st := e.status(id); st.Phase != "stopped" || st.Containers["agent"] != "none" || st.Containers["filter"] != "none" {
		t.Errorf("ps after a stop on a full disk: %+v", st)
	}
	unfill(e.stateDir)
	e.must("rm", id)
	e.assertNothingLeft(id)
}

// fill takes every free page of the file system of dir (a file dir/filler*).
func fill(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for err == nil {
		_, err = f.Write(make([]byte, 1<<16))
	}
	for n := 1 << 15; n > 0; n /= 2 { // the last partial page
		f.Write(make([]byte, n))
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("fill %s: %v", dir, err)
	}
}

func unfill(dir string) {
	files, _ := filepath.Glob(filepath.Join(dir, "filler*"))
	for _, f := range files {
		os.Remove(f)
	}
}

// stateLeftovers lists what is in a state dir besides its empty skeleton.
func stateLeftovers(t *testing.T, dir string) []string {
	t.Helper()
	var left []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(dir, p)
		switch {
		case err != nil || rel == ".":
		case d.IsDir() && (rel == "bottles" || rel == "slots" || rel == "audit"):
		case rel == "sidecar-image.hash":
		default:
			left = append(left, rel)
		}
		return nil
	})
	return left
}
