package netns

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/slots"
	"github.com/containernetworking/cni/libcni"
)

func TestBottleNetworks(t *testing.T) {
	const id = "claude-a1b2c3"
	sum := sha256.Sum256([]byte(id))
	hash := hex.EncodeToString(sum[:])[:6]
	m := &Manager{owner: names.Owner{ID: "0f0f0f"}}
	cases := []struct {
		slot        int
		in, eg      string
		expectError bool
	}{
		{slot: 0, in: "10.213.0.0/24", eg: "10.213.1.0/24"},
		{slot: 3, in: "10.213.6.0/24", eg: "10.213.7.0/24"},
		{slot: 127, in: "10.213.254.0/24", eg: "10.213.255.0/24"},
		{slot: 128, expectError: true},
		{slot: -1, expectError: true},
	}
	for _, c := range cases {
		in, eg, err := m.BottleNetworks(id, c.slot, slots.DefaultPool)
		if c.expectError {
			if err == nil {
				t.Errorf("slot %d: want error, got %+v %+v", c.slot, in, eg)
			}
			continue
		}
		if err != nil {
			t.Fatalf("slot %d: %v", c.slot, err)
		}
		want := []Network{
			{Name: "bottle-0f0f0f-" + id + "-int", Bridge: "bi-0f0f0f" + hash, Subnet: netip.MustParsePrefix(c.in)},
			{Name: "bottle-0f0f0f-" + id + "-egr", Bridge: "be-0f0f0f" + hash, Subnet: netip.MustParsePrefix(c.eg), Egress: true},
		}
		if in != want[0] || eg != want[1] {
			t.Errorf("slot %d: got %+v %+v, want %+v", c.slot, in, eg, want)
		}
		if err := in.validate(); err != nil {
			t.Errorf("internal network does not validate: %v", err)
		}
		if err := eg.validate(); err != nil {
			t.Errorf("egress network does not validate: %v", err)
		}
	}
	if len(in0(t, m).Bridge) > 15 {
		t.Errorf("bridge name %q longer than 15 bytes", in0(t, m).Bridge)
	}
	if _, _, err := m.BottleNetworks("Bad_ID", 0, slots.DefaultPool); err == nil {
		t.Error("invalid identity accepted")
	}
	for _, pool := range []string{"10.213.0.0/24", "fd00::/48", "10.213.0.1/16"} {
		if _, _, err := m.BottleNetworks(id, 0, netip.MustParsePrefix(pool)); err == nil {
			t.Errorf("pool %s accepted", pool)
		}
	}
	if n, err := slots.SlotCount(netip.MustParsePrefix("10.254.0.0/20")); err != nil || n != 8 {
		t.Errorf("slots.SlotCount(/20) = %d, %v; want 8", n, err)
	}
	if got := m.FirewallChain(id); got != "BOTTLE-0f0f0f-"+hash || len(got) > 28 {
		t.Errorf("FirewallChain = %q", got)
	}
	// Two owners' bottles of one identity share no name.
	other := &Manager{owner: names.Owner{ID: "1e1e1e"}}
	a, _, _ := m.BottleNetworks(id, 0, slots.DefaultPool)
	b, _, _ := other.BottleNetworks(id, 0, slots.DefaultPool)
	if a.Name == b.Name || a.Bridge == b.Bridge || m.FirewallChain(id) == other.FirewallChain(id) {
		t.Errorf("owners share names: %+v %+v", a, b)
	}
}

func in0(t *testing.T, m *Manager) Network {
	t.Helper()
	in, _, err := m.BottleNetworks("claude-a1b2c3", 0, slots.DefaultPool)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// conflist mirrors the parts of the rendered conflist that matter.
type conflist struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Plugins    []struct {
		Type             string `json:"type"`
		Bridge           string `json:"bridge"`
		IsGateway        *bool  `json:"isGateway"`
		IsDefaultGateway *bool  `json:"isDefaultGateway"`
		IPMasq           *bool  `json:"ipMasq"`
		HairpinMode      *bool  `json:"hairpinMode"`
		IPAM             struct {
			Type      string `json:"type"`
			Addresses []struct {
				Address string `json:"address"`
				Gateway string `json:"gateway"`
			} `json:"addresses"`
			Routes []any `json:"routes"`
		} `json:"ipam"`
	} `json:"plugins"`
}

func render(t *testing.T, a Attachment) conflist {
	t.Helper()
	b, err := RenderConflist(a)
	if err != nil {
		t.Fatalf("RenderConflist: %v", err)
	}
	if _, err := libcni.ConfListFromBytes(b); err != nil {
		t.Fatalf("libcni rejects rendered conflist: %v\n%s", err, b)
	}
	var c conflist
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("decode: %v\n%s", err, b)
	}
	if len(c.Plugins) != 1 {
		t.Fatalf("want exactly one plugin (bridge, no portmap/firewall), got %d:\n%s", len(c.Plugins), b)
	}
	return c
}

