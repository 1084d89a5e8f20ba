package e2e

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/bottle-dev/bottle/internal/netns"
	"github.com/bottle-dev/bottle/internal/testutil"
)

// TestCleanupTouchesOnlyItsOwnOwner runs a bottle under state dir A and then `cleanup
// --all` under another state dir (same namespace), under another namespace, under A's
// state dir in another namespace, and the harness's own final cleanup: A's bottle keeps
// working through all of them.
func TestCleanupTouchesOnlyItsOwnOwner(t *testing.T) {
	a := newEnv(t)
	a.writeManifest("own-a")
	a.must("start", "--detach", "own-a", "--", "/bin/sleep", "600")
	id := a.identityOf("own-a")
	a.assertWorks(id)

	// Another state dir in the same namespace, with a bottle of its own that it removes.
	b := newEnv(t)
	b.writeManifest("own-b")
	b.must("start", "--detach", "own-b", "--", "/bin/sleep", "600")
	idB := b.identityOf("own-b")
	if out := b.must("cleanup", "--all"); !strings.Contains(out, idB) || strings.Contains(out, id) {
		t.Errorf("cleanup --all of B did not remove B's bottle %s, or named A's %s:\n%s", idB, id, out)
	}
	b.assertNothingLeft(idB)
	a.assertWorks(id)
	b.cleanupAll() // what the harness runs at the end of every test
	a.assertWorks(id)

	// Another namespace (and state dir); then A's own state dir in another namespace.
	c := newEnv(t)
	c.namespace = "bottle-e2e-other"
	c.must("cleanup", "--all")
	a.assertWorks(id)
	d := *a
	d.namespace = c.namespace
	d.must("cleanup", "--all")
	a.assertWorks(id)

	a.must("stop", id)
	a.must("rm", id)
	a.assertNothingLeft(id)
}

// TestCleanupReportsOrphanedOwner loses the state dir of a running bottle: another
// owner's cleanup and doctor report its host objects with the command that removes them,
// and remove nothing until that command runs.
func TestCleanupReportsOrphanedOwner(t *testing.T) {
	a := newEnv(t)
	a.writeManifest("lost")
	a.must("start", "--detach", "lost", "--", "/bin/sleep", "600")
	id := a.identityOf("lost")
	owner := a.netns().Owner().ID
	internal, egress, err := a.networksOf(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(a.stateDir); err != nil {
		t.Fatal(err)
	}

	b := newEnv(t)
	b.writeManifest("other")
	command := "bottle cleanup --orphaned-owner " + owner
	out := b.must("cleanup", "--all")
	if !strings.Contains(out, "owner "+owner+" (state dir "+a.stateDir+" gone") || !strings.Contains(out, command) {
		t.Errorf("cleanup does not report orphaned owner %s with `%s`:\n%s", owner, command, out)
	}
	args := []string{"doctor", "--pool", pool}
	if root := os.Getenv("BOTTLE_TEST_RUNC_ROOT"); root != "" {
		args = append(args, "--runc-root", root)
	}
	if out, _, _ := b.bottle(nil, args...); !strings.Contains(out, "other owner") || !strings.Contains(out, command) {
		t.Errorf("doctor does not report orphaned owner %s with `%s`:\n%s", owner, command, out)
	}
	for _, br := range []string{internal.Bridge, egress.Bridge} {
		if _, err := net.InterfaceByName(br); err != nil {
			t.Errorf("bridge %s of the orphaned owner removed without being asked", br)
		}
	}
	if out, err := exec.Command("iptables", "-w", "5", "-S", a.netns().FirewallChain(id)).CombinedOutput(); err != nil {
		t.Errorf("firewall chain of the orphaned owner removed without being asked: %v: %s", err, out)
	}

	out = b.must("cleanup", "--orphaned-owner", owner)
	if !strings.Contains(out, internal.Bridge) || !strings.Contains(out, a.netns().FirewallChain(id)) {
		t.Errorf("cleanup --orphaned-owner did not remove the owner's bridge and chain:\n%s", out)
	}
	// With its slot gone, the bottle's containers belong to nobody: B's cleanup takes them.
	b.must("cleanup", "--all")
	a.assertNothingLeft(id)
}

// TestInternalBridgeHasNoHostAddress removes a running bottle's firewall chain: the agent
// still reaches no listener on the host side of its internal bridge, because the host has
// no address there (IPv6 is off on the bridge). Controls: the agent reaches its filter,
// and the same probes get through once the test gives the host an address on the bridge.
func TestInternalBridgeHasNoHostAddress(t *testing.T) {
	e := newEnv(t)
	e.writeManifest("nohost")
	e.must("start", "--detach", "nohost", "--", "/bin/sleep", "600")
	id := e.identityOf("nohost")
	internal, egress, err := e.networksOf(id)
	if err != nil {
		t.Fatal(err)
	}
	br := internal.Bridge
	_, err = os.Stat("/proc/sys/net/ipv6")
	v6 := err == nil
	if v6 {
		ifs := []string{br}
		ports, _ := os.ReadDir(filepath.Join("/sys/class/net", br, "brif"))
		for _, p := range ports {
			ifs = append(ifs, p.Name())
		}
		for _, dev := range ifs {
			if v, err := os.ReadFile(filepath.Join("/proc/sys/net/ipv6/conf", dev, "disable_ipv6")); err != nil || strings.TrimSpace(string(v)) != "1" {
				t.Errorf("IPv6 not disabled on %s: %q %v", dev, v, err)
			}
		}
	}
	if out, err := exec.Command("ip", "-o", "addr", "show", "dev", br).CombinedOutput(); err != nil || strings.Contains(string(out), "inet") {
		t.Errorf("host has an address on %s (%v): %s", br, err, out)
	}

	n := e.netns()
	ctx := context.Background()
	if err := n.RemoveFirewall(ctx, id); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := n.InstallFirewall(ctx, id, internal, egress); err != nil {
			t.Error(err)
		}
	}()
	port := strconv.Itoa(hostListener(t, "[::]:0", "BANNER"))
	expectPrefix(t, e.probe(id, "tcp", "filter:8888"), "REACHED", "the agent's own filter (control)")

	// IPv4: the would-be gateway .1. The control uses another address, and nothing is sent
	// to it once it is gone: the agent's neighbor entry would send its packets to the host,
	// which (without the chain) would route them out.
	gw, _ := internal.Addr(1)
	expectPrefix(t, e.probe(id, "tcp", net.JoinHostPort(gw.String(), port)), "BLOCKED", "host IPv4 on the internal bridge, no chain")
	control, _ := internal.Addr(253)
	testutil.IP(t, "addr", "add", netip.PrefixFrom(control, 24).String(), "dev", br)
	expectPrefix(t, e.probe(id, "tcp", net.JoinHostPort(control.String(), port)), "REACHED BANNER", "host IPv4 the test put on the bridge (control)")
	testutil.IP(t, "addr", "del", netip.PrefixFrom(control, 24).String(), "dev", br)

	if !v6 {
		t.Log("no IPv6 in this kernel: only IPv4 checked")
	} else {
		sysctl := filepath.Join("/proc/sys/net/ipv6/conf", br, "disable_ipv6")
		if err := os.WriteFile(sysctl, []byte("0"), 0o644); err != nil {
			t.Fatal(err)
		}
		ll := testutil.WaitLinkLocal(t, br)
		target := "[" + ll + "%eth0]:" + port
		expectPrefix(t, e.probe(id, "tcp", target), "REACHED BANNER", "host link-local with IPv6 on the bridge (control)")
		if err := os.WriteFile(sysctl, []byte("1"), 0o644); err != nil {
			t.Fatal(err)
		}
		expectPrefix(t, e.probe(id, "tcp", target), "BLOCKED", "host link-local with IPv6 off, no chain")
	}
}

