package netns

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
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
		if err := n.validate(); err != nil {
			return fmt.Errorf("remove networks of bottle %s: %w", identity, err)
		}
		if id, ok := identityFromNetworkName(n.Name); !ok || id != identity {
			return fmt.Errorf("remove networks of bottle %s: network %s belongs to another bottle", identity, n.Name)
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

var bridgeNameRE = regexp.MustCompile(`^b[ie]-[0-9a-f]{8}$`)

// deleteBridge deletes a bottle bridge; a missing one is fine.
func deleteBridge(name string) error {
	if !bridgeNameRE.MatchString(name) {
		return fmt.Errorf("refusing to delete interface %q: not a bottle bridge (bi-/be-<8 hex>)", name)
	}
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", name, "bridge")); err != nil {
		return fmt.Errorf("refusing to delete interface %s: it is not a bridge (remove it by hand if it is stale)", name)
	}
	if err := deleteLink(ifi.Index); err != nil {
		return fmt.Errorf("delete bridge %s: %w", name, err)
	}
	return nil
}

// LeftoverKind says what a Leftover is.
type LeftoverKind string

// Kinds of leftovers.
const (
	KindNetns    LeftoverKind = "netns"     // netns file <NetnsDir>/bottle-*
	KindBridge   LeftoverKind = "bridge"    // bi-* / be-* bridge
	KindChain    LeftoverKind = "chain"     // BOTTLE-* filter chain (iptables and/or ip6tables)
	KindMasq     LeftoverKind = "masq"      // bridge plugin masquerade rule of a bottle network
	KindCNICache LeftoverKind = "cni-cache" // /var/lib/cni/results entry of a bottle network
	KindIPAMDir  LeftoverKind = "ipam-dir"  // /var/lib/cni/networks/bottle-*
	KindSlot     LeftoverKind = "slot"      // <StateDir>/slots/<k>
)

// Leftover is one piece of host state bottle created.
type Leftover struct {
	Kind LeftoverKind
	// Name is the path, interface, chain, or "network/container/ifname" for cache and masq.
	Name string
	// Identity is the bottle it belongs to; empty when it cannot be told (a hashed name of a
	// bottle with no other trace left).
	Identity string
	// Hash is the 8 hex identity hash for bridges and chains.
	Hash string

	container, network, ifName string // cache and masq entries
}

func (l Leftover) String() string {
	id := l.Identity
	if id == "" {
		id = "unknown bottle"
	}
	return fmt.Sprintf("%s %s (%s)", l.Kind, l.Name, id)
}

// Leftovers is every piece of bottle host state found.
type Leftovers []Leftover

// Leftovers lists netns files, bridges, firewall chains, masquerade rules, CNI cache and
// IPAM entries of bottle networks, and slot reservations. Identities are resolved for hashed
// names (bridges, chains) from the other entries.
func (m *Manager) Leftovers(ctx context.Context) (Leftovers, error) {
	var out Leftovers
	var errs []error

	if entries, err := os.ReadDir(m.netnsDir); err == nil {
		for _, e := range entries {
			cn, ok := strings.CutPrefix(e.Name(), netnsFilePrefix)
			if !ok {
				continue
			}
			id, _ := identityFromContainerName(cn)
			out = append(out, Leftover{Kind: KindNetns, Name: filepath.Join(m.netnsDir, e.Name()), Identity: id, container: cn})
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("list netns directory %s: %w", m.netnsDir, err))
	}

	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			if bridgeNameRE.MatchString(i.Name) {
				out = append(out, Leftover{Kind: KindBridge, Name: i.Name, Hash: i.Name[3:]})
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
				if len(f) == 2 && f[0] == "-N" && strings.HasPrefix(f[1], chainPrefix) && !seen[f[1]] {
					seen[f[1]] = true
					out = append(out, Leftover{Kind: KindChain, Name: f[1], Hash: strings.TrimPrefix(f[1], chainPrefix)})
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
			if id, ok := identityFromNetworkName(ca.Network); ok {
				out = append(out, Leftover{Kind: KindCNICache, Name: cacheFilePath(ca.Network, ca.ContainerID, ca.IfName), Identity: id,
					container: ca.ContainerID, network: ca.Network, ifName: ca.IfName})
			}
		}
	} else {
		errs = append(errs, err)
	}

	ipamRoot := filepath.Join(CNICacheDir, "networks")
	if entries, err := os.ReadDir(ipamRoot); err == nil {
		for _, e := range entries {
			if id, ok := identityFromNetworkName(e.Name()); ok {
				out = append(out, Leftover{Kind: KindIPAMDir, Name: filepath.Join(ipamRoot, e.Name()), Identity: id, network: e.Name()})
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("list CNI IPAM directory %s: %w", ipamRoot, err))
	}

	if slots, err := listSlots(m.stateDir); err == nil {
		for k, id := range slots {
			out = append(out, Leftover{Kind: KindSlot, Name: filepath.Join(slotsDir(m.stateDir), strconv.Itoa(k)), Identity: id})
		}
	} else {
		errs = append(errs, err)
	}

	// Resolve hashed names through every identity seen elsewhere.
	byHash := map[string]string{}
	for _, l := range out {
		if l.Identity != "" {
			byHash[IdentityHash(l.Identity)] = l.Identity
		}
	}
	for i := range out {
		if out[i].Identity == "" && out[i].Hash != "" {
			out[i].Identity = byHash[out[i].Hash]
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
		id, ok := identityFromNetworkName(mm[1])
		if !ok {
			continue
		}
		key := mm[1] + "/" + mm[2]
		if seen[key] {
			continue
		}
		seen[key] = true
		out = append(out, Leftover{Kind: KindMasq, Name: key, Identity: id, network: mm[1], container: mm[2]})
	}
	return out, nil
}

// Sweep removes every leftover whose bottle is not kept: keep(identity) false. Leftovers
// whose bottle cannot be told (a bridge or chain with no slot, netns or CNI entry naming
// its identity) are passed as keep(""): return false to remove them too, which is safe only
// when no bottle can be between InstallFirewall and its first Setup (e.g. under a global
// lock, or with every state dir's slots visible). It returns what it removed.
func (m *Manager) Sweep(ctx context.Context, keep func(identity string) bool) (Leftovers, error) {
	all, err := m.Leftovers(ctx)
	if err != nil {
		return nil, err
	}
	drop := func(l Leftover) bool { return !keep(l.Identity) }
	var removed Leftovers
	var errs []error
	done := func(l Leftover, err error) {
		if err != nil {
			errs = append(errs, err)
			return
		}
		removed = append(removed, l)
	}
	// Netns first (CNI DEL of their cached attachments), then the rest of the CNI cache,
	// then firewall, bridges, IPAM dirs, and slots last so a failure leaves the slot held.
	order := []LeftoverKind{KindNetns, KindCNICache, KindMasq, KindChain, KindBridge, KindIPAMDir, KindSlot}
	for _, kind := range order {
		for _, l := range all {
			if l.Kind != kind || !drop(l) {
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
				done(l, ReleaseSlot(m.stateDir, l.Identity))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("sweep bottle network leftovers: %w", err)
	}
	return removed, nil
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
