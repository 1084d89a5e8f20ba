// Package slots hands out per-bottle subnets: a pool of /24 pairs ("slots") and the
// host-wide reservations of them, one file per slot naming the bottle and its owner.
package slots

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/bottle-dev/bottle/internal/names"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultPool is the address pool slots are carved from (ARCHITECTURE.md).
var DefaultPool = netip.MustParsePrefix("10.213.0.0/16")

// DefaultDir holds the slot reservations of every state dir and namespace: subnets
// are a host-wide resource. (The default state dir's legacy slots are numbered files.)
const DefaultDir = "/var/lib/bottle/" + legacyDirName

// SlotCount is how many slots pool holds (two /24 per slot).
func SlotCount(pool netip.Prefix) (int, error) {
	if err := validatePool(pool); err != nil {
		return 0, err
	}
	return 1 << (24 - pool.Bits() - 1), nil
}

func validatePool(pool netip.Prefix) error {
	if !pool.IsValid() || !pool.Addr().Is4() || pool.Bits() > 23 || pool.Bits() < 8 {
		return fmt.Errorf("invalid subnet pool %s: want an IPv4 prefix between /8 and /23 (e.g. %s)", pool, DefaultPool)
	}
	if pool.Masked() != pool {
		return fmt.Errorf("invalid subnet pool %s: host bits set, use %s", pool, pool.Masked())
	}
	return nil
}

// Subnets returns the internal (2k-th /24) and egress ((2k+1)-th /24) subnets of slot k.
func Subnets(slot int, pool netip.Prefix) (internal, egress netip.Prefix, err error) {
	n, err := SlotCount(pool)
	if err != nil {
		return internal, egress, err
	}
	if slot < 0 || slot >= n {
		return internal, egress, fmt.Errorf("slot %d outside subnet pool %s (it holds slots 0..%d)", slot, pool, n-1)
	}
	base := pool.Addr().As4()
	baseInt := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	mk := func(index uint32) netip.Prefix {
		v := baseInt + index<<8
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), 0}), 24)
	}
	return mk(uint32(2 * slot)), mk(uint32(2*slot + 1)), nil
}

// legacyDirName is the slot directory inside a state dir of bottles started before slots
// were host-wide.
const legacyDirName = "slots"

// Record is the content of a slot file <SlotDir>/<address of the slot's internal /24>.
// The slot dir is shared by every state dir and namespace on the host, so that no two
// owners pick the same subnets; each record names its owner, and only it frees the slot.
type Record struct {
	Identity string `json:"identity"`
	names.Owner
	Pool string `json:"pool"`
}

// Store is the reservations of one owner in the host-wide slot directory.
type Store struct {
	Dir   string // DefaultDir if empty
	Owner names.Owner
}

func (s Store) dir() string { return cmp.Or(s.Dir, DefaultDir) }

// File is the file name of slot k of pool: the address of its internal /24. Pools are
// /23 or wider, so a slot is the same pair of /24s in every pool that holds it.
func File(k int, pool netip.Prefix) string {
	in, _, _ := Subnets(k, pool)
	return in.Addr().String()
}

// slotIndex is the slot number in pool of slot file name.
func slotIndex(name string, pool netip.Prefix) (int, bool) {
	a, err := netip.ParseAddr(name)
	if err != nil || !a.Is4() || !pool.Contains(a) {
		return 0, false
	}
	d := binary.BigEndian.Uint32(a.AsSlice()) - binary.BigEndian.Uint32(pool.Addr().AsSlice())
	if d%512 != 0 {
		return 0, false
	}
	return int(d / 512), true
}

