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
	"github.com/bottle-dev/bottle/internal/netns"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/slots"
	"github.com/bottle-dev/bottle/internal/state"
)

// DefaultPool is the address pool bottle networks are carved from.
var DefaultPool = slots.DefaultPool

// PoolSubnets are the internal and egress subnets of a pool's first slot (what `bottle
// plan` shows; start reserves a free slot).
func PoolSubnets(pool netip.Prefix) (internal, egress netip.Prefix, err error) {
	return slots.Subnets(0, pool)
}

// Options configure an Engine.
type Options struct {
	Address, Namespace string
	StateDir           string
	Pool               netip.Prefix
	// NetnsDir holds the netns files (default netns.DefaultNetnsDir).
	NetnsDir string
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
	SidecarHosts      []plan.HostEntry
	// ExtraCA is PEM the egress-proxy trusts besides the system roots.
	ExtraCA string
	// PipelockImage overrides the manifest's pipelock image.
	PipelockImage string
	// KillAt makes start SIGKILL itself after the named step (crash tests only).
	KillAt string
	// LookupEnv reads the invoking host's environment (default os.LookupEnv).
	LookupEnv func(string) (string, bool)
	Log       *slog.Logger
}

// Engine performs bottle operations against containerd and the host network.
type Engine struct {
	opts  Options
	ctr   *ctr.Client
	net   *netns.Manager
	store state.Store
	log   *slog.Logger
}

// Open connects to containerd and checks the CNI plugins.
func Open(ctx context.Context, opts Options) (*Engine, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if !opts.Pool.IsValid() {
		opts.Pool = DefaultPool
	}
	if opts.StateDir == "" || !filepath.IsAbs(opts.StateDir) {
		return nil, fmt.Errorf("state dir %q must be an absolute path", opts.StateDir)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("bottle needs root to manage containers and networks; run it with sudo")
	}
	var copts []ctr.Option
	if opts.RuncRoot != "" {
		copts = append(copts, ctr.WithRuncRoot(opts.RuncRoot))
	}
	c, err := ctr.Connect(ctx, opts.Address, opts.Namespace, copts...)
	if err != nil {
		return nil, err
	}
	n, err := netns.New(netns.Options{StateDir: opts.StateDir, Namespace: opts.Namespace, NetnsDir: opts.NetnsDir})
	if err != nil {
		c.Close()
		return nil, err
	}
	return &Engine{opts: opts, ctr: c, net: n, store: state.Store{Dir: opts.StateDir}, log: opts.Log}, nil
}

// Close releases the containerd connection.
func (e *Engine) Close() error { return e.ctr.Close() }

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
	return e.net.BottleNetworks(m.Identity, m.Slot, pool)
}

// attachments converts a recorded container's attachments for netns.
func (e *Engine) attachments(m *state.Meta, c state.Container) ([]netns.Attachment, error) {
	internal, egress, err := e.networks(m)
	if err != nil {
		return nil, err
	}
	var out []netns.Attachment
	for _, a := range c.Attachments {
		addr, err := netip.ParseAddr(a.Address)
		if err != nil {
			return nil, fmt.Errorf("bottle %s: container %s: address %q: %w", m.Identity, c.Name, a.Address, err)
		}
		n := internal
		if a.Network == plan.NetEgress {
			n = egress
		}
		out = append(out, netns.Attachment{Network: n, IfName: a.IfName, Addr: addr})
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
// hosts without a registry. It returns the image names.
func ImportImage(ctx context.Context, opts Options, path string, progress func(string)) ([]string, error) {
	c, err := ctr.Connect(ctx, opts.Address, opts.Namespace)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ImportArchiveFile(ctx, path, progress)
}
