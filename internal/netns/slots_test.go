package netns

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

	"github.com/bottle-dev/bottle/internal/testutil"
)

// freeTestPool returns a /20 in 10.254.0.0/16 that overlaps nothing on this host.
func freeTestPool(t *testing.T) netip.Prefix {
	t.Helper()
	host, err := hostPrefixes()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 16; i++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 254, byte(i * 16), 0}), 20)
		if _, clash := overlapsAny(host, p); !clash {
			return p
		}
	}
	t.Fatalf("no free /20 in 10.254.0.0/16 on this host (routes: %v)", host)
	return netip.Prefix{}
}

func TestReserveSlotConcurrent(t *testing.T) {
	dir := t.TempDir()
	pool := freeTestPool(t) // 8 slots
	const n = 8
	var wg sync.WaitGroup
	slots := make([]int, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots[i], errs[i] = ReserveSlot(dir, fmt.Sprintf("agent-%06x", i), pool)
		}()
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
		got, err := SlotOf(dir, fmt.Sprintf("agent-%06x", i))
		if err != nil || got != slots[i] {
			t.Errorf("SlotOf(%d) = %d, %v; want %d", i, got, err, slots[i])
		}
	}
	// The pool is full now.
	if _, err := ReserveSlot(dir, "agent-ffffff", pool); err == nil || !strings.Contains(err.Error(), "no free slot") {
		t.Errorf("reserve in full pool: %v", err)
	}
	// Reserving again returns the same slot.
	if again, err := ReserveSlot(dir, "agent-000003", pool); err != nil || again != slots[3] {
		t.Errorf("re-reserve = %d, %v; want %d", again, err, slots[3])
	}
	// Release frees exactly that slot, which the next reservation gets; release is idempotent.
	if err := ReleaseSlot(dir, "agent-000003"); err != nil {
		t.Fatal(err)
	}
	if err := ReleaseSlot(dir, "agent-000003"); err != nil {
		t.Errorf("second release: %v", err)
	}
	if _, err := SlotOf(dir, "agent-000003"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("SlotOf after release: %v", err)
	}
	if k, err := ReserveSlot(dir, "agent-ffffff", pool); err != nil || k != slots[3] {
		t.Errorf("reserve after release = %d, %v; want %d", k, err, slots[3])
	}
	b, err := os.ReadFile(filepath.Join(dir, "slots", fmt.Sprint(slots[3])))
	if err != nil || strings.TrimSpace(string(b)) != "agent-ffffff" {
		t.Errorf("slot file holds %q, %v", b, err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "slots"))
	if len(entries) != n {
		t.Errorf("slots dir has %d entries (temporary files left?), want %d", len(entries), n)
	}
}

func TestReserveSlotSkipsHostNetworks(t *testing.T) {
	// 127.0.0.0/8 is on every host's lo (local table): a pool inside it is all taken.
	_, err := ReserveSlot(t.TempDir(), "agent-abcdef", netip.MustParsePrefix("127.100.0.0/22"))
	if err == nil || !strings.Contains(err.Error(), "overlaps host network") {
		t.Fatalf("want overlap error, got %v", err)
	}
	host := []netip.Prefix{netip.MustParsePrefix("10.254.1.0/24")}
	in, eg, _ := SlotSubnets(0, netip.MustParsePrefix("10.254.0.0/20"))
	if _, ok := overlapsAny(host, in, eg); !ok {
		t.Error("egress /24 overlap not detected")
	}
	in, eg, _ = SlotSubnets(1, netip.MustParsePrefix("10.254.0.0/20"))
	if _, ok := overlapsAny(host, in, eg); ok {
		t.Error("slot 1 wrongly overlaps")
	}
}

func TestProcNetRoutes(t *testing.T) {
	if _, err := os.Stat("/proc/net/route"); err != nil {
		testutil.Missing(t, "/proc/net/route")
	}
	fromProc, err := procNetRoutes()
	if err != nil {
		t.Fatal(err)
	}
	fromIP, err := hostRoutes()
	if err != nil {
		t.Fatal(err)
	}
	set := map[netip.Prefix]bool{}
	for _, p := range fromIP {
		set[p] = true
	}
	for _, p := range fromProc {
		if p.Bits() > 0 && !set[p] {
			t.Errorf("/proc/net/route has %s, ip route does not (%v)", p, fromIP)
		}
	}
}
