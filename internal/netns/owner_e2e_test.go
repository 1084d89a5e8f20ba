package netns

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
	"time"

	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/testutil"
)

// TestE2EOwnersAreSeparate runs bottles of two owners (state dirs) on one host, with the
// same identity even, and checks that one owner's sweep never touches the other's objects,
// that an owner whose state dir is gone is reported (not removed), and that only the
// explicit orphaned-owner sweep removes its objects.
func TestE2EOwnersAreSeparate(t *testing.T) {
	ctx := context.Background()
	e2eManager(t) // prerequisites
	shared := t.TempDir()
	stateA := filepath.Join(shared, "a")
	if err := os.Mkdir(stateA, 0o700); err != nil {
		t.Fatal(err)
	}
	mA := e2eOwner(t, shared, stateA)
	mB := e2eOwner(t, shared, filepath.Join(shared, "b"))
	if mA.owner.ID == mB.owner.ID {
		t.Fatalf("two state dirs, one owner %s", mA.owner.ID)
	}
	pool := freeTestPool(t)
	a := newTestBottle(t, mA, pool)
	a.setupBottle(ctx)
	twin := newTestBottleID(t, mB, pool, a.identity)
	twin.setupBottle(ctx)
	if a.internal.Bridge == twin.internal.Bridge || a.internal.Subnet == twin.internal.Subnet || mA.NetnsPath(a.agentName()) == mB.NetnsPath(a.agentName()) {
		t.Fatalf("owners share bridge, subnet or netns file: %+v %+v", a.internal, twin.internal)
	}
	sidecarInt, _ := a.internal.Addr(HostFilter)
	srv := listenIn(t, mA.NetnsPath(a.sidecarName()), sidecarInt)
	mustReach(t, "agent A -> sidecar A", mA.NetnsPath(a.agentName()), srv)

	// A legacy object (no owner in its name) is reported, never swept.
	legacy := names.BridgeName("", names.Identity(randomIdentity(t)), names.NetInternal)
	if out, err := exec.Command("ip", "link", "add", legacy, "type", "bridge").CombinedOutput(); err != nil {
		t.Fatalf("add legacy bridge %s: %v: %s", legacy, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", legacy).Run() })

	// B sweeps everything it may: its twin goes, A stays whole.
	removed, err := mB.Sweep(ctx, func(string) bool { return false })
	if err != nil {
		t.Fatalf("sweep of B: %v", err)
	}
	for _, l := range removed {
		if l.Owner != mB.owner.ID {
			t.Errorf("B's sweep removed %s of owner %q", l, l.Owner)
		}
	}
	twin.assertGone(ctx)
	a.assertIntact(ctx, srv)
	if _, err := net.InterfaceByName(legacy); err != nil {
		t.Errorf("B's sweep removed legacy bridge %s", legacy)
	}

	// While A's state dir exists, A is not orphaned: not reported, not removable by B.
	if orphans := orphansOf(t, mB); orphans[mA.owner.ID] != nil || orphans[names.LegacyOwner] == nil {
		t.Errorf("orphaned owners with A alive: %v; want the legacy objects only", orphans)
	}
	if _, err := mB.SweepOrphanedOwner(ctx, mA.owner.ID); err == nil || !strings.Contains(err.Error(), stateA) {
		t.Errorf("B removed live owner A's objects (err %v)", err)
	}
	a.assertIntact(ctx, srv)

	// A's state dir goes: B reports A's objects with the command that removes them, and
	// a plain sweep still leaves them.
	if err := os.Remove(stateA); err != nil {
		t.Fatal(err)
	}
	o := orphansOf(t, mB)[mA.owner.ID]
	if o == nil || o.StateDir != stateA || o.Command() != "bottle cleanup --orphaned-owner "+mA.owner.ID || len(o.Objects) < 8 {
		t.Fatalf("orphaned owner A = %+v", o)
	}
	t.Logf("reported: %s; %s", o, o.Command())
	if _, err := mB.Sweep(ctx, func(string) bool { return false }); err != nil {
		t.Fatal(err)
	}
	a.assertIntact(ctx, srv)
	if _, err := mB.SweepOrphanedOwner(ctx, mB.owner.ID); err == nil {
		t.Error("SweepOrphanedOwner accepted its own owner")
	}
	removed, err = mB.SweepOrphanedOwner(ctx, mA.owner.ID)
	if err != nil {
		t.Fatalf("sweep of orphaned owner A: %v", err)
	}
	for _, l := range removed {
		if l.Owner != mA.owner.ID {
			t.Errorf("orphaned-owner sweep removed %s of owner %q", l, l.Owner)
		}
	}
	a.assertGone(ctx)
	if _, err := net.InterfaceByName(legacy); err != nil {
		t.Errorf("orphaned-owner sweep removed legacy bridge %s", legacy)
	}
}

func orphansOf(t *testing.T, m *Manager) map[string]*OrphanedOwner {
	t.Helper()
	left, err := m.Leftovers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	list, err := m.OrphanedOwners(left)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*OrphanedOwner{}
	for i := range list {
		out[list[i].ID] = &list[i]
	}
	return out
}

// assertIntact checks that the bottle (set up with setupBottle) still has all its host
// objects and that its agent reaches its sidecar at srv.
func (b *testBottle) assertIntact(ctx context.Context, srv string) {
	t := b.t
	t.Helper()
	for _, c := range []string{b.agentName(), b.sidecarName()} {
		if !isNetnsMount(b.m.NetnsPath(c)) {
			t.Errorf("netns file %s gone", b.m.NetnsPath(c))
		}
	}
	for _, br := range []string{b.internal.Bridge, b.egress.Bridge} {
		if _, err := net.InterfaceByName(br); err != nil {
			t.Errorf("bridge %s gone", br)
		}
	}
	for _, bin := range []string{"iptables", "ip6tables"} {
		if _, err := os.Stat("/proc/net/if_inet6"); err != nil && bin == "ip6tables" {
			continue
		}
		out, err := exec.Command(bin, "-w", "5", "-S", "INPUT").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "-i "+b.internal.Bridge+" -j "+b.m.FirewallChain(b.identity)) {
			t.Errorf("%s: jump to chain %s gone: %v: %s", bin, b.m.FirewallChain(b.identity), err, out)
		}
		if out, err := exec.Command(bin, "-w", "5", "-S", b.m.FirewallChain(b.identity)).CombinedOutput(); err != nil || !strings.Contains(string(out), "-j DROP") {
			t.Errorf("%s chain %s gone or without DROP: %v: %s", bin, b.m.FirewallChain(b.identity), err, out)
		}
	}
	if _, err := b.m.SlotOf(b.identity, b.pool); err != nil {
		t.Errorf("slot gone: %v", err)
	}
	left, err := b.m.Leftovers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[LeftoverKind]int{}
	for _, l := range left {
		if l.Owner == b.m.owner.ID && l.Identity == b.identity {
			kinds[l.Kind]++
		}
	}
	want := map[LeftoverKind]int{KindNetns: 2, KindBridge: 2, KindChain: 1, KindCNICache: 3, KindMasq: 1, KindSlot: 1}
	for k, n := range want {
		if kinds[k] != n {
			t.Errorf("bottle %s has %d %s, want %d (all: %v)", b.identity, kinds[k], k, n, kinds)
		}
	}
	mustReach(t, "agent -> its sidecar", b.m.NetnsPath(b.agentName()), srv)
}

// TestE2EInternalBridgeHasNoHostAddress removes a bottle's firewall chain and checks that
// its agent still reaches nothing on the host through the internal bridge, because the
// host has no address there: IPv6 is off on the bridge and its ports. The controls give
// the host an address on the bridge (IPv4, then IPv6 link-local) and the same probes get
// through, so the probes can see reachability.
func TestE2EInternalBridgeHasNoHostAddress(t *testing.T) {
	m := e2eManager(t)
	ctx := context.Background()
	b := newTestBottle(t, m, freeTestPool(t))
	b.setupBottle(ctx)
	agent := m.NetnsPath(b.agentName())
	br := b.internal.Bridge
	v6 := true
	if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
		v6 = false
		t.Log("no IPv6 in this kernel: only IPv4 is checked")
	}
	if v6 {
		ports, err := bridgePorts(br)
		if err != nil || len(ports) != 2 {
			t.Fatalf("ports of %s: %v, %v", br, ports, err)
		}
		for _, ifName := range []string{br, ports[0].Attrs().Name, ports[1].Attrs().Name} {
			if v, err := os.ReadFile(filepath.Join("/proc/sys/net/ipv6/conf", ifName, "disable_ipv6")); err != nil || strings.TrimSpace(string(v)) != "1" {
				t.Errorf("IPv6 not disabled on %s: %q %v", ifName, v, err)
			}
		}
	}
	if out, err := exec.Command("ip", "-o", "addr", "show", "dev", br).CombinedOutput(); err != nil || strings.Contains(string(out), "inet") {
		t.Errorf("host has an address on %s (%v): %s", br, err, out)
	}

	if err := m.RemoveFirewall(ctx, b.identity); err != nil {
		t.Fatal(err)
	}
	hostL, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(hostL.Addr().(*net.TCPAddr).Port)
	serve(t, hostL)
	sidecarInt, _ := b.internal.Addr(HostFilter)
	mustReach(t, "agent -> its sidecar (control)", agent, listenIn(t, m.NetnsPath(b.sidecarName()), sidecarInt))

	// IPv4: the would-be gateway .1. The control uses another address, and nothing is sent
	// to it once it is gone: the agent's neighbor entry would send its packets to the host,
	// which (without the chain) would route them out.
	gw, _ := b.internal.Addr(1)
	mustNotReach(t, "agent -> host IPv4 on the internal bridge", agent, netip.AddrPortFrom(gw, port).String())
	control, _ := b.internal.Addr(253)
	testutil.IP(t, "addr", "add", netip.PrefixFrom(control, 24).String(), "dev", br)
	reachWithin(t, "agent -> host IPv4 the test put on the bridge (control)", agent, netip.AddrPortFrom(control, port).String(), 5*time.Second)
	testutil.IP(t, "addr", "del", netip.PrefixFrom(control, 24).String(), "dev", br)

	if !v6 {
		return
	}
	// IPv6: the link-local address the bridge gets when IPv6 is on (never routed on).
	sysctl := filepath.Join("/proc/sys/net/ipv6/conf", br, "disable_ipv6")
	if err := os.WriteFile(sysctl, []byte("0"), 0o644); err != nil {
		t.Fatal(err)
	}
	ll := testutil.WaitLinkLocal(t, br)
	// A numeric zone: Go caches zone names process-wide, and the host has an eth0 too.
	var eth0 *net.Interface
	if err := inNetns(t, agent, func() (err error) { eth0, err = net.InterfaceByName("eth0"); return err }); err != nil {
		t.Fatal(err)
	}
	target := "[" + ll + "%" + strconv.Itoa(eth0.Index) + "]:" + strconv.Itoa(int(port))
	reachWithin(t, "agent -> host link-local with IPv6 on (control)", agent, target, 10*time.Second)
	if err := os.WriteFile(sysctl, []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustNotReach(t, "agent -> host link-local with IPv6 off", agent, target)
}

// reachWithin retries until addr answers (the agent's own addresses may still be in DAD).
func reachWithin(t *testing.T, what, path, addr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := dialFrom(t, path, addr, time.Second)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: %s must be reachable: %v", what, addr, err)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}