func TestRenderConflist(t *testing.T) {
	in, eg, err := (&Manager{owner: names.Owner{ID: "0f0f0f"}}).BottleNetworks("claude-a1b2c3", 2, slots.DefaultPool)
	if err != nil {
		t.Fatal(err)
	}
	ia, err := in.Attach("eth0", HostAgent)
	if err != nil {
		t.Fatal(err)
	}
	c := render(t, ia)
	p := c.Plugins[0]
	if c.CNIVersion != "1.0.0" || c.Name != "bottle-0f0f0f-claude-a1b2c3-int" || p.Type != "bridge" || p.Bridge != in.Bridge {
		t.Errorf("internal header wrong: %+v", c)
	}
	if p.IsGateway == nil || *p.IsGateway || p.IsDefaultGateway == nil || *p.IsDefaultGateway || p.IPMasq == nil || *p.IPMasq {
		t.Errorf("internal network must set isGateway, isDefaultGateway, ipMasq explicitly false: %+v", p)
	}
	if p.IPAM.Type != "static" || len(p.IPAM.Addresses) != 1 || p.IPAM.Addresses[0].Address != "10.213.4.10/24" || p.IPAM.Addresses[0].Gateway != "" || p.IPAM.Routes != nil {
		t.Errorf("internal IPAM wrong (want static 10.213.4.10/24, no gateway, no routes): %+v", p.IPAM)
	}

	ea, err := eg.Attach("eth1", HostFilter)
	if err != nil {
		t.Fatal(err)
	}
	c = render(t, ea)
	p = c.Plugins[0]
	if c.Name != "bottle-0f0f0f-claude-a1b2c3-egr" || p.Bridge != eg.Bridge {
		t.Errorf("egress header wrong: %+v", c)
	}
	// Masquerade is the bottle's one nat chain (firewall.Install), not a chain per container.
	if p.IsGateway == nil || !*p.IsGateway || p.IsDefaultGateway == nil || !*p.IsDefaultGateway || p.IPMasq == nil || *p.IPMasq {
		t.Errorf("egress network must set isGateway, isDefaultGateway true and ipMasq explicitly false: %+v", p)
	}
	if p.IPAM.Type != "static" || len(p.IPAM.Addresses) != 1 || p.IPAM.Addresses[0].Address != "10.213.5.2/24" || p.IPAM.Addresses[0].Gateway != "10.213.5.1" {
		t.Errorf("egress IPAM wrong (want static 10.213.5.2/24 gw 10.213.5.1): %+v", p.IPAM)
	}

	bad := ia
	bad.Addr = netip.MustParseAddr("10.213.9.10")
	if _, err := RenderConflist(bad); err == nil {
		t.Error("address outside the subnet accepted")
	}
	bad = ia
	bad.Name = `bottle-x","type":"evil`
	if _, err := RenderConflist(bad); err == nil {
		t.Error("network name with quotes accepted")
	}
}

func TestNormalize(t *testing.T) {
	m := &Manager{owner: names.Owner{ID: "0f0f0f"}}
	in, eg, _ := m.BottleNetworks("claude-a1b2c3", 0, slots.DefaultPool)
	a, _ := in.Attach("", HostFilter)
	b, _ := eg.Attach("", HostFilter)
	other, _, _ := (&Manager{owner: names.Owner{ID: "1e1e1e"}}).BottleNetworks("claude-a1b2c3", 0, slots.DefaultPool)
	got, err := m.normalize([]Attachment{a, b})
	if err != nil || got[0].IfName != "eth0" || got[1].IfName != "eth1" {
		t.Fatalf("normalize = %+v, %v", got, err)
	}
	for name, atts := range map[string][]Attachment{
		"empty":         nil,
		"out of order":  {{Network: in, IfName: "eth1", Addr: a.Addr}},
		"gateway addr":  {a, {Network: eg, IfName: "eth1", Addr: eg.Gateway()}},
		"network addr":  {{Network: in, Addr: in.Subnet.Addr()}},
		"twice":         {a, {Network: in, Addr: a.Addr}},
		"two egress":    {b, b},
		"bad interface": {{Network: in, IfName: "wlan0", Addr: a.Addr}},
		"other owner":   {{Network: other, Addr: a.Addr}},
	} {
		if _, err := m.normalize(atts); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestNewRequiresPlugins(t *testing.T) {
	empty1, empty2 := t.TempDir(), t.TempDir()
	_, err := New(Options{PluginDirs: []string{empty1, empty2, "/nonexistent/cni"}})
	if err == nil {
		t.Fatal("New accepted plugin directories without the bridge plugin")
	}
	for _, want := range []string{`"bridge"`, empty1, empty2, "install"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

// Host parts of test containers' addresses, as the plan assigns them.
const (
	HostFilter = 2
	HostAgent  = 10
)