// assertWorks checks that bottle id runs and is whole: its agent reaches its filter, its
// firewall chain (with the jumps to it), bridges and netns files are there.
func (e *env) assertWorks(id string) {
	t := e.t
	t.Helper()
	running := false
	for _, p := range e.ps() {
		running = running || (p.Identity == id && p.Phase == "running")
	}
	if !running {
		t.Errorf("bottle %s not running: %+v", id, e.ps())
	}
	expectPrefix(t, e.probe(id, "tcp", "filter:8888"), "REACHED", "agent of "+id+" -> its filter")
	n := e.netns()
	internal, egress, err := e.networksOf(id)
	if err != nil {
		t.Fatal(err)
	}
	for _, br := range []string{internal.Bridge, egress.Bridge} {
		if _, err := net.InterfaceByName(br); err != nil {
			t.Errorf("bridge %s of %s gone", br, id)
		}
	}
	chain := n.FirewallChain(id)
	for _, bin := range []string{"iptables", "ip6tables"} {
		if _, err := os.Stat("/proc/net/if_inet6"); err != nil && bin == "ip6tables" {
			continue
		}
		if out, err := exec.Command(bin, "-w", "5", "-S", chain).CombinedOutput(); err != nil || !strings.Contains(string(out), "-j DROP") {
			t.Errorf("%s chain %s of %s gone or without DROP: %v: %s", bin, chain, id, err, out)
		}
		if out, _ := exec.Command(bin, "-w", "5", "-S", "FORWARD").Output(); !strings.Contains(string(out), "-i "+internal.Bridge+" -j "+chain) {
			t.Errorf("%s FORWARD jump to %s gone:\n%s", bin, chain, out)
		}
	}
	left, err := n.Leftovers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	nsFiles := 0
	for _, l := range left {
		if l.Kind == netns.KindNetns && l.Owner == n.Owner().ID && l.Identity == id {
			nsFiles++
		}
	}
	if nsFiles < 2 {
		t.Errorf("bottle %s has %d netns files, want its agent's and its sidecars'", id, nsFiles)
	}
}
