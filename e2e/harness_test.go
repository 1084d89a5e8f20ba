// Package e2e tests the bottle binary end to end: a real containerd (started by the test
// harness, scripts/test.sh), real runsc, real CNI plugins and iptables.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/ctr"
	"github.com/bottle-dev/bottle/internal/netns"
	"github.com/bottle-dev/bottle/internal/ociarchive"
	"github.com/bottle-dev/bottle/internal/slots"
	"github.com/bottle-dev/bottle/internal/testutil"
)

const (
	namespace = "bottle-e2e"
	// pool is a test-only address pool; slots that clash with host routes are skipped.
	pool = "10.214.0.0/20"
)

// testImage is busybox plus the probe binary; its tag names the probe build.
var testImage string

// bottleBin is a static build of ./cmd/bottle; probeBin of ./e2e/probe.
var bottleBin, probeBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bottle-e2e-bin")
	if err != nil {
		panic(err)
	}
	bottleBin = filepath.Join(dir, "bottle")
	probeBin = filepath.Join(dir, "probe")
	// Static, like `make build`: bottle-sidecar, next to bottle, becomes the sidecar
	// image's executable, and bottle the agent's self-test wrapper.
	for out, pkg := range map[string]string{bottleBin: "../cmd/bottle", filepath.Join(dir, "bottle-sidecar"): "../cmd/bottle-sidecar", probeBin: "./probe"} {
		build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			os.Exit(1)
		}
	}
	data, err := os.ReadFile(probeBin)
	if err != nil {
		panic(err)
	}
	testImage = fmt.Sprintf("bottle.local/test-busybox:e2e-%x", sha256.Sum256(data))[:len("bottle.local/test-busybox:e2e-")+12]
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one test's bottle environment: its own state dir (so its own owner of host
// objects) on the shared test containerd.
type env struct {
	t         testing.TB
	address   string
	namespace string
	stateDir  string
	resolv    string
	manifest  string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	testutil.RequireRoot(t)
	address := testutil.ContainerdAddress(t)
	testutil.RequireBinary(t, "runsc")
	testutil.RequireBinary(t, "iptables")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		testutil.Missing(t, "/bin/busybox (Debian busybox-static)")
	}
	importTestImage(t, address)
	dir := t.TempDir()
	e := &env{t: t, address: address, namespace: namespace, stateDir: filepath.Join(dir, "state"), resolv: filepath.Join(dir, "resolv.conf"), manifest: filepath.Join(dir, "bottle.toml")}
	// Sidecars that could leave get a resolver that points nowhere outside: loopback.
	if err := os.WriteFile(e.resolv, []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.cleanupAll)
	return e
}

// cleanupAll is the harness's final cleanup: `cleanup --all` of this env's state dir and
// namespace, which touches no other owner's bottles (a developer's, another test's).
func (e *env) cleanupAll() {
	e.t.Helper()
	_, errOut, code := e.bottle(nil, "cleanup", "--all")
	if code != 0 {
		e.t.Errorf("final cleanup: exit %d: %s", code, errOut)
	}
}