// Reserve reserves a free slot of pool for identity and returns it. A slot is free when
// no slot file of its subnets exists (of any owner) and neither of its two /24 overlaps an
// address or route of the host (another bottle's egress bridge, a VPN, the LAN, ...). The
// reservation is an exclusive create, so concurrent callers get different slots. If
// identity already holds a slot, that slot is returned.
func (s Store) Reserve(identity string, pool netip.Prefix) (int, error) {
	if _, err := names.ParseIdentity(identity); err != nil {
		return 0, err
	}
	n, err := SlotCount(pool)
	if err != nil {
		return 0, err
	}
	if name, rec, err := s.slotOf(identity); err == nil {
		if k, ok := slotIndex(name, pool); ok && rec.Pool == pool.String() {
			return k, nil
		}
		return 0, fmt.Errorf("bottle %s holds slot %s of pool %s, not of pool %s: remove it (`bottle rm %s`) or use --pool %s", identity, name, rec.Pool, pool, identity, rec.Pool)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	dir := s.dir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, fmt.Errorf("create slot directory %s: %w (check permissions)", dir, err)
	}
	hostNets, err := HostPrefixes()
	if err != nil {
		return 0, err
	}
	content, err := json.Marshal(Record{Identity: identity, Owner: s.Owner, Pool: pool.String()})
	if err != nil {
		return 0, fmt.Errorf("encode slot record of bottle %s: %w", identity, err)
	}
	// Write the content first, then link it into place: link(2) fails with EEXIST like
	// O_EXCL, and readers never see a half-written slot file.
	tmp, err := os.CreateTemp(dir, ".reserve-*")
	if err != nil {
		return 0, fmt.Errorf("create temporary slot file in %s: %w", dir, err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName)
	if _, err := tmp.Write(append(content, '\n')); err != nil {
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
		in, eg, _ := Subnets(k, pool)
		if p, ok := Overlap(hostNets, in, eg); ok {
			if len(clashes) < 3 {
				clashes = append(clashes, fmt.Sprintf("slot %d overlaps host network %s", k, p))
			}
			continue
		}
		err := os.Link(tmpName, filepath.Join(dir, File(k, pool)))
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

// SlotOf returns the slot of pool reserved for identity; the error wraps fs.ErrNotExist if
// none.
func (s Store) SlotOf(identity string, pool netip.Prefix) (int, error) {
	name, _, err := s.slotOf(identity)
	if err != nil {
		return 0, err
	}
	k, ok := slotIndex(name, pool)
	if !ok {
		return 0, fmt.Errorf("slot %s of bottle %s is not in pool %s (use the pool it was started with)", name, identity, pool)
	}
	return k, nil
}

// slotOf returns the slot file name and record of the owner's bottle identity.
func (s Store) slotOf(identity string) (string, Record, error) {
	slots, err := List(s.dir())
	if err != nil {
		return "", Record{}, err
	}
	for name, rec := range slots {
		if rec.Identity == identity && rec.ID == s.Owner.ID {
			return name, rec, nil
		}
	}
	return "", Record{}, fmt.Errorf("no slot reserved for bottle %s of owner %s in %s: %w", identity, s.Owner.ID, s.dir(), fs.ErrNotExist)
}

// Release removes the owner's slot reservation of identity; a missing one is fine.
func (s Store) Release(identity string) error {
	slots, err := List(s.dir())
	if err != nil {
		return err
	}
	for name, rec := range slots {
		if rec.Identity == identity && rec.ID == s.Owner.ID {
			if err := RemoveFile(filepath.Join(s.dir(), name)); err != nil {
				return fmt.Errorf("release slot of bottle %s: %w", identity, err)
			}
		}
	}
	return nil
}

// RemoveFile removes a slot file; a missing one is fine.
func RemoveFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove slot file %s: %w", path, err)
	}
	return nil
}

// Foreign maps the identities whose slots other owners hold to those owners: their
// containers, snapshots and state (in a shared namespace or state dir) are none of ours.
func (s Store) Foreign() (map[string]names.Owner, error) {
	slots, err := List(s.dir())
	if err != nil {
		return nil, err
	}
	out := map[string]names.Owner{}
	for _, rec := range slots {
		if rec.ID != s.Owner.ID && rec.Identity != "" {
			out[rec.Identity] = rec.Owner
		}
	}
	return out, nil
}

// List maps slot file names in dir to their records. A record that cannot be read
// counts with an empty owner: it holds its slot, and only an explicit
// `bottle cleanup --orphaned-owner legacy` removes it.
func List(dir string) (map[string]Record, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]Record{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read slot directory %s: %w", dir, err)
	}
	out := make(map[string]Record, len(entries))
	for _, e := range entries {
		if a, err := netip.ParseAddr(e.Name()); err != nil || !a.Is4() {
			continue // temporary files, and legacy slots (numbers) of the default state dir
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read slot file %s: %w", filepath.Join(dir, e.Name()), err)
		}
		var rec Record
		if json.Unmarshal(b, &rec) != nil || !names.IsOwnerID(rec.ID) {
			rec = Record{}
		}
		out[e.Name()] = rec
	}
	return out, nil
}

// Legacy maps the slot files <stateDir>/slots/<k> of bottles started before slots
// were host-wide to the identity each holds.
func Legacy(stateDir string) (map[string]string, error) {
	dir := filepath.Join(stateDir, legacyDirName)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read legacy slot directory %s: %w", dir, err)
	}
	out := map[string]string{}
	for _, e := range entries {
		if k, err := strconv.Atoi(e.Name()); err != nil || k < 0 || strconv.Itoa(k) != e.Name() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if b, err := os.ReadFile(p); err == nil {
			out[p] = strings.TrimSpace(string(b))
		}
	}
	return out, nil
}

// Overlap returns a host prefix that overlaps one of subnets.
func Overlap(hostNets []netip.Prefix, subnets ...netip.Prefix) (netip.Prefix, bool) {
	for _, h := range hostNets {
		for _, s := range subnets {
			if h.Overlaps(s) {
				return h, true
			}
		}
	}
	return netip.Prefix{}, false
}

// HostPrefixes lists the IPv4 prefixes in use on the host: interface addresses (with their
// subnet) and every non-default route of every routing table.
func HostPrefixes() ([]netip.Prefix, error) {
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
	out = append(out, routes...)
	return out, nil
}

// hostRoutes lists the IPv4 route destinations of every routing table.
func hostRoutes() ([]netip.Prefix, error) {
	routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list host routes to avoid subnet clashes: %w", err)
	}
	var out []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil {
			continue // default route
		}
		if a, ok := netip.AddrFromSlice(r.Dst.IP); ok {
			if ones, _ := r.Dst.Mask.Size(); ones > 0 { // not a default route
				out = append(out, netip.PrefixFrom(a.Unmap(), ones).Masked())
			}
		}
	}
	return out, nil
}

// FirstFree returns the first slot of pool that is neither reserved in slotDir (""
// for DefaultDir) nor overlapping a host network, without reserving it (for doctor).
func FirstFree(slotDir string, pool netip.Prefix) (int, error) {
	slotDir = cmp.Or(slotDir, DefaultDir)
	n, err := SlotCount(pool)
	if err != nil {
		return 0, err
	}
	taken, err := List(slotDir)
	if err != nil {
		return 0, err
	}
	hostNets, err := HostPrefixes()
	if err != nil {
		return 0, err
	}
	for k := range n {
		in, eg, _ := Subnets(k, pool)
		if _, ok := taken[File(k, pool)]; ok {
			continue
		}
		if _, ok := Overlap(hostNets, in, eg); ok {
			continue
		}
		return k, nil
	}
	return 0, fmt.Errorf("no free slot in subnet pool %s: %d reserved in %s, the rest overlap host networks; remove bottles you no longer need (`bottle rm ID`), run `bottle cleanup` for leftovers, or choose another pool with --pool", pool, len(taken), slotDir)
}
