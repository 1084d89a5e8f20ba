package netns

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/bottle-dev/bottle/internal/firewall"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/slots"
	gocni "github.com/containerd/go-cni"
	"github.com/containernetworking/cni/libcni"
	"golang.org/x/sys/unix"
)

// Defaults of Options.
const (
	// DefaultNetnsDir holds bottle's netns files. It is not iproute2's /run/netns on
	// purpose: `ip netns add` bind-mounts /run/netns onto itself, which hides the netns
	// mounts made before it and makes their files impossible to remove.
	DefaultNetnsDir = "/run/bottle/netns"
	DefaultLockFile = "/run/bottle/cni.lock"
	DefaultStateDir = "/var/lib/bottle"
	teardownTimeout = 30 * time.Second
)

// CNICacheDir is where libcni (and so go-cni) keeps results; go-cni cannot change it.
var CNICacheDir = libcni.CacheDir

// DefaultPluginDirs are searched for CNI plugins, in order (nerdctl-style, then Debian).
var DefaultPluginDirs = []string{"/opt/cni/bin", "/usr/lib/cni"}

// requiredPlugins are the CNI plugins the embedded conflists use.
var requiredPlugins = []string{"bridge", "static"}

// Options configures a Manager; zero values mean the defaults.
type Options struct {
	// PluginDirs to search for CNI plugins; default DefaultPluginDirs (only existing ones).
	PluginDirs []string
	// NetnsDir holds a directory of netns files per owner; default DefaultNetnsDir.
	NetnsDir string
	// LockFile serializes CNI calls across processes (flock); default /run/bottle/cni.lock.
	LockFile string
	// StateDir and Namespace (containerd's) make the Owner; default /var/lib/bottle, "".
	StateDir  string
	Namespace string
	// SlotDir holds the host-wide slot reservations; default slots.DefaultDir.
	SlotDir string
}

// Manager creates and removes the host network objects of one Owner.
type Manager struct {
	pluginDirs []string
	owner      names.Owner
	netnsRoot  string // NetnsDir; the owner's files are in netnsDir, <netnsRoot>/<owner>
	netnsDir   string
	lockFile   string
	slots      slots.Store
}

// New checks the CNI plugins and returns a Manager for the owner of opts.
func New(opts Options) (*Manager, error) {
	owner, err := names.NewOwner(cmp.Or(opts.StateDir, DefaultStateDir), opts.Namespace)
	if err != nil {
		return nil, err
	}
	m := &Manager{owner: owner, netnsRoot: cmp.Or(opts.NetnsDir, DefaultNetnsDir),
		lockFile: cmp.Or(opts.LockFile, DefaultLockFile), slots: slots.Store{Dir: opts.SlotDir, Owner: owner}}
	m.netnsDir = filepath.Join(m.netnsRoot, owner.ID)
	candidates := opts.PluginDirs
	if len(candidates) == 0 {
		candidates = DefaultPluginDirs
	}
	for _, d := range candidates {
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			m.pluginDirs = append(m.pluginDirs, d)
		}
	}
	for _, p := range requiredPlugins {
		if _, err := findPlugin(m.pluginDirs, p); err != nil {
			return nil, fmt.Errorf("CNI plugin %q not found in %s: install the CNI plugins (Debian: apt-get install containernetworking-plugins; or unpack the release into /opt/cni/bin): %w",
				p, strings.Join(candidates, " or "), err)
		}
	}
	return m, nil
}

func findPlugin(dirs []string, name string) (string, error) {
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fs.ErrNotExist
}

// Owner returns whose objects the Manager makes and removes.
func (m *Manager) Owner() names.Owner { return m.owner }

// as returns a Manager for the objects of owner ID id ("" for legacy objects).
func (m *Manager) as(id string) *Manager {
	c := *m
	c.owner = names.Owner{ID: id}
	c.netnsDir = filepath.Join(m.netnsRoot, id)
	c.slots.Owner = c.owner
	return &c
}

// PluginDirs returns the plugin directories in use.
func (m *Manager) PluginDirs() []string { return append([]string(nil), m.pluginDirs...) }

