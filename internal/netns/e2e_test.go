package netns

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/firewall"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/slots"
	"github.com/bottle-dev/bottle/internal/testutil"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// These tests use real network namespaces, the real CNI plugins and real iptables.
// Traffic goes only to addresses inside the namespaces and bridges they create.

const negativeDialTimeout = time.Second

type testBottle struct {
	t        *testing.T
	m        *Manager
	identity string
	pool     netip.Prefix
	internal Network
	egress   Network
}

func (b *testBottle) agentName() string   { return "bottle-" + b.identity }
func (b *testBottle) sidecarName() string { return "bottle-" + b.identity + "-filter" }

func (b *testBottle) agentAtts() []Attachment {
	a, err := b.internal.Attach("eth0", HostAgent)
	if err != nil {
		b.t.Fatal(err)
	}
	return []Attachment{a}
}

func (b *testBottle) sidecarAtts() []Attachment {
	in, err := b.internal.Attach("eth0", HostFilter)
	if err != nil {
		b.t.Fatal(err)
	}
	eg, err := b.egress.Attach("eth1", HostFilter)
	if err != nil {
		b.t.Fatal(err)
	}
	return []Attachment{in, eg}
}

func randomIdentity(t *testing.T) string {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "nettest-" + hex.EncodeToString(b[:])
}

// e2eManager returns a Manager of a fresh owner (its own state dir) on a private netns
// root, lock and slot dir; it only ever touches its own objects.
func e2eManager(t *testing.T) *Manager {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "iptables")
	testutil.RequireBinary(t, "ip")
	testutil.RequireBinary(t, "nsenter")
	tmp := t.TempDir()
	return e2eOwner(t, tmp, filepath.Join(tmp, "state"))
}

// e2eOwner returns a Manager of the owner of stateDir, with netns root, lock and slot dir
// in shared (so several owners can share them).
func e2eOwner(t *testing.T, shared, stateDir string) *Manager {
	t.Helper()
	m, err := New(Options{NetnsDir: filepath.Join(shared, "netns"), LockFile: filepath.Join(shared, "cni.lock"),
		SlotDir: filepath.Join(shared, "slots"), StateDir: stateDir, Namespace: "netns-e2e"})
	if err != nil {
		testutil.Missing(t, "CNI plugins: %v", err)
	}
	return m
}

// newTestBottle reserves a slot, computes the networks and installs the firewall; the
// cleanup removes everything (idempotent, so explicit teardown in the test is fine).
func newTestBottle(t *testing.T, m *Manager, pool netip.Prefix) *testBottle {
	t.Helper()
	return newTestBottleID(t, m, pool, randomIdentity(t))
}

func newTestBottleID(t *testing.T, m *Manager, pool netip.Prefix, identity string) *testBottle {
	t.Helper()
	b := &testBottle{t: t, m: m, identity: identity, pool: pool}
	slot, err := m.ReserveSlot(b.identity, pool)
	if err != nil {
		t.Fatal(err)
	}
	b.internal, b.egress, err = m.BottleNetworks(b.identity, slot, pool)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.remove(context.Background()) })
	if err := m.InstallFirewall(context.Background(), b.identity, b.internal, b.egress); err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *testBottle) remove(ctx context.Context) {
	t := b.t
	if err := b.m.Teardown(ctx, b.agentName(), b.agentAtts()); err != nil {
		t.Errorf("teardown agent: %v", err)
	}
	if err := b.m.Teardown(ctx, b.sidecarName(), b.sidecarAtts()); err != nil {
		t.Errorf("teardown sidecar: %v", err)
	}
	if err := b.m.RemoveFirewall(ctx, b.identity); err != nil {
		t.Errorf("remove firewall: %v", err)
	}
	if err := b.m.RemoveNetworks(ctx, b.identity, []Network{b.internal, b.egress}); err != nil {
		t.Errorf("remove networks: %v", err)
	}
	if err := b.m.ReleaseSlot(b.identity); err != nil {
		t.Errorf("release slot: %v", err)
	}
}

