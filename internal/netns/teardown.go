package netns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
)

// hostVethRE matches the host end of a veth pair the bridge plugin makes (ip.RandomVethName).
var hostVethRE = regexp.MustCompile(`^veth[0-9a-f]{8}$`)

// TeardownBottle removes all network state of bottle identity at once, when it stops: what
// Teardown does for each of containers (container name -> its attachments; nil attachments
// are fine) plus what RemoveNetworks does for nets. It leaves no netns file, veth pair,
// bridge, masquerade rule or chain, CNI cache result or IPAM directory of these behind.
//
// It does not run the CNI plugins' DEL: they are bottle's own bridge + static conflists, whose
// DEL only deletes the veth in the netns, removes the masquerade rules and (libcni) the cache
// entry, and static IPAM keeps no state. Instead, under one hold of the CNI lock, it unmounts
// the netns files, deletes the veth pairs (from their host ends, the bridges' ports), removes
// every masquerade rule and chain of the bottle in one iptables-restore transaction, and
// deletes the bridges, concurrently; then it removes the cache results and IPAM directories.
//
// The containers must be stopped. It is idempotent: missing pieces (a second call, a start
// killed half way) are fine. The firewall (RemoveFirewall) and the slot are separate.
func (m *Manager) TeardownBottle(ctx context.Context, identity string, containers map[string][]Attachment, nets []Network) error {
	return m.teardownBottle(ctx, identity, containers, nets, true)
}

// TeardownContainers is TeardownBottle without deleting the bridges (nor their IPAM
// directories): a stopped bottle keeps its bridges, ready for resume, until it is removed
// (RemoveNetworks). Deleting a bridge is the slowest part of a teardown.
func (m *Manager) TeardownContainers(ctx context.Context, identity string, containers map[string][]Attachment, nets []Network) error {
	return m.teardownBottle(ctx, identity, containers, nets, false)
}

