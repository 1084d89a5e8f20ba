// Package runtime runs bottles: it turns a plan into containers, network namespaces and
// firewall rules, and takes them down again. Every start is a transaction: a failure or an
// interrupt part way removes everything created so far.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/bottle-dev/bottle/internal/ctr"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/netns"
	"github.com/bottle-dev/bottle/internal/slots"
	"github.com/bottle-dev/bottle/internal/state"
)

// DefaultPool is the address pool bottle networks are carved from.
var DefaultPool = slots.DefaultPool

// Options configure an Engine.
type Options struct {
	Address, Namespace string
	StateDir           string
	Pool               netip.Prefix
	// NetnsDir holds the netns files (default netns.DefaultNetnsDir).
	NetnsDir string
	// PluginDirs overrides where CNI plugins are looked for.
	PluginDirs []string
	// RuncRoot is the runc state root for runc-shim runtimes (default: the shim's).
	RuncRoot string
	// RuntimeOverride and FilterOverride win over the manifest.
	RuntimeOverride, FilterOverride string
	AllowUnsafeRunc                 bool
	// RunscPath is where runsc is (default: search PATH, then /usr/local/bin).
	RunscPath string
	Version   string
	// SidecarResolvConf is the resolver config of sidecars that leave the bottle;
	// SidecarHosts are extra hosts entries for them.
	SidecarResolvConf string
	SidecarHosts      []names.HostEntry
	// ExtraCA is PEM the egress-proxy trusts besides the system roots.
	ExtraCA string
	// PipelockImage overrides the manifest's pipelock image.
	PipelockImage string
	// KillAt makes start SIGKILL itself after the named step (crash tests only).
	KillAt string
	// Fault breaks the bottle's seal on purpose (FaultRemoveFirewall,
	// FaultDefaultRoute; self-test tests only).
	Fault string
	// NoSelfTest skips the start self-test (debugging; it warns what it skips).
	NoSelfTest bool
	// LookupEnv reads the invoking host's environment (default os.LookupEnv).
	LookupEnv func(string) (string, bool)
	Log       *slog.Logger
	// Progress receives the progress of image imports and of the sidecar image write.
	Progress ctr.ProgressFunc
}

// withDefaults fills in what was left unset.
func (o Options) withDefaults() Options {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if !o.Pool.IsValid() {
		o.Pool = DefaultPool
	}
	return o
}

// Engine performs bottle operations against containerd and the host network.
type Engine struct {
	opts  Options
	ctr   containers
	net   network
	store state.Store
	log   *slog.Logger
	// offline says why containerd was not reached (an engine that only plans).
	offline error
}

// Open connects to containerd and checks the CNI plugins.
func Open(ctx context.Context, opts Options) (*Engine, error) {
	opts = opts.withDefaults()
	if opts.StateDir == "" || !filepath.IsAbs(opts.StateDir) {
		return nil, fmt.Errorf("state dir %q must be an absolute path", opts.StateDir)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("bottle needs root to manage containers and networks; run it with sudo")
	}
	c, err := connect(ctx, opts)
	if err != nil {
		return nil, err
	}
	n, err := hostNetwork(opts)
	if err != nil {
		c.Close()
		return nil, err
	}
	return newEngine(opts, c, n), nil
}

// OpenPlanner opens an engine that only plans (`bottle plan`): it needs no root and no
// host network, and uses containerd only to see which images are present, when it can
// reach it (Offline says why not).
func OpenPlanner(ctx context.Context, opts Options) *Engine {
	opts = opts.withDefaults()
	e := newEngine(opts, nil, nil)
	c, err := connect(ctx, opts)
	if err == nil {
		vctx, cancel := context.WithTimeout(ctx, plannerDialTimeout)
		_, err = c.Version(vctx)
		cancel()
		if err != nil {
			c.Close()
		}
	}
	if err != nil {
		e.offline = err
	} else {
		e.ctr = c
	}
	return e
}