var containerNameRECheck = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,127}$`)

// NetnsPath is the netns file of a container: <NetnsDir>/<owner>/bottle-<containerName>.
func (m *Manager) NetnsPath(containerName string) string {
	return filepath.Join(m.netnsDir, names.NetnsFile(containerName))
}

func validateContainerName(name string) error {
	if !containerNameRECheck.MatchString(name) {
		return fmt.Errorf("invalid container name %q for a netns: want ^[a-z0-9][a-z0-9_.-]{0,127}$ (bottle-<identity>[-<role>])", name)
	}
	return nil
}

// normalize fills default interface names and validates attachments, which must be on
// networks of the Manager's owner.
func (m *Manager) normalize(atts []Attachment) ([]Attachment, error) {
	if len(atts) == 0 {
		return nil, errors.New("no network attachments given: a bottle container needs at least the internal network")
	}
	if len(atts) > 10 {
		return nil, fmt.Errorf("%d network attachments given: at most 10 (eth0..eth9)", len(atts))
	}
	out := make([]Attachment, len(atts))
	seen := map[string]bool{}
	defaultRoutes := 0
	for i, a := range atts {
		if a.IfName == "" {
			a.IfName = fmt.Sprintf("eth%d", i)
		}
		if err := a.validate(i); err != nil {
			return nil, err
		}
		if owner, _, _ := names.ParseNetworkName(a.Name); owner != m.owner.ID {
			return nil, fmt.Errorf("network %s belongs to another owner (this is owner %s)", a.Name, m.owner.ID)
		}
		if seen[a.Name] {
			return nil, fmt.Errorf("network %s attached twice: attach each network once", a.Name)
		}
		seen[a.Name] = true
		if a.Egress {
			defaultRoutes++
		}
		out[i] = a
	}
	if defaultRoutes > 1 {
		return nil, fmt.Errorf("%d egress attachments: a netns can have only one default route (runsc), attach at most one egress network", defaultRoutes)
	}
	return out, nil
}

// newCNI builds a go-cni instance with one conflist per attachment; go-cni names the
// interfaces eth0, eth1, ... in the order of the attachments.
func (m *Manager) newCNI(atts []Attachment) (gocni.CNI, error) {
	// WithPluginDir and WithInterfacePrefix must precede the conflists: each network
	// captures the plugin search path and its interface name when it is added.
	opts := []gocni.Opt{
		gocni.WithPluginDir(m.pluginDirs),
		gocni.WithInterfacePrefix("eth"),
		gocni.WithMinNetworkCount(len(atts)),
	}
	for _, a := range atts {
		b, err := RenderConflist(a)
		if err != nil {
			return nil, err
		}
		opts = append(opts, gocni.WithConfListBytes(b))
	}
	c, err := gocni.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("load CNI conflists for %s: %w", attNames(atts), err)
	}
	return c, nil
}

func attNames(atts []Attachment) string {
	var names []string
	for _, a := range atts {
		names = append(names, a.Name)
	}
	return strings.Join(names, ", ")
}

// Netns is one container's network namespace, configured by Setup. Release takes it down
// (CNI DEL, netns file) exactly once: later calls return the first call's result.
type Netns struct {
	// Path is the netns file, for the container's OCI spec.
	Path    string
	release func(context.Context) error
	once    sync.Once
	err     error
}

// Release takes the netns down, as Teardown does.
func (n *Netns) Release(ctx context.Context) error {
	n.once.Do(func() { n.err = n.release(ctx) })
	return n.err
}

// Setup creates the netns file of containerName, brings lo up and runs CNI ADD for every
// attachment (eth0, eth1, ... in order). A leftover netns or cached CNI result of an earlier
// attempt is removed first (CNI DEL before ADD). On failure everything done is undone.
// A netns serves one sandbox start: to restart a container, Setup it again.
func (m *Manager) Setup(ctx context.Context, containerName string, atts []Attachment) (_ *Netns, err error) {
	if err := validateContainerName(containerName); err != nil {
		return nil, err
	}
	atts, err = m.normalize(atts)
	if err != nil {
		return nil, fmt.Errorf("network setup of container %s: %w", containerName, err)
	}
	c, err := m.newCNI(atts)
	if err != nil {
		return nil, fmt.Errorf("network setup of container %s: %w", containerName, err)
	}
	unlock, err := m.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()

	path := m.NetnsPath(containerName)
	stale, err := m.hasState(containerName)
	if err != nil {
		return nil, err
	}
	if stale {
		slog.Debug("netns: removing leftovers of an earlier setup before CNI ADD", "container", containerName)
		if err := m.teardownLocked(ctx, containerName, atts, c); err != nil {
			return nil, fmt.Errorf("network setup of container %s: remove leftovers of an earlier attempt: %w (run `bottle cleanup`)", containerName, err)
		}
	}
	if err := createNetnsFile(path); err != nil {
		return nil, fmt.Errorf("network setup of container %s: %w", containerName, err)
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
				return nil, fmt.Errorf("network setup of container %s: %w", containerName, err)
			}
		}
	}
	res, err := c.SetupSerially(ctx, containerName, path)
	if err != nil {
		return nil, fmt.Errorf("network setup of container %s: CNI ADD of %s into %s: %w", containerName, attNames(atts), path, err)
	}
	if err := checkResult(res, atts); err != nil {
		return nil, fmt.Errorf("network setup of container %s: %w", containerName, err)
	}
	for _, a := range atts {
		if !a.Egress {
			if err := disablePortsIPv6(a.Bridge); err != nil {
				return nil, fmt.Errorf("network setup of container %s: %w", containerName, err)
			}
		}
	}
	slog.Debug("netns: CNI ADD done", "container", containerName, "netns", path, "networks", attNames(atts), "took", time.Since(start))
	return &Netns{Path: path, release: func(ctx context.Context) error { return m.Teardown(ctx, containerName, atts) }}, nil
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
	path := m.NetnsPath(containerName)
	var errs []error
	// A file that holds no netns (a start killed before the bind mount, an unmount without
	// the remove) has nothing to undo, and the plugins' DEL would refuse it: drop it first.
	errs = append(errs, dropUnmounted(path))
	if c != nil {
		// A missing netns is fine: the plugins then only release their IPAM state.
		if err := c.Remove(ctx, containerName, path); err != nil {
			errs = append(errs, fmt.Errorf("CNI DEL of %s for container %s: %w", attNames(atts), containerName, err))
		}
	}
	errs = append(errs, m.delCached(ctx, containerName, nil))
	for _, a := range atts {
		if a.Egress {
			errs = append(errs, firewall.RemoveMasq(a.Name, containerName, a.Addr))
		}
	}
	errs = append(errs, removeNetnsFile(path))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("network teardown of container %s: %w", containerName, err)
	}
	return nil
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
// (all containers if empty) on the owner's networks that match filter (all if nil), then
// removes the masquerade rules of those networks and containers the plugin left.
func (m *Manager) delCached(ctx context.Context, containerID string, filter func(*libcni.NetworkAttachment) bool) error {
	cached, err := m.cachedAttachments(containerID)
	if err != nil {
		return err
	}
	cni := m.libcni()
	var errs []error
	done := map[[2]string]bool{}
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
		done[[2]string{ca.Network, ca.ContainerID}] = true
	}
	if len(done) > 0 {
		errs = append(errs, removeListedMasq(ctx, func(network, container string) bool { return done[[2]string{network, container}] }))
	}
	return errors.Join(errs...)
}

// removeListedMasq removes the masquerade rules (found in the nat table) of the networks
// and containers match selects.
func removeListedMasq(ctx context.Context, match func(network, container string) bool) error {
	rules, err := firewall.ListMasq(ctx)
	if err != nil {
		return fmt.Errorf("list masquerade rules: %w", err)
	}
	var errs []error
	for _, r := range rules {
		if match(r.Network, r.Container) {
			errs = append(errs, firewall.RemoveMasq(r.Network, r.Container, r.Source.Addr()))
		}
	}
	return errors.Join(errs...)
}

// lock takes the CNI flock, polling so that ctx can cancel the wait.
func (m *Manager) lock(ctx context.Context) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(m.lockFile), 0o700); err != nil {
		return nil, fmt.Errorf("create directory of CNI lock file %s: %w", m.lockFile, err)
	}
	f, err := os.OpenFile(m.lockFile, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open CNI lock file %s: %w", m.lockFile, err)
	}
	delay := time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { _ = f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock CNI lock file %s: %w", m.lockFile, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for CNI lock file %s (another bottle is configuring networks): %w", m.lockFile, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, 50*time.Millisecond)
	}
}
