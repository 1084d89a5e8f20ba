package netns

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

const slotsDirName = "slots"

func slotsDir(stateDir string) string { return filepath.Join(stateDir, slotsDirName) }

// ReserveSlot reserves a free slot of pool for identity and returns it. A slot is free when
// no file stateDir/slots/<k> exists and neither of its two /24 overlaps an address or route
// of the host (another bottle's egress bridge, a VPN, the LAN, ...). The reservation is an
// exclusive create, so concurrent callers get different slots. If identity already holds a
// slot, that slot is returned.
func ReserveSlot(stateDir, identity string, pool netip.Prefix) (int, error) {
	if err := ValidateIdentity(identity); err != nil {
		return 0, err
	}
	n, err := SlotCount(pool)
	if err != nil {
		return 0, err
	}
	if slot, err := SlotOf(stateDir, identity); err == nil {
		return slot, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	dir := slotsDir(stateDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, fmt.Errorf("create slot directory %s: %w (check --state-dir and permissions)", dir, err)
	}
	hostNets, err := hostPrefixes()
	if err != nil {
		return 0, err
	}
	// Write the content first, then link it into place: link(2) fails with EEXIST like
	// O_EXCL, and readers never see a half-written slot file.
	tmp, err := os.CreateTemp(dir, ".reserve-*")
	if err != nil {
		return 0, fmt.Errorf("create temporary slot file in %s: %w", dir, err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName)
	if _, err := tmp.WriteString(identity + "\n"); err != nil {
		tmp.Close()
		return 0, fmt.Errorf("write temporary slot file %s: %w", tmpName, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return 0, fmt.Errorf("sync temporary slot file %s: %w", tmpName, err)
	}
	if err := tmp.Close(); err != nil {
		return 0, fmt.Errorf("close temporary slot file %s: %w", tmpName, err)
	}
	var clashes []string
	for k := range n {
		in, eg, _ := SlotSubnets(k, pool)
		if p, ok := overlapsAny(hostNets, in, eg); ok {
			if len(clashes) < 3 {
				clashes = append(clashes, fmt.Sprintf("slot %d overlaps host network %s", k, p))
			}
			continue
		}
		err := os.Link(tmpName, filepath.Join(dir, strconv.Itoa(k)))
		if err == nil {
			return k, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return 0, fmt.Errorf("reserve slot %d in %s: %w", k, dir, err)
		}
	}
	hint := ""
	if len(clashes) > 0 {
		hint = " (" + strings.Join(clashes, "; ") + ")"
	}
	return 0, fmt.Errorf("no free slot in subnet pool %s: all %d slots are reserved in %s or overlap host networks%s; remove bottles you no longer need (`bottle rm ID`), run `bottle cleanup` for leftovers, or choose another pool with --pool", pool, n, dir, hint)
}

// SlotOf returns the slot reserved for identity; the error wraps fs.ErrNotExist if none.
func SlotOf(stateDir, identity string) (int, error) {
	slots, err := listSlots(stateDir)
	if err != nil {
		return 0, err
	}
	for k, id := range slots {
		if id == identity {
			return k, nil
		}
	}
	return 0, fmt.Errorf("no slot reserved for bottle %s in %s: %w", identity, slotsDir(stateDir), fs.ErrNotExist)
}

// ReleaseSlot removes the slot reservation of identity; releasing a missing one is fine.
func ReleaseSlot(stateDir, identity string) error {
	slots, err := listSlots(stateDir)
	if err != nil {
		return err
	}
	for k, id := range slots {
		if id != identity {
			continue
		}
		p := filepath.Join(slotsDir(stateDir), strconv.Itoa(k))
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("release slot %d of bottle %s (%s): %w", k, identity, p, err)
		}
	}
	return nil
}

// listSlots maps reserved slot numbers to the identity recorded in each slot file.
func listSlots(stateDir string) (map[int]string, error) {
	dir := slotsDir(stateDir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return map[int]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read slot directory %s: %w", dir, err)
	}
	out := make(map[int]string, len(entries))
	for _, e := range entries {
		k, err := strconv.Atoi(e.Name())
		if err != nil || k < 0 || strconv.Itoa(k) != e.Name() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read slot file %s: %w", filepath.Join(dir, e.Name()), err)
		}
		out[k] = strings.TrimSpace(string(b))
	}
	return out, nil
}

func overlapsAny(hostNets []netip.Prefix, subnets ...netip.Prefix) (netip.Prefix, bool) {
	for _, h := range hostNets {
		for _, s := range subnets {
			if h.Overlaps(s) {
				return h, true
			}
		}
	}
	return netip.Prefix{}, false
}

// hostPrefixes lists the IPv4 prefixes in use on the host: interface addresses (with their
// subnet) and every non-default route of every routing table.
func hostPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("list host addresses to avoid subnet clashes: %w", err)
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if !ip.Is4() {
			continue
		}
		ones, _ := ipn.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, ones).Masked())
	}
	routes, err := hostRoutes()
	if err != nil {
		return nil, err
	}
	for _, r := range routes {
		if r.Bits() > 0 {
			out = append(out, r)
		}
	}
	return out, nil
}