// plannerDialTimeout bounds how long `bottle plan` waits for containerd.
const plannerDialTimeout = 3 * time.Second

func newEngine(opts Options, c containers, n network) *Engine {
	return &Engine{opts: opts, ctr: c, net: n, store: state.Store{Dir: opts.StateDir}, log: opts.Log}
}

// connect opens containerd as every command (and doctor) does.
func connect(ctx context.Context, opts Options) (*ctr.Client, error) {
	var copts []ctr.Option
	if opts.RuncRoot != "" {
		copts = append(copts, ctr.WithRuncRoot(opts.RuncRoot))
	}
	if opts.Progress != nil {
		copts = append(copts, ctr.WithProgress(opts.Progress))
	}
	return ctr.Connect(ctx, opts.Address, opts.Namespace, copts...)
}

// hostNetwork opens the host network manager as every command (and doctor) does.
func hostNetwork(opts Options) (*netns.Manager, error) {
	return netns.New(netns.Options{PluginDirs: opts.PluginDirs, StateDir: opts.StateDir, Namespace: opts.Namespace, NetnsDir: opts.NetnsDir})
}

// Offline says why an engine of OpenPlanner could not reach containerd (nil if it did).
func (e *Engine) Offline() error { return e.offline }

// Close releases the containerd connection.
func (e *Engine) Close() error {
	if e.ctr == nil {
		return nil
	}
	return e.ctr.Close()
}

// lookupEnv reads a variable of the invoking host's environment.
func (e *Engine) lookupEnv(name string) (string, bool) {
	if e.opts.LookupEnv != nil {
		return e.opts.LookupEnv(name)
	}
	return os.LookupEnv(name)
}

// networks returns the bottle's two networks for a recorded slot.
func (e *Engine) networks(m *state.Meta) (internal, egress netns.Network, err error) {
	pool := e.opts.Pool
	if m.Pool != "" {
		if pool, err = netip.ParsePrefix(m.Pool); err != nil {
			return internal, egress, fmt.Errorf("bottle %s: recorded pool %q: %w", m.Identity, m.Pool, err)
		}
	}
	return e.net.BottleNetworks(m.Identity.String(), m.Slot, pool)
}

// attachments puts a recorded container's attachments on the bottle's networks.
func (e *Engine) attachments(m *state.Meta, c state.Container) ([]netns.Attachment, error) {
	internal, egress, err := e.networks(m)
	if err != nil {
		return nil, err
	}
	var out []netns.Attachment
	for _, a := range c.Attachments {
		n := internal
		if a.Network == names.NetEgress {
			n = egress
		}
		out = append(out, netns.Attachment{Network: n, IfName: a.IfName, Addr: a.Address})
	}
	return out, nil
}

// killPoint lets crash tests interrupt a start after the named step: KillAt "STEP" ends
// the process with SIGKILL (nothing can run after it: `bottle cleanup` must cope), and
// "int:STEP" sends it SIGINT like a Ctrl-C (the start must take back what it made) and
// waits until the start has noticed.
func (e *Engine) killPoint(ctx context.Context, step string) {
	switch e.opts.KillAt {
	case step:
		e.log.Debug("killing myself as asked", "after", step)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	case "int:" + step:
		e.log.Debug("interrupting myself as asked", "after", step)
		_ = syscall.Kill(os.Getpid(), syscall.SIGINT)
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
	}
}

// Stdio is the terminal or pipes the agent is attached to.
type Stdio struct {
	In       io.Reader
	Out, Err io.Writer
	TTY      bool
}

// ImportImage imports an OCI image archive into containerd (no network setup needed), for
// hosts without a registry, reporting to opts.Progress. It returns the image names.
func ImportImage(ctx context.Context, opts Options, path string) ([]string, error) {
	c, err := connect(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ImportArchiveFile(ctx, path, opts.Progress)
}
