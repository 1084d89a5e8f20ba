// Package ctr is bottle's only user of the containerd client: connecting, images
// (import of OCI archives, bottle's own sidecar image), containers and tasks (run with
// attach, detached start, exec, stop), listing by labels and teardown.
package ctr

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
)

const (
	// DefaultAddress is the system containerd socket.
	DefaultAddress = "/run/containerd/containerd.sock"
	// DefaultNamespace is bottle's containerd namespace.
	DefaultNamespace = "bottle"

	// SnapshotterOverlayfs is preferred; SnapshotterNative is the fallback when the
	// overlayfs snapshotter is not available (e.g. state dir on overlay or tmpfs).
	SnapshotterOverlayfs = "overlayfs"
	SnapshotterNative    = "native"

	dialTimeout     = 3 * time.Second
	teardownTimeout = 30 * time.Second
	// ReconnectTimeout bounds how long a wait for a task rides out a containerd that does
	// not answer (a restart): the tasks keep running under their shims meanwhile.
	ReconnectTimeout = 60 * time.Second
)

// setupHint tells the operator how to get a containerd bottle can use.
const setupHint = "start containerd v2 with `sudo make setup` (scripts/setup-host.sh --system), " +
	"or point bottle at a running one with --address"

// Client is a connection to containerd, bound to one namespace and snapshotter.
type Client struct {
	c           *client.Client
	address     string
	namespace   string
	snapshotter string
	runcRoot    string
	progress    ProgressFunc // of the sidecar image write (EnsureSidecarImage)
}

// Option configures Connect.
type Option func(*connectOptions)

type connectOptions struct {
	runcRoot string
	progress ProgressFunc
}

// WithRuncRoot sets the runc/runsc state directory (--root) for containers created
// with a Runtime that has none (see Runtime.RuncRoot).
func WithRuncRoot(dir string) Option {
	return func(o *connectOptions) { o.runcRoot = dir }
}

// WithProgress reports the progress of the sidecar image write that EnsureSidecarImage
// makes on the first start of a bottle version.
func WithProgress(p ProgressFunc) Option {
	return func(o *connectOptions) { o.progress = p }
}

// Connect dials containerd at address (empty: DefaultAddress) and binds the client to
// namespace (empty: DefaultNamespace). It fails fast with setup instructions when the
// socket is missing or nobody answers.
func Connect(ctx context.Context, address, namespace string, opts ...Option) (*Client, error) {
	var o connectOptions
	for _, opt := range opts {
		opt(&o)
	}
	if address == "" {
		address = DefaultAddress
	}
	if namespace == "" {
		namespace = DefaultNamespace
	}
	if err := identifiers.Validate(namespace); err != nil {
		return nil, fmt.Errorf("containerd namespace %q: %w", namespace, err)
	}
	address = strings.TrimPrefix(address, "unix://")
	st, err := os.Stat(address)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("containerd socket %s does not exist: %s: %w", address, setupHint, err)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("containerd socket %s: permission denied: run bottle as root (sudo): %w", address, err)
	case err != nil:
		return nil, fmt.Errorf("containerd socket %s: %w", address, err)
	case st.Mode()&fs.ModeSocket == 0:
		return nil, fmt.Errorf("containerd address %s is not a socket: %s", address, setupHint)
	}

	cc, err := client.New(address, client.WithDefaultNamespace(namespace), client.WithTimeout(dialTimeout))
	if err != nil {
		return nil, fmt.Errorf("connect to containerd at %s: %s: %w", address, setupHint, err)
	}
	c := &Client{c: cc, address: address, namespace: namespace}

	pctx, cancel := context.WithTimeout(c.ctx(ctx), dialTimeout)
	defer cancel()
	if _, err := cc.Version(pctx); err != nil {
		cc.Close()
		if errors.Is(err, fs.ErrPermission) || strings.Contains(err.Error(), "permission denied") {
			return nil, fmt.Errorf("connect to containerd at %s: permission denied: run bottle as root (sudo): %w", address, err)
		}
		return nil, fmt.Errorf("containerd at %s does not answer (is it running?): %s: %w", address, setupHint, err)
	}

	c.runcRoot, c.progress = o.runcRoot, o.progress
	if c.snapshotter, err = c.detectSnapshotter(pctx); err != nil {
		cc.Close()
		return nil, err
	}
	slog.Debug("connected to containerd", "address", address, "namespace", namespace, "snapshotter", c.snapshotter)
	return c, nil
}

// detectSnapshotter prefers overlayfs and falls back to native when overlayfs did not
// load (containerd checks at start whether overlay mounts work on its root).
func (c *Client) detectSnapshotter(ctx context.Context) (string, error) {
	resp, err := c.c.IntrospectionService().Plugins(ctx, `type=="io.containerd.snapshotter.v1"`)
	if err != nil {
		return "", fmt.Errorf("containerd at %s: list snapshotter plugins: %w", c.address, err)
	}
	ok := map[string]bool{}
	for _, p := range resp.Plugins {
		ok[p.ID] = p.InitErr == nil
	}
	for _, name := range []string{SnapshotterOverlayfs, SnapshotterNative} {
		if ok[name] {
			return name, nil
		}
	}
	return "", fmt.Errorf("containerd at %s has neither the overlayfs nor the native snapshotter working; check its log and config", c.address)
}

// Close releases the connection.
func (c *Client) Close() error { return c.c.Close() }

// Namespace is the containerd namespace the client works in.
func (c *Client) Namespace() string { return c.namespace }

// Address is the containerd socket.
func (c *Client) Address() string { return c.address }

// Version returns the daemon's version string.
func (c *Client) Version(ctx context.Context) (string, error) {
	v, err := c.c.Version(c.ctx(ctx))
	if err != nil {
		return "", fmt.Errorf("containerd at %s: version: %w", c.address, err)
	}
	return v.Version, nil
}

// ctx attaches the client's namespace.
func (c *Client) ctx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, c.namespace)
}

// teardownCtx is for cleanup that must finish even when ctx was cancelled.
func (c *Client) teardownCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.ctx(context.WithoutCancel(ctx)), teardownTimeout)
}

// Unreachable reports whether err means containerd did not answer (stopped, restarting):
// the tasks may well still run.
func Unreachable(err error) bool {
	return err != nil && (errdefs.IsUnavailable(err) || errdefs.IsUnavailable(errgrpc.ToNative(err)))
}

// Ping checks that containerd answers, waiting up to wait for it (e.g. while it restarts).
// The gRPC connection redials by itself (its backoff is at most dialTimeout).
func (c *Client) Ping(ctx context.Context, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		pctx, cancel := context.WithTimeout(c.ctx(ctx), dialTimeout)
		_, err := c.c.Version(pctx)
		cancel()
		err = errgrpc.ToNative(err)
		if hung := errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil; err == nil || !(Unreachable(err) || hung) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd at %s did not answer for %s (%v): %w", c.address, wait, err, errdefs.ErrUnavailable)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
