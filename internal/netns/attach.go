package netns

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/bottle-dev/bottle/internal/firewall"
	"github.com/bottle-dev/bottle/internal/names"
	gocni "github.com/containerd/go-cni"
	"github.com/containernetworking/cni/libcni"
)

// Setup creates the netns file of containerName, brings lo up and runs CNI ADD for every
// attachment (eth0, eth1, ...; all at once, as each plugin run takes tens of milliseconds
// and adds only its own interface). A leftover netns or cached CNI result of an earlier
// attempt is removed first (CNI DEL before ADD). On failure everything done is undone.
// A netns serves one sandbox start: to restart a container, Setup it again.
//
// release takes the netns down as Teardown does, exactly once: later calls return the
// first call's result.
func (m *Manager) Setup(ctx context.Context, containerName string, atts []Attachment) (nsPath string, release func(context.Context) error, err error) {
	if err := validateContainerName(containerName); err != nil {
		return "", nil, err
	}
	atts, err = m.normalize(atts)
	if err != nil {
		return "", nil, fmt.Errorf("network setup of container %s: %w", containerName, err)
	}
	c, err := m.newCNI(atts)
	if err != nil {
		return "", nil, fmt.Errorf("network setup of container %s: %w", containerName, err)
	}
	unlock, err := m.lockShared(ctx)
	if err != nil {
		return "", nil, err
	}
	defer unlock()

	path := m.NetnsPath(containerName)
	stale, err := m.hasState(containerName)
	if err != nil {
		return "", nil, err
	}
	if stale {
		slog.Debug("netns: removing leftovers of an earlier setup before CNI ADD", "container", containerName)
		if err := m.teardownLocked(ctx, containerName, atts, c); err != nil {
			return "", nil, fmt.Errorf("network setup of container %s: remove leftovers of an earlier attempt: %w (run `bottle cleanup`)", containerName, err)
		}
	}
	if err := createNetnsFile(path); err != nil {
		return "", nil, fmt.Errorf("network setup of container %s: %w", containerName, err)
	}
	defer func() {
		if err == nil {
			return
		}
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
		defer cancel()
		if uerr := m.teardownLocked(uctx, containerName, atts, c); uerr != nil {
			err = errors.Join(err, fmt.Errorf("undo failed network setup of container %s: %w (run `bottle cleanup`)", containerName, uerr))
		}
	}()
	start := time.Now()
	for _, a := range atts {
		if !a.Egress {
			if err := ensureInternalBridge(a.Bridge); err != nil {
				return "", nil, fmt.Errorf("network setup of container %s: %w", containerName, err)
			}
		}
	}
	res, err := c.Setup(ctx, containerName, path)
	if err != nil {
		return "", nil, fmt.Errorf("network setup of container %s: CNI ADD of %s into %s: %w", containerName, attNames(atts), path, err)
	}
	if err := checkResult(res, atts); err != nil {
		return "", nil, fmt.Errorf("network setup of container %s: %w", containerName, err)
	}
	for _, a := range atts {
		if !a.Egress {
			if err := disablePortsIPv6(a.Bridge); err != nil {
				return "", nil, fmt.Errorf("network setup of container %s: %w", containerName, err)
			}
		}
	}
	slog.Debug("netns: CNI ADD done", "container", containerName, "netns", path, "networks", attNames(atts), "took", time.Since(start))
	var (
		once       sync.Once
		releaseErr error
	)
	return path, func(ctx context.Context) error {
		once.Do(func() { releaseErr = m.Teardown(ctx, containerName, atts) })
		return releaseErr
	}, nil
}

