package netns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/bottle-dev/bottle/internal/firewall"
	"github.com/bottle-dev/bottle/internal/names"
	gocni "github.com/containerd/go-cni"
	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"
)

// TeardownBottle removes all network state of bottle identity at once, when it stops: what
// Teardown does for each of containers (container name -> its attachments; nil attachments
// are fine) plus what RemoveNetworks does for nets. It leaves no netns file, veth pair,
// bridge, masquerade rule or chain, CNI cache result or IPAM directory of these behind.
//
// Under one hold of the CNI lock it runs the plugins' DEL of every container at once, then
// deletes the veth pairs still on the bridges (their netns file was gone, so DEL could not
// reach them, and a netns goes only once nothing holds it) and the bridges, concurrently.
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
	id, err := names.ParseIdentity(identity)
	if err != nil {
		return err
	}
	invalid := func(err error) error {
		return fmt.Errorf("network teardown of bottle %s: %w", identity, err)
	}
	networks := map[string]bool{} // names of the networks whose cache entries go
	for _, n := range nets {
		if err := m.checkOwnNetwork(id, n); err != nil {
			return invalid(err)
		}
		networks[n.Name] = true
	}
	clists := map[string]*cniList{}
	for name, atts := range containers {
		if err := validateContainerName(name); err != nil {
			return invalid(err)
		}
		if got, ok := names.IdentityOfContainer(name); !ok || got != id {
			return invalid(fmt.Errorf("container %s is not one of its containers (%s%s[-<role>])", name, names.Prefix, identity))
		}
		for _, a := range atts {
			if err := m.checkOwnNetwork(id, a.Network); err != nil {
				return invalid(fmt.Errorf("container %s: %w", name, err))
			}
			networks[a.Name] = true
		}
		cl := &cniList{}
		if len(atts) > 0 {
			if cl.atts, err = m.normalize(atts); err != nil {
				return invalid(fmt.Errorf("container %s: %w", name, err))
			}
			if cl.cni, err = m.newCNI(cl.atts); err != nil {
				return invalid(fmt.Errorf("container %s: %w", name, err))
			}
		}
		clists[name] = cl
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

	var ports []netlink.Link // host ends of the containers' veth pairs, listed before DEL
	for _, n := range nets {
		p, err := bridgePorts(n.Bridge)
		if err != nil {
			return fail(err)
		}
		ports = append(ports, p...)
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
	var pairs []masqOf
	for name, cl := range clists {
		wg.Go(func() {
			p, err := m.delContainer(ctx, name, cl.atts, cl.cni)
			collect(err)
			collect(removeNetnsFile(m.NetnsPath(name)))
			mu.Lock()
			pairs = append(pairs, p...)
			mu.Unlock()
		})
	}
	wg.Wait()
	delTook := time.Since(start)
	// The rest of the bottle's CNI cache: entries of its networks (of containers not
	// named) and of its containers (on networks not named).
	rest, err := m.delCached(ctx, "", func(ca *libcni.NetworkAttachment) bool {
		_, isContainer := containers[ca.ContainerID]
		_, of, _ := names.ParseNetworkName(ca.Network)
		return of == id && (networks[ca.Network] || isContainer)
	})
	collect(err)
	pairs = append(pairs, rest...)
	wg.Go(func() { collect(removeMasq(ctx, pairs)) })
	// Deleting a bridge is the slowest part (two RCU barriers in the kernel, one under RTNL):
	// those run alongside the veths.
	if deleteBridges {
		for _, n := range nets {
			wg.Go(func() { collect(deleteBridge(n.Bridge)) })
		}
	}
	for _, p := range ports {
		wg.Go(func() { collect(deleteLink(p)) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		// The IPAM directories stay: with the cache they tell `bottle cleanup` what to undo.
		return fail(err)
	}
	if deleteBridges {
		for _, n := range nets {
			collect(removeIPAMDir(n.Name))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fail(err)
	}
	slog.Debug("netns: bottle networking removed", "bottle", identity, "containers", len(containers), "networks", len(nets), "took", time.Since(start), "plugin DELs", delTook)
	return nil
}

// cniList is a container's attachments with their go-cni instance.
type cniList struct {
	atts []Attachment
	cni  gocni.CNI
}

// checkOwnNetwork makes sure n is a valid network of the owner's bottle id.
func (m *Manager) checkOwnNetwork(id names.Identity, n Network) error {
	if err := n.validate(); err != nil {
		return err
	}
	if owner, of, _ := names.ParseNetworkName(n.Name); owner != m.owner.ID || of != id {
		return fmt.Errorf("network %s belongs to another bottle or owner (this is bottle %s of owner %s)", n.Name, id, m.owner.ID)
	}
	return nil
}

// RemoveNetworks removes what the networks of identity leave on the host once no container
// uses them: remaining cached CNI attachments (libcni's GC: DEL of each), masquerade
// rules, the bridges, and the CNI IPAM directories <cache>/networks/<name>. Missing pieces
// are fine. Call it after Teardown of every container of the bottle.
func (m *Manager) RemoveNetworks(ctx context.Context, identity string, nets []Network) error {
	id, err := names.ParseIdentity(identity)
	if err != nil {
		return err
	}
	for _, n := range nets {
		if err := m.checkOwnNetwork(id, n); err != nil {
			return fmt.Errorf("remove networks of bottle %s: %w", identity, err)
		}
	}
	unlock, err := m.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	// The plugins' GC reads and edits shared state (CNI cache, nat table): one network at a
	// time. Deleting a bridge is the slow part (RCU barriers): the bridges go concurrently.
	errs := make([]error, 2*len(nets))
	for i, n := range nets {
		errs[i] = m.gcNetwork(ctx, n.Name)
	}
	var wg sync.WaitGroup
	for i, n := range nets {
		wg.Go(func() { errs[len(nets)+i] = errors.Join(deleteBridge(n.Bridge), removeIPAMDir(n.Name)) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove networks of bottle %s: %w (run `bottle cleanup`)", identity, err)
	}
	return nil
}

// gcNetwork runs libcni's GC of network with no attachment valid: CNI DEL of every cached
// attachment on it, with the network's cached config; then it removes the masquerade
// rules of the network that the plugin left.
func (m *Manager) gcNetwork(ctx context.Context, network string) error {
	cached, err := m.cachedAttachments("")
	if err != nil {
		return err
	}
	var list *libcni.NetworkConfigList
	for _, ca := range cached {
		if ca.Network != network {
			continue
		}
		if err := dropUnmounted(ca.NetNS); err != nil {
			return err
		}
		if list == nil {
			if list, err = libcni.ConfListFromBytes(ca.Config); err != nil {
				return fmt.Errorf("cached config of network %s (container %s, %s): %w", ca.Network, ca.ContainerID, ca.IfName, err)
			}
		}
	}
	var errs []error
	if list != nil {
		if err := m.libcni().GCNetworkList(ctx, list, nil); err != nil {
			errs = append(errs, fmt.Errorf("CNI GC of network %s: %w", network, err))
		}
	}
	nat, err := firewall.ReadNAT(ctx)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, r := range nat.Rules {
		if r.Network == network {
			errs = append(errs, nat.Remove(r.Network, r.Container))
		}
	}
	return errors.Join(errs...)
}

func removeIPAMDir(network string) error {
	p := filepath.Join(libcni.CacheDir, "networks", network)
	if err := os.RemoveAll(p); err != nil {
		return fmt.Errorf("remove CNI IPAM directory %s: %w", p, err)
	}
	return nil
}
