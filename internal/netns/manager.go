package netns

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

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
	// LockFile orders CNI calls across processes (flock: setups shared, teardowns and
	// sweeps exclusive); default /run/bottle/cni.lock.
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

// lock takes the CNI flock exclusively: teardowns and sweeps, which remove objects a
// half-done setup may be making, run alone.
func (m *Manager) lock(ctx context.Context) (func(), error) { return m.flock(ctx, unix.LOCK_EX) }

// lockShared takes the CNI flock shared: setups of different containers run at once (the
// bridge plugin tolerates concurrent ADDs on one bridge, and each container has its own
// netns, veth, cache entry and masquerade chain), but never beside a teardown or sweep.
func (m *Manager) lockShared(ctx context.Context) (func(), error) { return m.flock(ctx, unix.LOCK_SH) }

// flock takes the CNI flock in mode how, polling so that ctx can cancel the wait.
func (m *Manager) flock(ctx context.Context, how int) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(m.lockFile), 0o700); err != nil {
		return nil, fmt.Errorf("create directory of CNI lock file %s: %w", m.lockFile, err)
	}
	f, err := os.OpenFile(m.lockFile, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open CNI lock file %s: %w", m.lockFile, err)
	}
	delay := time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
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