// hostRoutes reads IPv4 route destinations from all tables with `ip -j route`, falling back
// to /proc/net/route (main table only) when iproute2 is missing.
func hostRoutes() ([]netip.Prefix, error) {
	ipBin, err := exec.LookPath("ip")
	if err != nil {
		return procNetRoutes()
	}
	out, err := exec.Command(ipBin, "-j", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		return nil, fmt.Errorf("list host routes (ip -j -4 route show table all) to avoid subnet clashes: %w", err)
	}
	var entries []struct {
		Dst string `json:"dst"`
	}
	if err := json.Unmarshal(out, &entries); err != nil {
		return nil, fmt.Errorf("parse output of ip -j -4 route: %w", err)
	}
	var prefixes []netip.Prefix
	for _, e := range entries {
		if e.Dst == "" || e.Dst == "default" {
			continue
		}
		if p, err := netip.ParsePrefix(e.Dst); err == nil {
			prefixes = append(prefixes, p.Masked())
		} else if a, err := netip.ParseAddr(e.Dst); err == nil {
			prefixes = append(prefixes, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return prefixes, nil
}

func procNetRoutes() ([]netip.Prefix, error) {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return nil, fmt.Errorf("list host routes (/proc/net/route) to avoid subnet clashes: %w", err)
	}
	defer f.Close()
	var out []netip.Prefix
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 {
			continue
		}
		dst, err1 := hex.DecodeString(fields[1])
		mask, err2 := hex.DecodeString(fields[7])
		if err1 != nil || err2 != nil || len(dst) != 4 || len(mask) != 4 {
			continue
		}
		// The kernel prints the network-order words as little-endian hex: reverse the bytes.
		a := netip.AddrFrom4([4]byte{dst[3], dst[2], dst[1], dst[0]})
		ones, _ := net.IPv4Mask(mask[3], mask[2], mask[1], mask[0]).Size()
		out = append(out, netip.PrefixFrom(a, ones).Masked())
	}
	return out, sc.Err()
}

// FirstFreeSlot returns the first slot of pool that is neither reserved in stateDir nor
// overlapping a host network, without reserving it (for `bottle doctor`).
func FirstFreeSlot(stateDir string, pool netip.Prefix) (int, error) {
	n, err := SlotCount(pool)
	if err != nil {
		return 0, err
	}
	taken, err := listSlots(stateDir)
	if err != nil {
		return 0, err
	}
	hostNets, err := hostPrefixes()
	if err != nil {
		return 0, err
	}
	for k := range n {
		in, eg, _ := SlotSubnets(k, pool)
		if _, ok := taken[k]; ok {
			continue
		}
		if _, ok := overlapsAny(hostNets, in, eg); ok {
			continue
		}
		return k, nil
	}
	return 0, fmt.Errorf("no free slot in subnet pool %s: %d reserved in %s, the rest overlap host networks; remove bottles you no longer need (`bottle rm ID`), run `bottle cleanup` for leftovers, or choose another pool with --pool", pool, len(taken), slotsDir(stateDir))
}
