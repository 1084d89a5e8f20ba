package slots

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bottle-dev/bottle/internal/names"
)

// freeTestPool returns a /20 in 10.254.0.0/16 that overlaps nothing on this host.
func freeTestPool(t *testing.T) netip.Prefix {
	t.Helper()
	host, err := HostPrefixes()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 16; i++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 254, byte(i * 16), 0}), 20)
		if _, clash := Overlap(host, p); !clash {
			return p
		}
	}
	t.Fatalf("no free /20 in 10.254.0.0/16 on this host (routes: %v)", host)
	return netip.Prefix{}
}

// store is the Store of owner (stateDir, "test") on the slot dir slotDir.
func store(t *testing.T, slotDir, stateDir string) Store {
	t.Helper()
	o, err := names.NewOwner(stateDir, "test")
	if err != nil {
		t.Fatal(err)
	}
	return Store{Dir: slotDir, Owner: o}
}

func TestReserveSlotConcurrent(t *testing.T) {
	dir := t.TempDir()
	pool := freeTestPool(t) // 8 slots
	// Two owners share the slot dir: the pool is host-wide.
	owners := []Store{store(t, dir, "/state/a"), store(t, dir, "/state/b")}
	const n = 8
	var wg sync.WaitGroup
	slots := make([]int, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			slots[i], errs[i] = owners[i%2].Reserve(fmt.Sprintf("agent-%06x", i), pool)
		})
	}
	wg.Wait()
	seen := map[int]int{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("reserve %d: %v", i, errs[i])
		}
		if j, dup := seen[slots[i]]; dup {
			t.Fatalf("identities %d and %d both got slot %d", i, j, slots[i])
		}
		seen[slots[i]] = i
		got, err := owners[i%2].SlotOf(fmt.Sprintf("agent-%06x", i), pool)
		if err != nil || got != slots[i] {
			t.Errorf("SlotOf(%d) = %d, %v; want %d", i, got, err, slots[i])
		}
		if _, err := owners[(i+1)%2].SlotOf(fmt.Sprintf("agent-%06x", i), pool); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the other owner sees slot of %d: %v", i, err)
		}
	}
	a := owners[0]
	// The pool is full now, for every owner.
	if _, err := a.Reserve("agent-ffffff", pool); err == nil || !strings.Contains(err.Error(), "no free slot") {
		t.Errorf("reserve in full pool: %v", err)
	}
	// Reserving again returns the same slot; another pool is refused.
	if again, err := a.Reserve("agent-000002", pool); err != nil || again != slots[2] {
		t.Errorf("re-reserve = %d, %v; want %d", again, err, slots[2])
	}
	if _, err := a.Reserve("agent-000002", DefaultPool); err == nil {
		t.Error("re-reserve in another pool accepted")
	}
	// The other owner cannot release it; its owner releases exactly that slot, which the
	// next reservation gets; release is idempotent.
	if err := owners[1].Release("agent-000002"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SlotOf("agent-000002", pool); err != nil {
		t.Errorf("another owner released the slot: %v", err)
	}
	if err := a.Release("agent-000002"); err != nil {
		t.Fatal(err)
	}
	if err := a.Release("agent-000002"); err != nil {
		t.Errorf("second release: %v", err)
	}
	if _, err := a.SlotOf("agent-000002", pool); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("SlotOf after release: %v", err)
	}
	if k, err := owners[1].Reserve("agent-ffffff", pool); err != nil || k != slots[2] {
		t.Errorf("reserve after release = %d, %v; want %d", k, err, slots[2])
	}
	in, _, _ := Subnets(slots[2], pool)
	b, err := os.ReadFile(filepath.Join(dir, in.Addr().String()))
	if err != nil || !strings.Contains(string(b), `"identity":"agent-ffffff"`) || !strings.Contains(string(b), `"state_dir":"/state/b"`) || !strings.Contains(string(b), `"owner":"`+owners[1].Owner.ID+`"`) {
		t.Errorf("slot file holds %q, %v", b, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != n {
		t.Errorf("slots dir has %d entries (temporary files left?), want %d", len(entries), n)
	}
	foreign, err := a.Foreign()
	if err != nil || len(foreign) != n/2+1 || foreign["agent-ffffff"].StateDir != "/state/b" {
		t.Errorf("ForeignBottles = %v, %v", foreign, err)
	}
	if k, err := FirstFree(dir, pool); err == nil {
		t.Errorf("FirstFreeSlot in a full pool = %d", k)
	}
}

func TestSlotsAcrossPools(t *testing.T) {
	dir := t.TempDir()
	m := store(t, dir, "/state/a")
	big := freeTestPool(t)
	// The second /23 of big is slot 0 of this pool and slot 1 of big: one slot file.
	small := netip.PrefixFrom(netip.AddrFrom4([4]byte{big.Addr().As4()[0], big.Addr().As4()[1], big.Addr().As4()[2] + 2, 0}), 23)
	if k, err := m.Reserve("agent-000001", small); err != nil || k != 0 {
		t.Fatalf("reserve in %s = %d, %v", small, k, err)
	}
	for _, id := range []string{"agent-000002", "agent-000003"} {
		if k, err := m.Reserve(id, big); err != nil || k == 1 {
			t.Errorf("reserve %s in %s = %d, %v; slot 1 is slot 0 of %s, taken", id, big, k, err, small)
		}
	}
}

func TestReserveSlotSkipsHostNetworks(t *testing.T) {
	// 127.0.0.0/8 is on every host's lo (local table): a pool inside it is all taken.
	_, err := store(t, t.TempDir(), "/state/a").Reserve("agent-abcdef", netip.MustParsePrefix("127.100.0.0/22"))
	if err == nil || !strings.Contains(err.Error(), "overlaps host network") {
		t.Fatalf("want overlap error, got %v", err)
	}
	host := []netip.Prefix{netip.MustParsePrefix("10.254.1.0/24")}
	in, eg, _ := Subnets(0, netip.MustParsePrefix("10.254.0.0/20"))
	if _, ok := Overlap(host, in, eg); !ok {
		t.Error("egress /24 overlap not detected")
	}
	in, eg, _ = Subnets(1, netip.MustParsePrefix("10.254.0.0/20"))
	if _, ok := Overlap(host, in, eg); ok {
		t.Error("slot 1 wrongly overlaps")
	}
}
