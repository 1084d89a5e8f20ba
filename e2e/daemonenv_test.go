package e2e

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/testutil"
)

// environHolders returns "pid cmdline" of every process except skip whose environ holds
// marker.
func environHolders(marker string, skip map[int]bool) []string {
	var out []string
	paths, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, p := range paths {
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if skip[pid] || pid == os.Getpid() {
			continue
		}
		if data, err := os.ReadFile(p); err == nil && bytes.Contains(data, []byte(marker)) {
			cmdline, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "cmdline"))
			if preExecChild(pid, cmdline, skip) {
				continue
			}
			out = append(out, fmt.Sprintf("%d %s", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
		}
	}
	return out
}

// preExecChild reports whether pid is a child of a skipped process caught between its
// clone and its execve: Go forks with CLONE_VM, so until the exec the child's environ
// and cmdline are its parent's memory (CI caught one); after the exec they are its own.
func preExecChild(pid int, cmdline []byte, skip map[int]bool) bool {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	var ppid int
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "PPid:"); ok {
			ppid, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if !skip[ppid] {
		return false
	}
	parentCmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", ppid))
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	parentExe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", ppid))
	return bytes.Equal(cmdline, parentCmdline) && exe != "" && exe == parentExe
}

// TestCredentialNotInDaemonEnvironments starts a private containerd from an environment
// holding a credential (as `make run` does with CLAUDE_CODE_OAUTH_TOKEN exported), runs a
// bottle whose route uses that credential, and scans every process's environ while the
// bottle starts and runs: the daemon, its shims, runsc and bottle's own children
// (iptables, CNI plugins) must not hold it. Only the invoking bottle process may.
func TestCredentialNotInDaemonEnvironments(t *testing.T) {
	testutil.RequireRoot(t)
	marker := fmt.Sprintf("sk-env-marker-%d-%d", time.Now().UnixNano(), os.Getpid())
	dir, err := os.MkdirTemp("/var/tmp", "bottle-envd.")
	if err != nil {
		t.Fatal(err)
	}
	script, _ := filepath.Abs("../scripts/containerd-test.sh")
	daemonEnv := []string{"PATH=" + os.Getenv("PATH"), "E2E_ENV_TOKEN=" + marker}
	start := exec.Command(script, "start", dir)
	start.Env = daemonEnv
	if out, err := start.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		t.Fatalf("start a private containerd: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		stop := exec.Command(script, "stop", dir)
		if out, err := stop.CombinedOutput(); err != nil {
			t.Errorf("stop the private containerd: %v\n%s", err, out)
		}
	})
	// newEnv's final cleanup is registered after the daemon's stop, so it runs first.
	e := newEnv(t)
	e.address = filepath.Join(dir, "containerd.sock")
	t.Setenv("BOTTLE_TEST_RUNC_ROOT", filepath.Join(dir, "runc"))
	importTestImage(t, e.address)

	// Control: the scanner finds the marker in a process that holds it.
	control := exec.Command("sleep", "30")
	control.Env = daemonEnv
	if err := control.Start(); err != nil {
		t.Fatal(err)
	}
	found := environHolders(marker, nil)
	control.Process.Kill()
	control.Wait()
	if len(found) != 1 || !strings.HasPrefix(found[0], strconv.Itoa(control.Process.Pid)+" ") {
		t.Fatalf("scanner control: found %q, want only the sleep process %d", found, control.Process.Pid)
	}

	manifest := fmt.Sprintf(`[agents.envscan]
bottle = "b"
image = %q
command = ["/bin/sleep", "600"]

[bottles.b]
runtime = "runsc-runc"
filter = "builtin"

[[bottles.b.egress_proxy.routes]]
host = "api.route.test"
token_ref = "E2E_ENV_TOKEN"
`, testImage)
	if err := os.WriteFile(e.manifest, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := e.command(daemonEnv, "start", "--detach", "envscan")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Scan while bottle starts: its children (iptables, CNI plugins, cp) come and go.
	var mu sync.Mutex
	leaks := map[string]bool{}
	done := make(chan struct{})
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		for {
			for _, h := range environHolders(marker, map[int]bool{cmd.Process.Pid: true}) {
				mu.Lock()
				leaks[h] = true
				mu.Unlock()
			}
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	<-scanned
	if err != nil {
		t.Fatalf("start: %v\n%s", err, out.String())
	}
	id := e.identityOf("envscan")
	// Running: containerd, the shims and runsc's sandbox and gofer processes exist now.
	if len(processesMentioning(dir, 5*time.Second)) == 0 {
		t.Fatalf("no process of the private containerd found (control)")
	}
	for _, h := range environHolders(marker, nil) {
		leaks[h] = true
	}
	for h := range leaks {
		t.Errorf("credential in the environment of process %s", h)
	}
	// On disk, while the container exists, the credential is where README says: the
	// egress-proxy's spec in containerd's metadata and its bundle's config.json, and
	// runsc's state file. Nothing of bottle's own state dir holds it.
	held := filesHolding(t, marker, dir, e.stateDir)
	t.Logf("files holding the credential while the bottle runs: %q", held)
	for _, want := range []string{"/meta.db", "/config.json", "-egress-proxy.state"} {
		if !slices.ContainsFunc(held, func(f string) bool { return strings.HasSuffix(f, want) }) {
			t.Errorf("no %s holds the credential while the bottle runs (README says one does): %q", want, held)
		}
	}
	for _, f := range held {
		if strings.HasPrefix(f, e.stateDir) {
			t.Errorf("bottle's state dir holds the credential: %s", f)
		}
	}
	e.must("rm", "--force", id)
	e.assertNothingLeft(id)
	// bbolt does not wipe freed pages: meta.db may keep the bytes until they are reused
	// (README says so). Every other copy is gone.
	for _, f := range filesHolding(t, marker, dir, e.stateDir) {
		if !strings.HasSuffix(f, "/io.containerd.metadata.v1.bolt/meta.db") {
			t.Errorf("after rm, %s still holds the credential", f)
		}
	}
}

// filesHolding returns the regular files under roots whose content holds marker.
func filesHolding(t *testing.T, marker string, roots ...string) []string {
	t.Helper()
	var out []string
	for _, root := range roots {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			if data, err := os.ReadFile(p); err == nil && bytes.Contains(data, []byte(marker)) {
				out = append(out, p)
			}
			return nil
		})
	}
	return out
}
