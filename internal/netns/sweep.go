package netns

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bottle-dev/bottle/internal/firewall"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/slots"
	"github.com/containernetworking/cni/libcni"
)

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

	container, network, ifName string     // cache and masq entries
	source                     netip.Addr // masq entries
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
			if e.IsDir() && names.IsOwnerID(e.Name()) {
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
				if cn, ok := names.ContainerOfNetnsFile(f.Name()); ok && !f.IsDir() {
					id, _ := names.IdentityOfContainer(cn)
					out = append(out, Leftover{Kind: KindNetns, Name: filepath.Join(dir, f.Name()), Owner: owner, Identity: string(id), container: cn})
				}
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("list netns directory %s: %w", m.netnsRoot, err))
	}

	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			if owner, hash, ok := names.ParseBridgeName(i.Name); ok {
				out = append(out, Leftover{Kind: KindBridge, Name: i.Name, Owner: owner, Hash: hash})
			}
		}
	} else {
		errs = append(errs, fmt.Errorf("list host interfaces: %w", err))
	}

	if chains, err := firewall.Chains(ctx); err == nil {
		for _, c := range chains {
			if owner, hash, ok := names.ParseChainName(c); ok {
				out = append(out, Leftover{Kind: KindChain, Name: c, Owner: owner, Hash: hash})
			}
		}
	} else {
		errs = append(errs, err)
	}
	if rules, err := firewall.ListMasq(ctx); err == nil {
		seen := map[string]bool{}
		for _, r := range rules {
			owner, id, ok := names.ParseNetworkName(r.Network)
			if key := r.Network + "/" + r.Container; ok && !seen[key] {
				seen[key] = true
				out = append(out, Leftover{Kind: KindMasq, Name: key, Owner: owner, Identity: string(id), network: r.Network, container: r.Container, source: r.Source.Addr()})
			}
		}
	} else {
		errs = append(errs, err)
	}

	// Every owner's cache entries (cachedAttachments keeps only ours).
	if cached, err := m.libcni().GetCachedAttachments(""); err == nil {
		for _, ca := range cached {
			if owner, id, ok := names.ParseNetworkName(ca.Network); ok {
				out = append(out, Leftover{Kind: KindCNICache, Name: ca.Network + "/" + ca.ContainerID + "/" + ca.IfName, Owner: owner, Identity: string(id),
					container: ca.ContainerID, network: ca.Network, ifName: ca.IfName})
			}
		}
	} else {
		errs = append(errs, fmt.Errorf("read CNI cache %s: %w", filepath.Join(libcni.CacheDir, "results"), err))
	}

	ipamRoot := filepath.Join(libcni.CacheDir, "networks")
	if entries, err := os.ReadDir(ipamRoot); err == nil {
		for _, e := range entries {
			if owner, id, ok := names.ParseNetworkName(e.Name()); ok {
				out = append(out, Leftover{Kind: KindIPAMDir, Name: filepath.Join(ipamRoot, e.Name()), Owner: owner, Identity: string(id), network: e.Name()})
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("list CNI IPAM directory %s: %w", ipamRoot, err))
	}

	slotDir := cmp.Or(m.slots.Dir, slots.DefaultDir)
	if recs, err := slots.List(slotDir); err == nil {
		for name, rec := range recs {
			out = append(out, Leftover{Kind: KindSlot, Name: filepath.Join(slotDir, name), Owner: rec.ID, Identity: rec.Identity})
		}
	} else {
		errs = append(errs, err)
	}
	if legacy, err := slots.Legacy(m.owner.StateDir); err == nil {
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
			byKey[l.Owner+"/"+names.NameHash(l.Owner, names.Identity(l.Identity))] = l.Identity
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

// SweepOrphanedOwner removes every object of owner id (names.LegacyOwner: the objects without
// owner) when nothing else can: it is not the Manager's owner and no slot record of it
// names a state dir that still exists.
func (m *Manager) SweepOrphanedOwner(ctx context.Context, id string) (Leftovers, error) {
	owner := id
	if id == names.LegacyOwner {
		owner = ""
	} else if !names.IsOwnerID(id) {
		return nil, fmt.Errorf("invalid owner %q: want 6 hex digits or %q, as `bottle cleanup` and `bottle doctor` print them", id, names.LegacyOwner)
	}
	if owner == m.owner.ID {
		return nil, fmt.Errorf("owner %s is this state dir's (%s, namespace %q): run `bottle cleanup` instead", id, m.owner.StateDir, m.owner.Namespace)
	}
	recs, err := slots.List(cmp.Or(m.slots.Dir, slots.DefaultDir))
	if err != nil {
		return nil, err
	}
	for _, rec := range recs {
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
				done(l, m.sweepCache(ctx, l))
			case KindMasq:
				done(l, firewall.RemoveMasq(l.network, l.container, l.source))
			case KindChain:
				done(l, firewall.Remove(ctx, l.Name))
			case KindBridge:
				done(l, deleteBridge(l.Name))
			case KindIPAMDir:
				done(l, removeIPAMDir(l.network))
			case KindSlot:
				done(l, slots.RemoveFile(l.Name))
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
	// Owner is what its slot records say; ID is names.LegacyOwner for objects without owner.
	names.Owner
	Objects Leftovers
}

// Command removes the objects.
func (o OrphanedOwner) Command() string { return "bottle cleanup --orphaned-owner " + o.ID }

func (o OrphanedOwner) String() string {
	who := fmt.Sprintf("owner %s (state dir %s gone, namespace %q)", o.ID, o.StateDir, o.Namespace)
	switch {
	case o.ID == names.LegacyOwner:
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
	recs, err := slots.List(cmp.Or(m.slots.Dir, slots.DefaultDir))
	if err != nil {
		return nil, err
	}
	known := map[string]names.Owner{}
	for _, rec := range recs {
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
		o.ID = cmp.Or(l.Owner, names.LegacyOwner)
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
	pairs, err := m.delCached(ctx, l.container, func(ca *libcni.NetworkAttachment) bool {
		return ca.Network == l.network && ca.IfName == l.ifName
	})
	return errors.Join(err, removeMasq(ctx, pairs))
}