// netns returns a netns Manager of this env's owner (for names and host objects).
func (e *env) netns() *netns.Manager {
	e.t.Helper()
	n, err := netns.New(netns.Options{StateDir: e.stateDir, Namespace: e.namespace, NetnsDir: netns.DefaultNetnsDir})
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// writeManifest writes a manifest with one test agent per name.
func (e *env) writeManifest(agents ...string) {
	e.t.Helper()
	var b strings.Builder
	for _, a := range agents {
		fmt.Fprintf(&b, "[agents.%s]\nbottle = \"b\"\nimage = %q\ncommand = [\"/bin/sh\", \"-c\", \"echo default\"]\n\n", a, testImage)
	}
	b.WriteString("[bottles.b]\nruntime = \"runsc-runc\"\nfilter = \"builtin\"\n")
	if err := os.WriteFile(e.manifest, []byte(b.String()), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// args puts the test's global flags first; start and resume also get the test's pool,
// resolver and runc root.
func (e *env) args(args []string) []string {
	out := []string{"--address", e.address, "--namespace", e.namespace, "--state-dir", e.stateDir, "--manifest", e.manifest}
	for i, a := range args {
		// approve restarts a bottle on an approved Dockerfile as resume does.
		if a == "start" || a == "resume" || (a == "approve" && i == 0) {
			extra := []string{"--pool", pool, "--resolv-conf", e.resolv}
			if root := os.Getenv("BOTTLE_TEST_RUNC_ROOT"); root != "" {
				extra = append(extra, "--runc-root", root)
			}
			return append(append(append(out, args[:i+1]...), extra...), args[i+1:]...)
		}
	}
	return append(out, args...)
}

func (e *env) command(extraEnv []string, args ...string) *exec.Cmd {
	cmd := exec.Command(bottleBin, e.args(args)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, extraEnv...)
	cmd.Dir = filepath.Dir(e.manifest)
	return cmd
}

// bottle runs the binary and returns stdout, stderr and the exit status (-1 for a signal).
func (e *env) bottle(extraEnv []string, args ...string) (string, string, int) {
	e.t.Helper()
	cmd := e.command(extraEnv, args...)
	var o, er bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &er
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("run bottle: %v", err)
	}
	return o.String(), er.String(), code
}

// must runs bottle and fails the test unless it exits 0.
func (e *env) must(args ...string) string {
	e.t.Helper()
	out, errOut, code := e.bottle(nil, args...)
	if code != 0 {
		e.t.Fatalf("bottle %v: exit %d\nstdout: %s\nstderr: %s", args, code, out, errOut)
	}
	return out
}

type psEntry struct {
	Identity   string            `json:"identity"`
	Agent      string            `json:"agent"`
	Phase      string            `json:"phase"`
	Containers map[string]string `json:"containers"`
}

func (e *env) ps() []psEntry {
	e.t.Helper()
	var list []psEntry
	if err := json.Unmarshal([]byte(e.must("ps", "--json")), &list); err != nil {
		e.t.Fatalf("ps --json: %v", err)
	}
	return list
}

// identityOf returns the identity of the only bottle of agent.
func (e *env) identityOf(agent string) string {
	e.t.Helper()
	var ids []string
	for _, p := range e.ps() {
		if p.Agent == agent {
			ids = append(ids, p.Identity)
		}
	}
	if len(ids) != 1 {
		e.t.Fatalf("bottles of agent %s: %v, want exactly one", agent, ids)
	}
	return ids[0]
}

// assertNothingLeft checks containerd, the host network and the state dir for anything
// of the given identities.
func (e *env) assertNothingLeft(ids ...string) {
	e.t.Helper()
	ctx := context.Background()
	c, err := ctr.Connect(ctx, e.address, e.namespace)
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	left, err := c.Leftovers(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	n := e.netns()
	netLeft, err := n.Leftovers(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, id := range ids {
		for _, ci := range left.Containers {
			if strings.Contains(ci.Name, id) {
				e.t.Errorf("container %s of %s left", ci.Name, id)
			}
		}
		for _, s := range append(left.Tasks, left.Snapshots...) {
			if strings.Contains(s, id) {
				e.t.Errorf("task or snapshot %s of %s left", s, id)
			}
		}
		// Bridge names carry owner and identity hash; the slot does not matter for names.
		internal, _, err := n.BottleNetworks(id, 0, slots.DefaultPool)
		if err != nil {
			e.t.Fatal(err)
		}
		tail, chain := internal.Bridge[3:], n.FirewallChain(id)
		for _, l := range netLeft {
			if l.Owner == n.Owner().ID && (l.Identity == id || strings.Contains(l.Name, tail) || l.Name == chain) || strings.Contains(l.Name, id) {
				e.t.Errorf("%s of %s left", l, id)
			}
		}
		if _, err := os.Stat(filepath.Join(e.stateDir, "bottles", id)); err == nil {
			e.t.Errorf("state dir of %s left", id)
		}
		if files, _ := filepath.Glob(filepath.Join(netns.DefaultNetnsDir, n.Owner().ID, "*"+id+"*")); len(files) > 0 {
			e.t.Errorf("netns files left: %v", files)
		}
		if procs := processesMentioning(id, 5*time.Second); len(procs) > 0 {
			e.t.Errorf("processes of %s still run (shim or sandbox): %v", id, procs)
		}
		if out, _ := exec.Command("ip", "-o", "link", "show").Output(); strings.Contains(string(out), tail) {
			e.t.Errorf("bridge of %s left:\n%s", id, out)
		}
		if out, _ := exec.Command("iptables-save").Output(); strings.Contains(string(out), chain) || strings.Contains(string(out), tail) {
			e.t.Errorf("firewall rules of %s left", id)
		}
	}
}

// importTestImage puts the busybox test image into the test namespace (once).
func importTestImage(t testing.TB, address string) {
	t.Helper()
	ctx := context.Background()
	c, err := ctr.Connect(ctx, address, namespace)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok, err := c.ImageExists(ctx, testImage); err != nil {
		t.Fatal(err)
	} else if ok {
		return
	}
	img := ociarchive.BusyboxImage(testImage, "/bin/busybox")
	img.Entries = append(img.Entries, ociarchive.Entry{Path: "/usr/local/bin/probe", Type: ociarchive.File, Mode: 0o755, Source: probeBin})
	if err := c.ImportImage(ctx, img, nil); err != nil {
		t.Fatalf("import test image: %v", err)
	}
}

// hostListener serves a banner on a TCP address the test created; it returns the port.
func hostListener(t *testing.T, addr, banner string) int {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	acceptEach(t, ln, func(c net.Conn) {
		c.Write([]byte(banner + "\n"))
		c.Close()
	})
	return ln.Addr().(*net.TCPAddr).Port
}

// acceptEach hands every connection on ln to handle, on its own goroutine, until the
// test ends and closes ln.
func acceptEach(t *testing.T, ln net.Listener, handle func(net.Conn)) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
}

// readEach hands every datagram that reaches addr (the test's own) to handle, until the
// test ends.
func readEach(t *testing.T, addr netip.AddrPort, handle func(pc net.PacketConn, msg []byte, from net.Addr)) {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			handle(pc, buf[:n], from)
		}
	}()
}

// testBridge creates a host bridge with addr (a "host-side address" owned by the test).
func testBridge(t testing.TB, name string, addr netip.Prefix) {
	t.Helper()
	exec.Command("ip", "link", "del", name).Run()
	refuseShadowing(t, addr.Masked())
	for _, args := range [][]string{
		{"link", "add", name, "type", "bridge"},
		{"addr", "add", addr.String(), "dev", name},
		{"link", "set", name, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", name).Run() })
}

// refuseShadowing fails the test when prefix overlaps a route of the host (other than the
// default route) or an address the host's /etc/hosts names: a test bridge on it would
// take that traffic over while the test runs (on the project's VMs the package mirrors
// live in TEST-NET-3), so the test picks another range instead of breaking the host.
func refuseShadowing(t testing.TB, prefix netip.Prefix) {
	t.Helper()
	host, err := slots.HostPrefixes()
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := slots.Overlap(host, prefix); ok {
		t.Fatalf("test network %s overlaps the host's %s (an address or route): pick another test range", prefix, p)
	}
	hosts, err := os.ReadFile("/etc/hosts")
	if err != nil {
		t.Fatalf("read /etc/hosts: %v", err)
	}
	for _, line := range strings.Split(string(hosts), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if a, err := netip.ParseAddr(f[0]); err == nil && prefix.Contains(a.Unmap()) {
			t.Fatalf("test network %s holds %s, which the host's /etc/hosts names (%s): pick another test range", prefix, a, strings.Join(f[1:], " "))
		}
	}
}

// waitPhase waits until agent's bottle reaches phase.
func (e *env) waitPhase(agent, phase string, timeout time.Duration) string {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, p := range e.ps() {
			if p.Agent == agent && p.Phase == phase && p.Containers["agent"] == "running" {
				return p.Identity
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.t.Fatalf("bottle of %s not %s after %s: %+v", agent, phase, timeout, e.ps())
	return ""
}

func killedBySignal(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// probe runs the probe binary in bottle id's agent and returns its trimmed output.
func (e *env) probe(id string, args ...string) string {
	e.t.Helper()
	return strings.TrimSpace(e.must(append([]string{"exec", id, "--", "/usr/local/bin/probe"}, args...)...))
}

// expectPrefix reports (without stopping the test) when got does not start with prefix.
func expectPrefix(t testing.TB, got, prefix, what string) {
	t.Helper()
	if !strings.HasPrefix(got, prefix) {
		t.Errorf("%s: got %q, want %q...", what, got, prefix)
	}
}

// processesMentioning returns the command lines that mention s, waiting up to timeout for
// them to go (sandboxes take a moment to exit after their task is deleted).
func processesMentioning(s string, timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		var found []string
		paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range paths {
			if data, err := os.ReadFile(p); err == nil && bytes.Contains(data, []byte(s)) {
				found = append(found, p+": "+strings.ReplaceAll(string(data), "\x00", " "))
			}
		}
		if len(found) == 0 || time.Now().After(deadline) {
			return found
		}
		time.Sleep(100 * time.Millisecond)
	}
}