func (m *Manager) teardownBottle(ctx context.Context, identity string, containers map[string][]Attachment, nets []Network, deleteBridges bool) error {
	if err := ValidateIdentity(identity); err != nil {
		return err
	}
	invalid := func(err error) error {
		return fmt.Errorf("network teardown of bottle %s: %w", identity, err)
	}
	networks := map[string]bool{} // names of the networks whose masquerade and cache entries go
	for _, n := range nets {
		if err := m.checkOwnNetwork(identity, n); err != nil {
			return invalid(err)
		}
		networks[n.Name] = true
	}
	for name, atts := range containers {
		if err := validateContainerName(name); err != nil {
			return invalid(err)
		}
		if id, ok := identityFromContainerName(name); !ok || id != identity {
			return invalid(fmt.Errorf("container %s is not one of its containers (bottle-%s[-<role>])", name, identity))
		}
		for _, a := range atts {
			if err := m.checkOwnNetwork(identity, a.Network); err != nil {
				return invalid(fmt.Errorf("container %s: %w", name, err))
			}
			networks[a.Name] = true
		}
	}
	fail := func(err error) error {
		return fmt.Errorf("network teardown of bottle %s: %w (run `bottle cleanup`)", identity, err)
	}

	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
	defer cancel()
	unlock, err := m.lock(ctx)
	if err != nil {
		return fail(err)
	}
	defer unlock()
	start := time.Now()

	// What is ours in the CNI cache: entries of these networks and of these containers.
	owned := func(network, containerID string) bool {
		owner, id, ok := parseNetworkName(network)
		_, isContainer := containers[containerID]
		return ok && owner == m.owner.ID && id == identity && (networks[network] || isContainer)
	}
	cached, err := m.cachedAttachments("")
	if err != nil {
		return fail(err)
	}
	var ownCache []*libcni.NetworkAttachment
	masqChains := map[string]bool{}
	for _, ca := range cached {
		if owned(ca.Network, ca.ContainerID) {
			ownCache = append(ownCache, ca)
			masqChains[masqChain(ca.Network, ca.ContainerID)] = true
		}
	}
	for name := range containers {
		for n := range networks {
			masqChains[masqChain(n, name)] = true
		}
	}

	var ports []sysLink // host ends of the containers' veth pairs
	for _, n := range nets {
		p, err := bridgePorts(n.Bridge)
		if err != nil {
			return fail(err)
		}
		for _, l := range p {
			if hostVethRE.MatchString(l.name) { // others were not made by the bridge plugin
				ports = append(ports, l)
			}
		}
	}

	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	collect := func(err error) {
		if err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	}
	// Deleting a bridge is the slowest part (two RCU barriers in the kernel, one under RTNL):
	// start those first.
	if deleteBridges {
		for _, n := range nets {
			wg.Go(func() { collect(deleteBridge(n.Bridge)) })
		}
	}
	wg.Go(func() { collect(removeBottleMasq(ctx, owned, masqChains)) })
	// The veth pairs would go with their netns, but only once the kernel's asynchronous netns
	// cleanup has run, and never while a process still holds the netns: delete them from
	// their host ends (the bridges' ports, listed before the bridges went).
	for _, p := range ports {
		wg.Go(func() {
			if err := deleteLink(p.index); err != nil {
				collect(fmt.Errorf("delete veth %s: %w", p.name, err))
			}
		})
	}
	for name := range containers {
		collect(removeNetnsFile(m.NetnsPath(name)))
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		// The cache entries and IPAM directories stay: they tell `bottle cleanup` what to undo.
		return fail(err)
	}
	for _, ca := range ownCache {
		collect(removeCacheFile(ca))
	}
	if deleteBridges {
		for _, n := range nets {
			collect(removeIPAMDir(n.Name))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fail(err)
	}
	slog.Debug("netns: bottle networking removed", "bottle", identity, "containers", len(containers), "networks", len(nets), "took", time.Since(start))
	return nil
}

// checkOwnNetwork makes sure n is a valid network of the owner's bottle identity.
func (m *Manager) checkOwnNetwork(identity string, n Network) error {
	if err := n.validate(); err != nil {
		return err
	}
	if owner, id, _ := parseNetworkName(n.Name); owner != m.owner.ID || id != identity {
		return fmt.Errorf("network %s belongs to another bottle or owner (this is bottle %s of owner %s)", n.Name, identity, m.owner.ID)
	}
	return nil
}

// removeBottleMasq removes the bridge plugin's masquerade rules (POSTROUTING jumps whose
// comment names an owned network and container) and their CNI-<hash> chains, plus any chain
// of extraChains that exists, from the IPv4 nat table: one listing, one iptables-restore
// transaction. A concurrent change fails the transaction; it is retried on a fresh listing.
func removeBottleMasq(ctx context.Context, owned func(network, containerID string) bool, extraChains map[string]bool) error {
	t := ipt{bin: "iptables"}
	if _, err := exec.LookPath(t.bin); err != nil {
		return nil // no iptables, so the plugin cannot have written rules either
	}
	var lastErr error
	for range 3 {
		lines, err := t.rules(ctx, "nat", "")
		if err != nil {
			return fmt.Errorf("remove masquerade rules: %w", err)
		}
		existing := map[string]bool{}
		drop := map[string]bool{}
		var script strings.Builder
		for _, l := range lines {
			f := strings.Fields(l)
			if len(f) == 2 && f[0] == "-N" {
				existing[f[1]] = true
			}
			if len(f) < 2 || f[0] != "-A" || f[1] != "POSTROUTING" {
				continue
			}
			mm := masqCommentRE.FindStringSubmatch(l)
			if mm == nil || !owned(mm[1], mm[2]) {
				continue
			}
			_, target, err := deleteArgs(l)
			if err != nil {
				return fmt.Errorf("remove masquerade rules: %w", err)
			}
			if strings.HasPrefix(target, "CNI-") {
				drop[target] = true
			}
			script.WriteString("-D" + strings.TrimPrefix(l, "-A") + "\n")
		}
		for c := range extraChains {
			drop[c] = true
		}
		for c := range drop {
			if existing[c] {
				script.WriteString("-F " + c + "\n-X " + c + "\n")
			}
		}
		if script.Len() == 0 {
			return nil
		}
		if lastErr = t.restore(ctx, "*nat\n"+script.String()+"COMMIT\n"); lastErr == nil {
			return nil
		}
	}
	return fmt.Errorf("remove masquerade rules: %w", lastErr)
}