// assertGone checks every kind of host state of the bottle is gone.
func (b *testBottle) assertGone(ctx context.Context) {
	t := b.t
	t.Helper()
	for _, c := range []string{b.agentName(), b.sidecarName()} {
		if _, err := os.Lstat(b.m.NetnsPath(c)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("netns file %s still there (%v)", b.m.NetnsPath(c), err)
		}
	}
	for _, br := range []string{b.internal.Bridge, b.egress.Bridge} {
		if _, err := net.InterfaceByName(br); err == nil {
			t.Errorf("bridge %s still there", br)
		}
	}
	for _, bin := range []string{"iptables", "ip6tables"} {
		if _, err := exec.LookPath(bin); err != nil {
			continue
		}
		if out, err := exec.Command(bin, "-w", "5", "-S", b.m.FirewallChain(b.identity)).CombinedOutput(); err == nil {
			t.Errorf("%s chain %s still there:\n%s", bin, b.m.FirewallChain(b.identity), out)
		}
		out, err := exec.Command(bin, "-w", "5", "-S").CombinedOutput()
		if err != nil {
			t.Fatalf("%s -S: %v: %s", bin, err, out)
		}
		if strings.Contains(string(out), b.m.FirewallChain(b.identity)) || strings.Contains(string(out), b.internal.Bridge[3:]) {
			t.Errorf("%s still references bottle %s:\n%s", bin, b.identity, out)
		}
	}
	nat, err := exec.Command("iptables", "-w", "5", "-t", "nat", "-S").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables -t nat -S: %v: %s", err, nat)
	}
	if strings.Contains(string(nat), b.internal.Name) || strings.Contains(string(nat), b.egress.Name) || strings.Contains(string(nat), b.m.FirewallChain(b.identity)) {
		t.Errorf("nat table still references networks of bottle %s:\n%s", b.identity, nat)
	}
	for _, n := range []Network{b.internal, b.egress} {
		for _, c := range []string{b.agentName(), b.sidecarName()} {
			if chain := firewall.MasqChain(n.Name, c); strings.Contains(string(nat), chain) {
				t.Errorf("nat chain %s of network %s container %s still there:\n%s", chain, n.Name, c, nat)
			}
		}
	}
	// Nothing anywhere in the CNI state directory names its networks (results, IPAM dirs, ...).
	_ = filepath.WalkDir(libcni.CacheDir, func(p string, _ fs.DirEntry, err error) error {
		if err == nil && (strings.Contains(filepath.Base(p), b.internal.Name) || strings.Contains(filepath.Base(p), b.egress.Name)) {
			t.Errorf("CNI state entry left: %s", p)
		}
		return nil
	})
	left, err := b.m.Leftovers(ctx)
	if err != nil {
		t.Errorf("Leftovers: %v", err)
	}
	for _, l := range left {
		if l.Owner == b.m.owner.ID && (l.Identity == b.identity || l.Hash == names.NameHash(b.m.owner.ID, names.Identity(b.identity))) {
			t.Errorf("leftover: %s", l)
		}
	}
}

// inNetns runs fn in the network namespace at path.
func inNetns(t *testing.T, path string, fn func() error) error {
	t.Helper()
	return ns.WithNetNSPath(path, func(ns.NetNS) error { return fn() })
}

// runIn runs a command inside the netns at path.
func runIn(t *testing.T, path string, args ...string) {
	t.Helper()
	out, err := exec.Command("nsenter", append([]string{"--net=" + path, "--"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %v: %v: %s", path, args, err, out)
	}
}

// serve answers "ok" on every connection of l until the test ends.
func serve(t *testing.T, l net.Listener) string {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("ok\n"))
			c.Close()
		}
	}()
	return l.Addr().String()
}

