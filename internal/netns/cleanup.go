package netns

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

// RemoveNetworks removes what the networks of identity leave on the host once no container
// uses them: remaining cached CNI attachments (DEL with the cached config), masquerade
// rules, the bridges, and the CNI IPAM directories /var/lib/cni/networks/<name>. Missing
// pieces are fine. Call it after Teardown of every container of the bottle.
func (m *Manager) RemoveNetworks(ctx context.Context, identity string, nets []Network) error {
	if err := ValidateIdentity(identity); err != nil {
		return err
	}
	for _, n := range nets {
		if err := m.checkOwnNetwork(identity, n); err != nil {
			return fmt.Errorf("remove networks of bottle %s: %w", identity, err)
		}
	}
	unlock, err := m.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	var errs []error
	names := map[string]bool{}
	for _, n := range nets {
		names[n.Name] = true
	}
	if err := m.delCached(ctx, "", func(ca *libcni.NetworkAttachment) bool { return names[ca.Network] }); err != nil {
		errs = append(errs, err)
	}
	for _, n := range nets {
		if err := deleteBridge(n.Bridge); err != nil {
			errs = append(errs, err)
		}
		if err := removeIPAMDir(n.Name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove networks of bottle %s: %w (run `bottle cleanup`)", identity, err)
	}
	return nil
}

func removeIPAMDir(network string) error {
	p := filepath.Join(CNICacheDir, "networks", network)
	if err := os.RemoveAll(p); err != nil {
		return fmt.Errorf("remove CNI IPAM directory %s: %w", p, err)
	}
	return nil
}

// LeftoverKind says what a Leftover is.
type LeftoverKind string

// Kinds of leftovers.
const (
	KindNetns    LeftoverKind = "netns"     // netns file <NetnsDir>/<owner>/bottle-*
	KindBridge   LeftoverKind = "bridge"    // bi-* / be-* bridge
	KindChain    LeftoverKind = "chain"     // BOTTLE-* filter chain (iptables and/or ip6tables)
	KindMasq     LeftoverKind = "masq"      // bridge plugin masquerade rule of a bottle network
	KindCNICache LeftoverKind = "cni-cache" // /var/lib/cni/results entry of a bottle network
	KindIPAMDir  LeftoverKind = "ipam-dir"  // /var/lib/cni/networks/bottle-*
	KindSlot     LeftoverKind = "slot"      // <SlotDir>/<subnet> (legacy: <StateDir>/slots/<k>)
)

// Leftover is one piece of host state bottle created.
type Leftover struct {
	Kind LeftoverKind
	// Name is the path, interface, chain, or "network/container/ifname" for cache and masq.
	Name string
	// Owner is the ID of the owner that made it; "" for objects made before names
	// carried their owner (legacy).
	Owner string
	// Identity is the bottle it belongs to; empty when it cannot be told (a hashed name of a
	// bottle with no other trace left).
	Identity string
	// Hash is the identity hash in bridge and chain names.
	Hash string

	container, network, ifName string // cache and masq entries
}

func (l Leftover) String() string {
	return fmt.Sprintf("%s %s (%s)", l.Kind, l.Name, cmp.Or(l.Identity, "unknown bottle"))
}

// Leftovers is every piece of bottle host state found.
type Leftovers []Leftover

// Leftovers lists netns files, bridges, firewall chains, masquerade rules, CNI cache and
// IPAM entries of bottle networks, and slot reservations, of every owner on the host.
// Identities are resolved for hashed names (bridges, chains) from the other entries.
func (m *Manager) Leftovers(ctx context.Context) (Leftovers, error) {
	var out Leftovers
	var errs []error

	// Netns files: <root>/<owner>/bottle-*, legacy ones <root>/bottle-*.
	if entries, err := os.ReadDir(m.netnsRoot); err == nil {
		dirs := map[string]string{"": m.netnsRoot}
		for _, e := range entries {
			if e.IsDir() && ownerIDRE.MatchString(e.Name()) {
				dirs[e.Name()] = filepath.Join(m.netnsRoot, e.Name())
			}
		}
		for owner, dir := range dirs {
			files, err := os.ReadDir(dir)
			if err != nil {
				errs = append(errs, fmt.Errorf("list netns directory %s: %w", dir, err))
				continue
			}
			for _, f := range files {
				if cn, ok := strings.CutPrefix(f.Name(), netnsFilePrefix); ok && !f.IsDir() {
					id, _ := identityFromContainerName(cn)
					out = append(out, Leftover{Kind: KindNetns, Name: filepath.Join(dir, f.Name()), Owner: owner, Identity: id, container: cn})
				}
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("list netns directory %s: %w", m.netnsRoot, err))
	}

	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			if owner, hash, ok := parseBridgeName(i.Name); ok {
				out = append(out, Leftover{Kind: KindBridge, Name: i.Name, Owner: owner, Hash: hash})
			}
		}
	} else {
		errs = append(errs, fmt.Errorf("list host interfaces: %w", err))
	}

	if fams, err := families(); err == nil {
		seen := map[string]bool{}
		for _, t := range fams {
			lines, err := t.rules(ctx, "filter", "")
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, l := range lines {
				f := strings.Fields(l)
				if len(f) != 2 || f[0] != "-N" || seen[f[1]] {
					continue
				}
				if owner, hash, ok := parseChainName(f[1]); ok {
					seen[f[1]] = true
					out = append(out, Leftover{Kind: KindChain, Name: f[1], Owner: owner, Hash: hash})
				}
			}
		}
		masq, err := listMasq(ctx)
		if err != nil {
			errs = append(errs, err)
		}
		out = append(out, masq...)
	} else {
		errs = append(errs, err)
	}

	if cached, err := m.cachedAttachments(""); err == nil {
		for _, ca := range cached {
			if owner, id, ok := parseNetworkName(ca.Network); ok {
				out = append(out, Leftover{Kind: KindCNICache, Name: cacheFilePath(ca.Network, ca.ContainerID, ca.IfName), Owner: owner, Identity: id,
					container: ca.ContainerID, network: ca.Network, ifName: ca.IfName})
			}
		}
	} else {
		errs = append(errs, err)
	}

	ipamRoot := filepath.Join(CNICacheDir, "networks")
	if entries, err := os.ReadDir(ipamRoot); err == nil {
		for _, e := range entries {
			if owner, id, ok := parseNetworkName(e.Name()); ok {
				out = append(out, Leftover{Kind: KindIPAMDir, Name: filepath.Join(ipamRoot, e.Name()), Owner: owner, Identity: id, network: e.Name()})
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("list CNI IPAM directory %s: %w", ipamRoot, err))
	}

	if slots, err := listSlots(m.slotDir); err == nil {
		for name, rec := range slots {
			out = append(out, Leftover{Kind: KindSlot, Name: filepath.Join(m.slotDir, name), Owner: rec.ID, Identity: rec.Identity})
		}
	} else {
		errs = append(errs, err)
	}
	if legacy, err := legacySlots(m.owner.StateDir); err == nil {
		for p, id := range legacy {
			out = append(out, Leftover{Kind: KindSlot, Name: p, Identity: id})
		}
	} else {
		errs = append(errs, err)
	}

	// Resolve hashed names through every identity seen elsewhere, per owner.
	byKey := map[string]string{}
	for _, l := range out {
		if l.Identity != "" {
			byKey[nameKey(l.Owner, l.Identity)] = l.Identity
		}
	}
	for i := range out {
		if out[i].Identity == "" && out[i].Hash != "" {
			out[i].Identity = byKey[out[i].Owner+"/"+out[i].Hash]
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Kind != out[j].Kind {
			return out[i].Kind < out[j].Kind
		}
		return out[i].Name < out[j].Name
	})
	if err := errors.Join(errs...); err != nil {
		return out, fmt.Errorf("list bottle network leftovers: %w", err)
	}
	return out, nil
}

var masqCommentRE = regexp.MustCompile(`name: \\?"(bottle-[a-z0-9-]+)\\?" id: \\?"([^"\\]+)\\?"`)

// listMasq finds POSTROUTING jumps the bridge plugin made for bottle networks.
func listMasq(ctx context.Context) (Leftovers, error) {
	lines, err := ipt{bin: "iptables"}.rules(ctx, "nat", "POSTROUTING")
	if err != nil {
		return nil, err
	}
	var out Leftovers
	seen := map[string]bool{}
	for _, l := range lines {
		mm := masqCommentRE.FindStringSubmatch(l)
		if mm == nil {
			continue
		}
		owner, id, ok := parseNetworkName(mm[1])
		if !ok {
			continue
		}
		key := mm[1] + "/" + mm[2]
		if seen[key] {
			continue
		}
		seen[key] = true
		out = append(out, Leftover{Kind: KindMasq, Name: key, Owner: owner, Identity: id, network: mm[1], container: mm[2]})
	}
	return out, nil
}

// Sweep removes every leftover of the Manager's owner whose bottle is not kept:
// keep(identity) false. Leftovers whose bottle cannot be told (a bridge or chain with no
// slot, netns or CNI entry naming its identity) are passed as keep(""): return false to
// remove them too, which is safe only when no bottle of the owner can be between
// InstallFirewall and its first Setup (its slot, reserved before, names it). Objects of
// other owners are never touched. It returns what it removed.
func (m *Manager) Sweep(ctx context.Context, keep func(identity string) bool) (Leftovers, error) {
	all, err := m.Leftovers(ctx)
	if err != nil {
		return nil, err
	}
	return m.sweep(ctx, all, func(l Leftover) bool { return l.Owner == m.owner.ID && !keep(l.Identity) })
}

// SweepOrphanedOwner removes every object of owner id (LegacyOwner: the objects without
// owner) when nothing else can: it is not the Manager's owner and no slot record of it
// names a state dir that still exists.
func (m *Manager) SweepOrphanedOwner(ctx context.Context, id string) (Leftovers, error) {
	owner := id
	if id == LegacyOwner {
		owner = ""
	} else if !ownerIDRE.MatchString(id) {
		return nil, fmt.Errorf("invalid owner %q: want 6 hex digits or %q, as `bottle cleanup` and `bottle doctor` print them", id, LegacyOwner)
	}
	if owner == m.owner.ID {
		return nil, fmt.Errorf("owner %s is this state dir's (%s, namespace %q): run `bottle cleanup` instead", id, m.owner.StateDir, m.owner.Namespace)
	}
	slots, err := listSlots(m.slotDir)
	if err != nil {
		return nil, err
	}
	for _, rec := range slots {
		if owner != "" && rec.ID == owner && stateDirExists(rec.StateDir) {
			return nil, fmt.Errorf("owner %s is not orphaned: its state dir %s exists; run `bottle --state-dir %s --namespace %s cleanup`", id, rec.StateDir, rec.StateDir, rec.Namespace)
		}
	}
	all, err := m.Leftovers(ctx)
	if err != nil {
		return nil, err
	}
	return m.as(owner).sweep(ctx, all, func(l Leftover) bool { return l.Owner == owner })
}

func stateDirExists(dir string) bool {
	_, err := os.Stat(dir)
	return dir != "" && !errors.Is(err, fs.ErrNotExist)
}

// sweep removes the leftovers drop selects, as m (whose owner they must have).
func (m *Manager) sweep(ctx context.Context, all Leftovers, drop func(Leftover) bool) (Leftovers, error) {
	var removed Leftovers
	var errs []error
	failed := map[string]bool{} // identities with an object that could not be removed
	done := func(l Leftover, err error) {
		if err != nil {
			errs = append(errs, err)
			failed[l.Identity] = true
			return
		}
		removed = append(removed, l)
	}
	// Netns first (CNI DEL of their cached attachments), then the rest of the CNI cache,
	// then firewall, bridges, IPAM dirs, and slots last so a failure leaves the slot held
	// (its record is what tells other owners that these objects are not orphaned).
	order := []LeftoverKind{KindNetns, KindCNICache, KindMasq, KindChain, KindBridge, KindIPAMDir, KindSlot}
	for _, kind := range order {
		for _, l := range all {
			if l.Kind != kind || !drop(l) || (kind == KindSlot && failed[l.Identity]) {
				continue
			}
			switch kind {
			case KindNetns:
				done(l, m.Teardown(ctx, l.container, nil))
			case KindCNICache:
				if _, err := os.Stat(l.Name); errors.Is(err, fs.ErrNotExist) {
					removed = append(removed, l) // removed with its netns above
					continue
				}
				done(l, m.sweepCache(ctx, l))
			case KindMasq:
				done(l, removeMasq(ctx, l.network, l.container))
			case KindChain:
				done(l, removeChain(ctx, l.Name))
			case KindBridge:
				done(l, deleteBridge(l.Name))
			case KindIPAMDir:
				done(l, removeIPAMDir(l.network))
			case KindSlot:
				done(l, removeSlotFile(l.Name))
			}
		}
	}
	if m.owner.ID != "" {
		_ = os.Remove(m.netnsDir) // the owner's netns directory, once empty
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("sweep bottle network leftovers: %w", err)
	}
	return removed, nil
}

// OrphanedOwner is the host objects of another owner whose state dir is gone or unknown,
// or of no owner (legacy): only Command removes them.
type OrphanedOwner struct {
	// Owner is what its slot records say; ID is LegacyOwner for objects without owner.
	Owner
	Objects Leftovers
}

// Command removes the objects.
func (o OrphanedOwner) Command() string { return "bottle cleanup --orphaned-owner " + o.ID }

func (o OrphanedOwner) String() string {
	who := fmt.Sprintf("owner %s (state dir %s gone, namespace %q)", o.ID, o.StateDir, o.Namespace)
	switch {
	case o.ID == LegacyOwner:
		who = "objects without owner (made before bottle recorded owners; remove them once no bottle started by that version runs)"
	case o.StateDir == "":
		who = "owner " + o.ID + " (no slot record names its state dir)"
	}
	names := make([]string, 0, 4)
	for _, l := range o.Objects[:min(3, len(o.Objects))] {
		names = append(names, string(l.Kind)+" "+l.Name)
	}
	if len(o.Objects) > 3 {
		names = append(names, "...")
	}
	return fmt.Sprintf("%s: %d objects (%s)", who, len(o.Objects), strings.Join(names, ", "))
}

// OrphanedOwners groups the leftovers of other owners that no cleanup removes: legacy
// objects, and objects of owners with no slot record naming an existing state dir. Live
// owners' objects are none of ours and left out.
func (m *Manager) OrphanedOwners(left Leftovers) ([]OrphanedOwner, error) {
	slots, err := listSlots(m.slotDir)
	if err != nil {
		return nil, err
	}
	known := map[string]Owner{}
	for _, rec := range slots {
		if rec.ID != "" && !stateDirExists(known[rec.ID].StateDir) {
			known[rec.ID] = rec.Owner
		}
	}
	groups := map[string]*OrphanedOwner{}
	var ids []string
	for _, l := range left {
		o := known[l.Owner]
		if l.Owner == m.owner.ID || (l.Owner != "" && stateDirExists(o.StateDir)) {
			continue
		}
		o.ID = cmp.Or(l.Owner, LegacyOwner)
		g := groups[o.ID]
		if g == nil {
			g = &OrphanedOwner{Owner: o}
			groups[o.ID] = g
			ids = append(ids, o.ID)
		}
		g.Objects = append(g.Objects, l)
	}
	sort.Strings(ids)
	out := make([]OrphanedOwner, 0, len(ids))
	for _, id := range ids {
		out = append(out, *groups[id])
	}
	return out, nil
}

func (m *Manager) sweepCache(ctx context.Context, l Leftover) error {
	unlock, err := m.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	return m.delCached(ctx, l.container, func(ca *libcni.NetworkAttachment) bool {
		return ca.Network == l.network && ca.IfName == l.ifName
	})
}