// checkResult makes sure every interface got exactly its static address.
func checkResult(res *gocni.Result, atts []Attachment) error {
	for _, a := range atts {
		cfg, ok := res.Interfaces[a.IfName]
		if !ok || cfg == nil {
			return fmt.Errorf("CNI result for network %s has no interface %s", a.Name, a.IfName)
		}
		found := false
		for _, ipc := range cfg.IPConfigs {
			if ip, ok := netip.AddrFromSlice(ipc.IP); ok && ip.Unmap() == a.Addr {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("CNI result for network %s: interface %s lacks address %s", a.Name, a.IfName, a.Addr)
		}
	}
	return nil
}

// hasState reports whether a netns file or cached CNI results exist for containerName.
func (m *Manager) hasState(containerName string) (bool, error) {
	if _, err := os.Lstat(m.NetnsPath(containerName)); err == nil {
		return true, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("inspect netns file %s: %w", m.NetnsPath(containerName), err)
	}
	cached, err := m.cachedAttachments(containerName)
	if err != nil {
		return false, err
	}
	return len(cached) > 0, nil
}

// Teardown runs CNI DEL (the plugins' own) for the attachments and for any other cached
// attachment of the container, removes the masquerade rules the bridge plugin could not
// find, and unmounts and removes the netns file. Missing netns, interfaces or cache
// entries are fine: Teardown is idempotent.
func (m *Manager) Teardown(ctx context.Context, containerName string, atts []Attachment) error {
	if err := validateContainerName(containerName); err != nil {
		return err
	}
	var c gocni.CNI
	if len(atts) > 0 {
		var err error
		if atts, err = m.normalize(atts); err != nil {
			return fmt.Errorf("network teardown of container %s: %w", containerName, err)
		}
		if c, err = m.newCNI(atts); err != nil {
			return fmt.Errorf("network teardown of container %s: %w", containerName, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
	defer cancel()
	unlock, err := m.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	return m.teardownLocked(ctx, containerName, atts, c)
}

// teardownLocked is Teardown under the CNI lock; c holds the conflists of atts (nil if none).
func (m *Manager) teardownLocked(ctx context.Context, containerName string, atts []Attachment, c gocni.CNI) error {
	pairs, err := m.delContainer(ctx, containerName, atts, c)
	errs := []error{err, removeMasq(ctx, pairs), removeNetnsFile(m.NetnsPath(containerName))}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("network teardown of container %s: %w", containerName, err)
	}
	return nil
}

// delContainer runs the plugins' DEL for a container: for atts through c, then for every
// other cached attachment of it. It returns the networks and container whose masquerade
// rules the bridge plugin may have left (it finds them by the addresses in the netns,
// which runsc removes at sandbox start).
func (m *Manager) delContainer(ctx context.Context, containerName string, atts []Attachment, c gocni.CNI) ([]masqOf, error) {
	path := m.NetnsPath(containerName)
	// A file that holds no netns (a start killed before the bind mount, an unmount without
	// the remove) has nothing to undo, and the plugins' DEL would refuse it: drop it first.
	errs := []error{dropUnmounted(path)}
	var pairs []masqOf
	if c != nil {
		// A missing netns is fine: the plugins then only release their IPAM state.
		if err := c.Remove(ctx, containerName, path); err != nil {
			errs = append(errs, fmt.Errorf("CNI DEL of %s for container %s: %w", attNames(atts), containerName, err))
		}
		for _, a := range atts {
			pairs = append(pairs, masqOf{a.Name, containerName})
		}
	}
	cached, err := m.delCached(ctx, containerName, nil)
	return append(pairs, cached...), errors.Join(append(errs, err)...)
}

// masqOf names the masquerade rules of a network and a container.
type masqOf struct{ network, container string }

// removeMasq removes the masquerade rules of pairs that one listing of the nat table shows.
func removeMasq(ctx context.Context, pairs []masqOf) error {
	if len(pairs) == 0 {
		return nil
	}
	nat, err := firewall.ReadNAT(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range pairs {
		errs = append(errs, nat.Remove(p.network, p.container))
	}
	return errors.Join(errs...)
}

func (m *Manager) libcni() *libcni.CNIConfig {
	return libcni.NewCNIConfig(m.pluginDirs, nil)
}

// cachedAttachments lists libcni's cached attachments of containerName ("" for all) on the
// owner's networks.
func (m *Manager) cachedAttachments(containerID string) ([]*libcni.NetworkAttachment, error) {
	all, err := m.libcni().GetCachedAttachments(containerID)
	if err != nil {
		return nil, fmt.Errorf("read CNI cache %s: %w", filepath.Join(libcni.CacheDir, "results"), err)
	}
	var own []*libcni.NetworkAttachment
	for _, ca := range all {
		if owner, _, ok := names.ParseNetworkName(ca.Network); ok && owner == m.owner.ID {
			own = append(own, ca)
		}
	}
	return own, nil
}

// delCached runs CNI DEL with the cached config of every cached attachment of containerID
// (all containers if empty) on the owner's networks that match filter (all if nil). It
// returns the networks and containers DEL'd (see delContainer).
func (m *Manager) delCached(ctx context.Context, containerID string, filter func(*libcni.NetworkAttachment) bool) ([]masqOf, error) {
	cached, err := m.cachedAttachments(containerID)
	if err != nil {
		return nil, err
	}
	cni := m.libcni()
	var errs []error
	var done []masqOf
	for _, ca := range cached {
		if filter != nil && !filter(ca) {
			continue
		}
		list, err := libcni.ConfListFromBytes(ca.Config)
		if err != nil {
			errs = append(errs, fmt.Errorf("cached config of network %s (container %s, %s): %w", ca.Network, ca.ContainerID, ca.IfName, err))
			continue
		}
		errs = append(errs, dropUnmounted(ca.NetNS))
		rt := &libcni.RuntimeConf{ContainerID: ca.ContainerID, NetNS: ca.NetNS, IfName: ca.IfName, Args: ca.CniArgs, CapabilityArgs: ca.CapabilityArgs}
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			errs = append(errs, fmt.Errorf("CNI DEL of cached network %s (container %s, %s): %w", ca.Network, ca.ContainerID, ca.IfName, err))
			continue
		}
		done = append(done, masqOf{ca.Network, ca.ContainerID})
	}
	return done, errors.Join(errs...)
}
