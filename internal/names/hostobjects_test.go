package names

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
)

func TestNewOwner(t *testing.T) {
	a, err := NewOwner("/var/lib/bottle", "bottle")
	if err != nil {
		t.Fatal(err)
	}
	if !IsOwnerID(a.ID) || a.StateDir != "/var/lib/bottle" || a.Namespace != "bottle" {
		t.Errorf("NewOwner = %+v", a)
	}
	for _, o := range [][2]string{{"/var/lib/bottle/", "bottle"}, {"/var/lib/../lib/bottle", "bottle"}} {
		if b, _ := NewOwner(o[0], o[1]); b != a {
			t.Errorf("NewOwner(%q) = %+v, want the same owner as %+v", o[0], b, a)
		}
	}
	for _, o := range [][2]string{{"/var/lib/bottle2", "bottle"}, {"/var/lib/bottle", "bottle-e2e"}} {
		if b, _ := NewOwner(o[0], o[1]); b.ID == a.ID {
			t.Errorf("NewOwner(%q, %q) has the ID of %+v", o[0], o[1], a)
		}
	}
	for _, s := range []string{"", "0f0f0", "0F0F0F", "0f0f0f0", LegacyOwner} {
		if IsOwnerID(s) {
			t.Errorf("IsOwnerID(%q) = true", s)
		}
	}
}

func TestHostObjectNames(t *testing.T) {
	const id Identity = "claude-a1b2c3"
	sum := sha256.Sum256([]byte(id))
	hash := hex.EncodeToString(sum[:])
	for got, want := range map[string]string{
		NetworkName("0f0f0f", id, NetInternal):   "bottle-0f0f0f-claude-a1b2c3-int",
		NetworkName("0f0f0f", id, NetEgress):     "bottle-0f0f0f-claude-a1b2c3-egr",
		BridgeName("0f0f0f", id, NetInternal):    "bi-0f0f0f" + hash[:6],
		BridgeName("0f0f0f", id, NetEgress):      "be-0f0f0f" + hash[:6],
		BridgeName("", id, NetInternal):          "bi-" + hash[:8],
		ChainName("0f0f0f", id):                  "BOTTLE-0f0f0f-" + hash[:6],
		ChainName("", id):                        "BOTTLE-" + hash[:8],
		NetnsFile("bottle-claude-a1b2c3-filter"): "bottle-bottle-claude-a1b2c3-filter",
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	if b := BridgeName("0f0f0f", id, NetEgress); len(b) > 15 {
		t.Errorf("bridge name %q longer than an interface name may be", b)
	}
	if c := ChainName("0f0f0f", id); len(c) > 28 {
		t.Errorf("chain name %q longer than an iptables chain name may be", c)
	}
	// Two owners' bottles of one identity share no name.
	for _, pair := range [][2]string{
		{NetworkName("0f0f0f", id, NetInternal), NetworkName("1e1e1e", id, NetInternal)},
		{BridgeName("0f0f0f", id, NetInternal), BridgeName("1e1e1e", id, NetInternal)},
		{ChainName("0f0f0f", id), ChainName("1e1e1e", id)},
	} {
		if pair[0] == pair[1] {
			t.Errorf("owners share name %q", pair[0])
		}
	}
	if !IsBridgeOf(BridgeName("0f0f0f", id, NetEgress), "0f0f0f", NetEgress) ||
		IsBridgeOf(BridgeName("0f0f0f", id, NetEgress), "0f0f0f", NetInternal) ||
		IsBridgeOf(BridgeName("0f0f0f", id, NetEgress), "1e1e1e", NetEgress) {
		t.Error("IsBridgeOf tells bridges apart wrongly")
	}
	if c, ok := ContainerOfNetnsFile(NetnsFile("bottle-claude-a1b2c3")); !ok || c != "bottle-claude-a1b2c3" {
		t.Errorf("ContainerOfNetnsFile = %q, %v", c, ok)
	}
	if _, ok := ContainerOfNetnsFile("other"); ok {
		t.Error("ContainerOfNetnsFile accepted a file without the prefix")
	}
}

func TestParseHostObjectNames(t *testing.T) {
	for name, want := range map[string][2]string{
		"bottle-0f0f0f-claude-a1b2c3-int": {"0f0f0f", "claude-a1b2c3"},
		"bottle-0f0f0f-claude-a1b2c3-egr": {"0f0f0f", "claude-a1b2c3"},
		"bottle-claude-a1b2c3-int":        {"", "claude-a1b2c3"}, // legacy
		"bottle-claude-a1b2c3":            {},
		"bottle-0f0f0f-claude-a1b2c3":     {},
		"mynet":                           {},
	} {
		owner, id, ok := ParseNetworkName(name)
		if owner != want[0] || string(id) != want[1] || ok != (want[1] != "") {
			t.Errorf("ParseNetworkName(%q) = %q, %q, %v; want %q", name, owner, id, ok, want)
		}
	}
	for name, want := range map[string][2]string{
		"bi-0f0f0fa1b2c3":       {"0f0f0f", "a1b2c3"},
		"be-0f0f0fa1b2c3":       {"0f0f0f", "a1b2c3"},
		"bi-a1b2c3d4":           {"", "a1b2c3d4"}, // legacy
		"bx-0f0f0fa1b2c3":       {},
		"bi-0f0f0fa1b2c":        {},
		"BOTTLE-0f0f0f-a1b2c3":  {"0f0f0f", "a1b2c3"},
		"BOTTLE-a1b2c3d4":       {"", "a1b2c3d4"}, // legacy
		"BOTTLE-SOMETHING-ELSE": {},
	} {
		parse := ParseBridgeName
		if name[0] == 'B' {
			parse = ParseChainName
		}
		owner, hash, ok := parse(name)
		if owner != want[0] || hash != want[1] || ok != (want[1] != "") {
			t.Errorf("parse %q = %q, %q, %v; want %q", name, owner, hash, ok, want)
		}
	}
	// What the makers write, the parsers read back.
	const id Identity = "my-agent-0a0b0c"
	if o, got, ok := ParseNetworkName(NetworkName("0f0f0f", id, NetEgress)); !ok || o != "0f0f0f" || got != id {
		t.Errorf("network name does not parse back: %q %q %v", o, got, ok)
	}
	for _, owner := range []string{"0f0f0f", ""} {
		if o, h, ok := ParseBridgeName(BridgeName(owner, id, NetInternal)); !ok || o != owner || h != NameHash(owner, id) {
			t.Errorf("bridge name of owner %q does not parse back: %q %q %v", owner, o, h, ok)
		}
		if o, h, ok := ParseChainName(ChainName(owner, id)); !ok || o != owner || h != NameHash(owner, id) {
			t.Errorf("chain name of owner %q does not parse back: %q %q %v", owner, o, h, ok)
		}
	}
}
