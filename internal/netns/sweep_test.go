package netns

import (
	"context"
	"errors"
	"io/fs"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/slots"
)

// freeTestPool returns a /20 in 10.254.0.0/16 that overlaps nothing on this host.
func freeTestPool(t *testing.T) netip.Prefix {
	t.Helper()
	host, err := slots.HostPrefixes()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 16; i++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 254, byte(i * 16), 0}), 20)
		if _, clash := slots.Overlap(host, p); !clash {
			return p
		}
	}
	t.Fatalf("no free /20 in 10.254.0.0/16 on this host (routes: %v)", host)
	return netip.Prefix{}
}

// TestSweepKeepsSlotOfFailedBottle: when an object of a bottle cannot be removed, its slot
// stays (its record tells other owners the objects are not orphaned); other slots go.
func TestSweepKeepsSlotOfFailedBottle(t *testing.T) {
	dir := t.TempDir()
	o, err := names.NewOwner("/state/a", "test")
	if err != nil {
		t.Fatal(err)
	}
	m := &Manager{owner: o, slots: slots.Store{Dir: dir, Owner: o}}
	m.netnsDir = filepath.Join(dir, "netns")
	pool := freeTestPool(t)
	var left Leftovers
	for _, id := range []string{"agent-000001", "agent-000002"} {
		k, err := m.ReserveSlot(id, pool)
		if err != nil {
			t.Fatal(err)
		}
		left = append(left, Leftover{Kind: KindSlot, Name: filepath.Join(dir, slots.File(k, pool)), Owner: m.owner.ID, Identity: id})
	}
	// "lo" is no bottle bridge: deleteBridge refuses it without touching it.
	left = append(left, Leftover{Kind: KindBridge, Name: "lo", Owner: m.owner.ID, Identity: "agent-000001"})
	if _, err := m.sweep(context.Background(), left, func(Leftover) bool { return true }); err == nil {
		t.Error("sweep reported no error for the bridge it refused")
	}
	if _, err := m.SlotOf("agent-000001", pool); err != nil {
		t.Errorf("slot of the bottle whose bridge failed released: %v", err)
	}
	if _, err := m.SlotOf("agent-000002", pool); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("slot of the other bottle kept: %v", err)
	}
}