// listenIn starts a server on addr (port 0) inside the netns at path.
func listenIn(t *testing.T, path string, addr netip.Addr) string {
	t.Helper()
	var l net.Listener
	err := inNetns(t, path, func() (err error) {
		l, err = net.Listen("tcp4", netip.AddrPortFrom(addr, 0).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, path, err)
	}
	return serve(t, l)
}

// dialFrom connects from inside the netns at path and expects "ok".
func dialFrom(t *testing.T, path, addr string, timeout time.Duration) error {
	t.Helper()
	return inNetns(t, path, func() error {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if line != "ok\n" {
			return fmt.Errorf("unexpected answer %q", line)
		}
		return nil
	})
}

func mustReach(t *testing.T, what, path, addr string) {
	t.Helper()
	if err := dialFrom(t, path, addr, 3*time.Second); err != nil {
		t.Errorf("%s: %s must be reachable: %v", what, addr, err)
	}
}

func mustNotReach(t *testing.T, what, path, addr string) {
	t.Helper()
	start := time.Now()
	if err := dialFrom(t, path, addr, negativeDialTimeout); err == nil {
		t.Errorf("%s: %s is reachable, must not be", what, addr)
	} else {
		t.Logf("%s: blocked as expected after %v: %v", what, time.Since(start).Round(time.Millisecond), err)
	}
}

type nsView struct {
	ifaces       []string
	addrs        map[string][]string
	defaultRoute bool
	defaultV6    bool
	loUp         bool
}

func inspect(t *testing.T, path string) nsView {
	t.Helper()
	v := nsView{addrs: map[string][]string{}}
	err := inNetns(t, path, func() error {
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		for _, i := range ifs {
			v.ifaces = append(v.ifaces, i.Name)
			if i.Name == "lo" {
				v.loUp = i.Flags&net.FlagUp != 0
			}
			as, _ := i.Addrs()
			for _, a := range as {
				v.addrs[i.Name] = append(v.addrs[i.Name], a.String())
			}
		}
		// /proc/thread-self: /proc/self/net would show the main thread's namespace.
		routes, err := os.ReadFile("/proc/thread-self/net/route")
		if err != nil {
			return err
		}
		for _, l := range strings.Split(string(routes), "\n")[1:] {
			f := strings.Fields(l)
			if len(f) >= 8 && f[1] == "00000000" && f[7] == "00000000" {
				v.defaultRoute = true
			}
		}
		if routes6, err := os.ReadFile("/proc/thread-self/net/ipv6_route"); err == nil {
			for _, l := range strings.Split(string(routes6), "\n") {
				f := strings.Fields(l)
				if len(f) >= 10 && f[0] == strings.Repeat("0", 32) && f[1] == "00" && f[9] != "lo" {
					v.defaultV6 = true
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("inspect netns %s: %v", path, err)
	}
	slices.Sort(v.ifaces)
	return v
}

func TestE2ENetworkIsolation(t *testing.T) {
	m := e2eManager(t)
	ctx := context.Background()
	pool := freeTestPool(t)
	a := newTestBottle(t, m, pool)
	b := newTestBottle(t, m, pool)
	t.Logf("bottle A %s: %s %s; bottle B %s: %s %s", a.identity, a.internal.Subnet, a.egress.Subnet, b.identity, b.internal.Subnet, b.egress.Subnet)

	paths := map[*testBottle][2]string{}
	for _, x := range []*testBottle{a, b} {
		agentNS, _, err := m.Setup(ctx, x.agentName(), x.agentAtts())
		if err != nil {
			t.Fatalf("setup agent of %s: %v", x.identity, err)
		}
		sidecarNS, _, err := m.Setup(ctx, x.sidecarName(), x.sidecarAtts())
		if err != nil {
			t.Fatalf("setup sidecar of %s: %v", x.identity, err)
		}
		if agentNS != m.NetnsPath(x.agentName()) || !isNetnsMount(agentNS) || !isNetnsMount(sidecarNS) {
			t.Fatalf("netns paths %s %s are not mounted namespaces at the documented place", agentNS, sidecarNS)
		}
		paths[x] = [2]string{agentNS, sidecarNS}
		// The bottle's nat chain masquerades its egress subnet: CNI writes no rule per container.
		if masq, err := firewall.ListMasq(ctx); err != nil || slices.ContainsFunc(masq, func(r firewall.Masq) bool { return r.Network == x.egress.Name }) {
			t.Errorf("per-container masquerade rule of %s after setup (%v): %+v", x.egress.Name, err, masq)
		}
		assertBottleMasq(t, m, x, true)
		x.legacyMasq()
	}
	agentA, sidecarA := paths[a][0], paths[a][1]
	agentB, sidecarB := paths[b][0], paths[b][1]

	// Shape of the namespaces.
	av := inspect(t, agentA)
	if !slices.Equal(av.ifaces, []string{"eth0", "lo"}) || !av.loUp {
		t.Errorf("agent netns interfaces = %v (lo up %v), want lo (up) + eth0 only", av.ifaces, av.loUp)
	}
	agentAddr, _ := a.internal.Addr(HostAgent)
	if !slices.Contains(av.addrs["eth0"], netip.PrefixFrom(agentAddr, 24).String()) {
		t.Errorf("agent eth0 addresses %v, want %s/24", av.addrs["eth0"], agentAddr)
	}
	if av.defaultRoute || av.defaultV6 {
		t.Errorf("agent netns has a default route (v4 %v, v6 %v)", av.defaultRoute, av.defaultV6)
	}
	sv := inspect(t, sidecarA)
	if !slices.Equal(sv.ifaces, []string{"eth0", "eth1", "lo"}) || !sv.defaultRoute {
		t.Errorf("sidecar netns interfaces %v default route %v, want lo+eth0+eth1 and a default route", sv.ifaces, sv.defaultRoute)
	}
	if fw, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); err != nil || strings.TrimSpace(string(fw)) != "1" {
		t.Errorf("ip_forward = %q (%v); the bridge plugin enables it for gateway networks", fw, err)
	}

	for _, bin := range []string{"iptables", "ip6tables"} {
		if _, err := os.Stat("/proc/net/if_inet6"); err != nil && bin == "ip6tables" {
			continue
		}
		if out, err := exec.Command(bin, "-w", "5", "-S", m.FirewallChain(a.identity)).CombinedOutput(); err != nil || !strings.Contains(string(out), "-j DROP") {
			t.Errorf("%s chain %s missing or without DROP: %v: %s", bin, m.FirewallChain(a.identity), err, out)
		}
	}

	// A "host" server on A's egress gateway: the sidecar reaches it through eth1 (so the
	// test can see reachability), the agents do not.
	hostL, err := net.Listen("tcp4", netip.AddrPortFrom(a.egress.Gateway(), 0).String())
	if err != nil {
		t.Fatalf("listen on egress gateway %s: %v", a.egress.Gateway(), err)
	}
	hostSrv := serve(t, hostL)
	mustReach(t, "sidecar A -> host via egress", sidecarA, hostSrv)
	mustNotReach(t, "agent A -> host", agentA, hostSrv)
	mustNotReach(t, "agent B -> host", agentB, hostSrv)

	// Agent -> its own sidecar on the internal network works (also through br_netfilter).
	sidecarAInt, _ := a.internal.Addr(HostFilter)
	sidecarBInt, _ := b.internal.Addr(HostFilter)
	sidecarBEgr, _ := b.egress.Addr(HostFilter)
	srvAInt := listenIn(t, sidecarA, sidecarAInt)
	srvBInt := listenIn(t, sidecarB, sidecarBInt)
	srvBEgr := listenIn(t, sidecarB, sidecarBEgr)
	mustReach(t, "agent A -> sidecar A (internal)", agentA, srvAInt)
	mustReach(t, "agent B -> sidecar B (internal)", agentB, srvBInt)
	mustNotReach(t, "agent A -> sidecar B (internal)", agentA, srvBInt)
	mustNotReach(t, "agent A -> sidecar B (egress)", agentA, srvBEgr)

	// A hostile agent routes through the host itself. So that no reply can ever leave the
	// host, the host gets a route to A's internal subnet through A's internal bridge.
	hostRoute := []string{a.internal.Subnet.String(), "dev", a.internal.Bridge}
	if out, err := exec.Command("ip", append([]string{"route", "add"}, hostRoute...)...).CombinedOutput(); err != nil {
		t.Fatalf("add test route %v: %v: %s", hostRoute, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", append([]string{"route", "del"}, hostRoute...)...).Run() })
	runIn(t, agentA, "ip", "route", "add", "default", "via", a.egress.Gateway().String(), "dev", "eth0", "onlink")
	mustNotReach(t, "hostile agent A -> host (INPUT)", agentA, hostSrv)
	mustNotReach(t, "hostile agent A -> sidecar B egress (FORWARD)", agentA, srvBEgr)
	// Control: without A's firewall the same attempts succeed, so the blocks above are the
	// firewall's doing, not an artefact of the test.
	if err := m.RemoveFirewall(ctx, a.identity); err != nil {
		t.Fatal(err)
	}
	assertBottleMasq(t, m, a, false)
	mustReach(t, "hostile agent A without firewall -> host", agentA, hostSrv)
	mustReach(t, "hostile agent A without firewall -> sidecar B egress", agentA, srvBEgr)
	if err := m.InstallFirewall(ctx, a.identity, a.internal, a.egress); err != nil {
		t.Fatal(err)
	}
	if err := m.InstallFirewall(ctx, a.identity, a.internal, a.egress); err != nil { // idempotent
		t.Fatal(err)
	}
	assertBottleMasq(t, m, a, true)
	mustNotReach(t, "hostile agent A -> host after reinstall", agentA, hostSrv)
	mustNotReach(t, "hostile agent A -> sidecar B egress after reinstall", agentA, srvBEgr)
	mustReach(t, "agent A -> sidecar A after reinstall", agentA, srvAInt)

	// Leftovers sees both bottles, with identities resolved for hashed names.
	left, err := m.Leftovers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []*testBottle{a, b} {
		kinds := map[LeftoverKind]int{}
		for _, l := range left {
			if l.Identity == x.identity {
				kinds[l.Kind]++
			}
		}
		want := map[LeftoverKind]int{KindNetns: 2, KindBridge: 2, KindChain: 1, KindCNICache: 3, KindMasq: 1, KindSlot: 1}
		for k, n := range want {
			if kinds[k] != n {
				t.Errorf("Leftovers of %s: %d %s, want %d (all: %v)", x.identity, kinds[k], k, n, kinds)
			}
		}
	}

	// A restart: Teardown + Setup gives a fresh netns that works again; a Setup over a
	// leftover netns (crash before Teardown) runs DEL before ADD and works too.
	if err := m.Teardown(ctx, a.agentName(), a.agentAtts()); err != nil {
		t.Fatal(err)
	}
	if err := m.Teardown(ctx, a.agentName(), a.agentAtts()); err != nil {
		t.Fatalf("second teardown (idempotent): %v", err)
	}
	if _, _, err := m.Setup(ctx, a.agentName(), a.agentAtts()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Setup(ctx, a.agentName(), a.agentAtts()); err != nil {
		t.Fatalf("setup over a leftover netns: %v", err)
	}
	mustReach(t, "agent A (re-setup) -> sidecar A", agentA, srvAInt)
	if v := inspect(t, agentA); v.defaultRoute || !slices.Equal(v.ifaces, []string{"eth0", "lo"}) {
		t.Errorf("re-setup agent netns: %v default route %v", v.ifaces, v.defaultRoute)
	}

	// runsc removes the IPv4 addresses from the netns it copies: teardown must still remove
	// the masquerade rules.
	runIn(t, sidecarA, "ip", "-4", "addr", "flush", "dev", "eth1")

	// Bottle A goes through the explicit API, bottle B through Sweep.
	a.remove(ctx)
	a.assertGone(ctx)
	removed, err := m.Sweep(ctx, func(id string) bool { return id != b.identity }) // "" kept: not ours
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	for _, l := range removed {
		if l.Identity != b.identity {
			t.Errorf("sweep removed %s of a kept bottle", l)
		}
	}
	if len(removed) == 0 {
		t.Error("sweep removed nothing")
	}
	b.assertGone(ctx)
}

// TestE2ESetupFailureUndoes makes the second CNI ADD fail (its bridge name is taken by a
// veth) and checks that the first attachment and the netns are undone.
func TestE2ESetupFailureUndoes(t *testing.T) {
	m := e2eManager(t)
	ctx := context.Background()
	c := newTestBottle(t, m, freeTestPool(t))
	if out, err := exec.Command("ip", "link", "add", c.egress.Bridge, "type", "veth", "peer", "name", "nt-"+names.NameHash("", names.Identity(c.identity))).CombinedOutput(); err != nil {
		t.Fatalf("add veth %s: %v: %s", c.egress.Bridge, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", c.egress.Bridge).Run() })

	_, _, err := m.Setup(ctx, c.sidecarName(), c.sidecarAtts())
	if err == nil {
		t.Fatal("setup succeeded although the egress bridge name is taken")
	}
	t.Logf("setup failed as expected: %v", err)
	if !strings.Contains(err.Error(), c.sidecarName()) {
		t.Errorf("error does not name the container: %v", err)
	}
	if _, err := os.Lstat(m.NetnsPath(c.sidecarName())); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("netns file left after failed setup: %v", err)
	}
	if cached, _ := m.cachedAttachments(c.sidecarName()); len(cached) != 0 {
		t.Errorf("CNI cache entries left after failed setup: %+v", cached)
	}
	// The internal bridge was created by the first ADD; its veth must be gone.
	if out, err := exec.Command("ip", "-o", "link", "show", "master", c.internal.Bridge).CombinedOutput(); err == nil && strings.TrimSpace(string(out)) != "" {
		t.Errorf("ports left on %s after failed setup: %s", c.internal.Bridge, out)
	}
	if err := m.RemoveNetworks(ctx, c.identity, []Network{c.internal}); err != nil {
		t.Fatal(err)
	}
	if err := m.RemoveNetworks(ctx, c.identity, []Network{c.egress}); err == nil {
		t.Error("RemoveNetworks deleted a non-bridge interface with a bottle name")
	}
}

// TestE2ERelease releases a container's netns through the release Setup returned: nothing
// of it is left, and a second call does nothing (not even to the container's next netns).
func TestE2ERelease(t *testing.T) {
	m := e2eManager(t)
	ctx := context.Background()
	b := newTestBottle(t, m, freeTestPool(t))
	path, release, err := m.Setup(ctx, b.sidecarName(), b.sidecarAtts())
	if err != nil {
		t.Fatal(err)
	}
	veths := b.hostVeths(2)
	if err := release(ctx); err != nil {
		t.Fatalf("release: %v", err)
	}
	assertVethsGone(t, veths)
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("netns file %s left after release (%v)", path, err)
	}
	if cached, _ := m.cachedAttachments(b.sidecarName()); len(cached) != 0 {
		t.Errorf("CNI cache entries left after release: %+v", cached)
	}
	if masq, err := firewall.ListMasq(ctx); err != nil || slices.ContainsFunc(masq, func(r firewall.Masq) bool { return r.Network == b.egress.Name }) {
		t.Errorf("masquerade rule of %s left after release (%v)", b.egress.Name, err)
	}
	if _, _, err := m.Setup(ctx, b.sidecarName(), b.sidecarAtts()); err != nil {
		t.Fatal(err)
	}
	if err := release(ctx); err != nil {
		t.Fatalf("second release: %v", err)
	}
	if !isNetnsMount(path) {
		t.Error("a second release took down the netns of the next Setup")
	}
}

// benchBottle prepares a Manager and the networks of a benchmark bottle in slot of the
// test pool.
func benchBottle(b *testing.B, slot int) (m *Manager, id string, in, eg Network) {
	b.Helper()
	testutil.RequireRoot(b)
	tmp := b.TempDir()
	m, err := New(Options{NetnsDir: filepath.Join(tmp, "netns"), LockFile: filepath.Join(tmp, "cni.lock"), StateDir: tmp, SlotDir: filepath.Join(tmp, "slots")})
	if err != nil {
		testutil.Missing(b, "CNI plugins: %v", err)
	}
	id = "nettest-b" + names.NameHash("", names.Identity(tmp))[:5]
	in, eg, err = m.BottleNetworks(id, slot, netip.MustParsePrefix("10.254.240.0/20"))
	if err != nil {
		b.Fatal(err)
	}
	host, err := slots.HostPrefixes()
	if err != nil {
		b.Fatal(err)
	}
	if p, clash := slots.Overlap(host, in.Subnet, eg.Subnet); clash {
		b.Skipf("benchmark subnets overlap host network %s", p)
	}
	return m, id, in, eg
}

// BenchmarkSetupTeardown measures a sidecar's netns setup (two CNI networks) and teardown.
func BenchmarkSetupTeardown(b *testing.B) {
	m, id, in, eg := benchBottle(b, 0)
	ctx := context.Background()
	att0, _ := in.Attach("eth0", HostFilter)
	att1, _ := eg.Attach("eth1", HostFilter)
	atts := []Attachment{att0, att1}
	b.Cleanup(func() {
		_ = m.Teardown(ctx, "bottle-"+id+"-filter", atts)
		_ = m.RemoveNetworks(ctx, id, []Network{in, eg})
	})
	for b.Loop() {
		_, release, err := m.Setup(ctx, "bottle-"+id+"-filter", atts)
		if err != nil {
			b.Fatal(err)
		}
		if err := release(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// setupBottle runs Setup for the agent (internal) and the sidecar (internal + egress) and
// returns the host ends of their veth pairs.
func (b *testBottle) setupBottle(ctx context.Context) []netlink.Link {
	t := b.t
	t.Helper()
	if _, _, err := b.m.Setup(ctx, b.agentName(), b.agentAtts()); err != nil {
		t.Fatalf("setup agent: %v", err)
	}
	if _, _, err := b.m.Setup(ctx, b.sidecarName(), b.sidecarAtts()); err != nil {
		t.Fatalf("setup sidecar: %v", err)
	}
	b.legacyMasq()
	return b.hostVeths(3)
}

// assertBottleMasq checks that the nat chain of bottle x masquerades its egress subnet,
// jumped to from POSTROUTING (or, want false, that neither is there).
func assertBottleMasq(t *testing.T, m *Manager, x *testBottle, want bool) {
	t.Helper()
	chain := m.FirewallChain(x.identity)
	post, err := exec.Command("iptables", "-w", "5", "-t", "nat", "-S", "POSTROUTING").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables -t nat -S POSTROUTING: %v: %s", err, post)
	}
	jump := "-A POSTROUTING -s " + x.egress.Subnet.String() + " -j " + chain
	rules, _ := exec.Command("iptables", "-w", "5", "-t", "nat", "-S", chain).CombinedOutput()
	has := strings.Contains(string(post), jump) && strings.Contains(string(rules), "-A "+chain+" -j MASQUERADE")
	if has != want || (!want && strings.Contains(string(post), chain)) {
		t.Errorf("masquerade of bottle %s in force: %v, want %v:\n%s%s", x.identity, has, want, post, rules)
	}
}

// legacyMasq writes the masquerade rule of the sidecar's egress address that the bridge
// plugin's ipMasq wrote before the bottle's nat chain replaced it: what a bottle of an
// earlier version leaves, which teardowns and sweeps must still remove.
func (b *testBottle) legacyMasq() {
	b.t.Helper()
	eg := b.sidecarAtts()[1]
	backend := "iptables"
	ipn := &net.IPNet{IP: eg.Addr.AsSlice(), Mask: net.CIDRMask(32, 32)}
	if err := ip.SetupIPMasqForNetworks(&backend, []*net.IPNet{ipn}, eg.Name, "", b.sidecarName()); err != nil {
		b.t.Fatalf("legacy masquerade rule of %s: %v", b.sidecarName(), err)
	}
}

// hostVeths returns the ports of the bottle's bridges and checks there are want of them.
func (b *testBottle) hostVeths(want int) []netlink.Link {
	t := b.t
	t.Helper()
	var all []netlink.Link
	for _, br := range []string{b.internal.Bridge, b.egress.Bridge} {
		p, err := bridgePorts(br)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, p...)
	}
	if len(all) != want {
		t.Fatalf("bridges of %s have ports %v, want %d", b.identity, all, want)
	}
	return all
}

func (b *testBottle) teardownBottle(ctx context.Context) error {
	return b.m.TeardownBottle(ctx, b.identity, map[string][]Attachment{
		b.agentName():   b.agentAtts(),
		b.sidecarName(): b.sidecarAtts(),
	}, []Network{b.internal, b.egress})
}

func assertVethsGone(t *testing.T, veths []netlink.Link) {
	t.Helper()
	for _, v := range veths {
		l, err := netlink.LinkByIndex(v.Attrs().Index)
		if _, gone := errors.AsType[netlink.LinkNotFoundError](err); !gone && (err != nil || l.Attrs().Name == v.Attrs().Name) {
			t.Errorf("host veth %s (index %d) still there (%v)", v.Attrs().Name, v.Attrs().Index, err)
		}
	}
}

// TestE2ETeardownBottle takes a whole bottle's networking down in one call and checks that
// nothing is left: netns files, veth pairs (also of a netns still held open), bridges,
// masquerade rules and chains, CNI cache results, IPAM dirs; a second call is a no-op.
func TestE2ETeardownBottle(t *testing.T) {
	m := e2eManager(t)
	ctx := context.Background()
	b := newTestBottle(t, m, freeTestPool(t))
	veths := b.setupBottle(ctx)

	// Precondition: the state that must go exists.
	if masq, err := firewall.ListMasq(ctx); err != nil || !slices.ContainsFunc(masq, func(r firewall.Masq) bool { return r.Network == b.egress.Name }) {
		t.Fatalf("no masquerade rule of %s after setup (%v): the test would prove nothing", b.identity, err)
	}
	if cached, _ := m.cachedAttachments(""); !slices.ContainsFunc(cached, func(ca *libcni.NetworkAttachment) bool {
		owner, id, _ := names.ParseNetworkName(ca.Network)
		return owner == m.owner.ID && string(id) == b.identity
	}) {
		t.Fatal("no CNI cache result after setup: the test would prove nothing")
	}
	// runsc removes the IPv4 addresses from the netns it copies (so the plugin's DEL could
	// not find the masquerade rules by address any more).
	runIn(t, m.NetnsPath(b.sidecarName()), "ip", "-4", "addr", "flush", "dev", "eth1")
	// A process left in the agent's netns keeps it alive after the unmount: its veth pair
	// must still go.
	held, err := os.Open(m.NetnsPath(b.agentName()))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	start := time.Now()
	if err := b.teardownBottle(ctx); err != nil {
		t.Fatalf("TeardownBottle: %v", err)
	}
	t.Logf("TeardownBottle took %v", time.Since(start))
	assertVethsGone(t, veths)
	held.Close()
	// The firewall and the slot are separate.
	if err := m.RemoveFirewall(ctx, b.identity); err != nil {
		t.Fatal(err)
	}
	if err := m.ReleaseSlot(b.identity); err != nil {
		t.Fatal(err)
	}
	b.assertGone(ctx)

	if err := b.teardownBottle(ctx); err != nil {
		t.Fatalf("second TeardownBottle (idempotent): %v", err)
	}
	b.assertGone(ctx)

	// Bad input names the bottle and touches nothing.
	other := newTestBottle(t, m, freeTestPool(t))
	err = m.TeardownBottle(ctx, b.identity, map[string][]Attachment{other.agentName(): nil}, nil)
	if err == nil || !strings.Contains(err.Error(), b.identity) {
		t.Errorf("TeardownBottle with another bottle's container: %v, want an error naming %s", err, b.identity)
	}
	if err := m.TeardownBottle(ctx, b.identity, nil, []Network{other.internal}); err == nil {
		t.Error("TeardownBottle accepted another bottle's network")
	}
}

// TestE2ETeardownBottlePartial tears down bottles whose start stopped half way.
func TestE2ETeardownBottlePartial(t *testing.T) {
	m := e2eManager(t)
	ctx := context.Background()
	pool := freeTestPool(t)

	// Only the agent was set up: no egress bridge, no sidecar netns.
	agentOnly := newTestBottle(t, m, pool)
	if _, _, err := m.Setup(ctx, agentOnly.agentName(), agentOnly.agentAtts()); err != nil {
		t.Fatal(err)
	}
	agentVeths := agentOnly.hostVeths(1)

	// The sidecar was set up, then its netns file vanished (its cache results, masquerade
	// rule and bridges remain); the agent never was.
	sidecarOnly := newTestBottle(t, m, pool)
	if _, _, err := m.Setup(ctx, sidecarOnly.sidecarName(), sidecarOnly.sidecarAtts()); err != nil {
		t.Fatal(err)
	}
	sidecarVeths := sidecarOnly.hostVeths(2)
	if err := removeNetnsFile(m.NetnsPath(sidecarOnly.sidecarName())); err != nil {
		t.Fatal(err)
	}

	for _, b := range []*testBottle{agentOnly, sidecarOnly} {
		if err := b.teardownBottle(ctx); err != nil {
			t.Fatalf("TeardownBottle of %s: %v", b.identity, err)
		}
		if err := m.RemoveFirewall(ctx, b.identity); err != nil {
			t.Fatal(err)
		}
		if err := m.ReleaseSlot(b.identity); err != nil {
			t.Fatal(err)
		}
		b.assertGone(ctx)
		if err := b.teardownBottle(ctx); err != nil {
			t.Fatalf("second TeardownBottle of %s: %v", b.identity, err)
		}
	}
	assertVethsGone(t, agentVeths)
	assertVethsGone(t, sidecarVeths)
}

// BenchmarkTeardownBottle measures taking down a bottle's networking (agent on internal,
// sidecar on internal + egress) the old way (Teardown of each container concurrently, then
// RemoveNetworks, as internal/runtime did) and with TeardownBottle. Setup is not timed.
func BenchmarkTeardownBottle(b *testing.B) {
	m, id, in, eg := benchBottle(b, 1)
	ctx := context.Background()
	agentAtt, _ := in.Attach("eth0", HostAgent)
	sideIn, _ := in.Attach("eth0", HostFilter)
	sideEg, _ := eg.Attach("eth1", HostFilter)
	containers := map[string][]Attachment{
		"bottle-" + id:             {agentAtt},
		"bottle-" + id + "-filter": {sideIn, sideEg},
	}
	nets := []Network{in, eg}
	b.Cleanup(func() { _ = m.TeardownBottle(ctx, id, containers, nets) })
	setup := func(b *testing.B) {
		b.StopTimer()
		for name, atts := range containers {
			if _, _, err := m.Setup(ctx, name, atts); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
	}
	b.Run("old", func(b *testing.B) {
		for range b.N {
			setup(b)
			errs := make(chan error, len(containers))
			for name, atts := range containers {
				go func() { errs <- m.Teardown(ctx, name, atts) }()
			}
			for range containers {
				if err := <-errs; err != nil {
					b.Fatal(err)
				}
			}
			if err := m.RemoveNetworks(ctx, id, nets); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("new", func(b *testing.B) {
		for range b.N {
			setup(b)
			if err := m.TeardownBottle(ctx, id, containers, nets); err != nil {
				b.Fatal(err)
			}
		}
	})
}
