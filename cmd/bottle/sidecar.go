package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/gitgate"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/supervise"
)

// sidecarServer is one of bottle's own sidecars: its subcommand (its role), and how its
// config file turns into a server listening on the config's address.
type sidecarServer struct {
	role, usage string
	// start decodes the config file and builds the server, which hands its audit records
	// to rec (nil: none); the credentials come from this container's own process env only.
	start func(ctx context.Context, config string, rec audit.Recorder) (listen string, serve func(context.Context, net.Listener) error, err error)
}

// sidecarServers are the sidecars the bottle binary runs; plan runs each as
// `/bottle sidecar ROLE --config FILE`.
var sidecarServers = []sidecarServer{
	{names.RoleFilter, "the builtin allowlist filter (HTTP forward proxy)", func(_ context.Context, config string, rec audit.Recorder) (string, func(context.Context, net.Listener) error, error) {
		var cfg egress.FilterConfig
		if err := readStrictJSON(config, &cfg); err != nil {
			return "", nil, err
		}
		cfg.Recorder = rec
		f, err := egress.NewFilter(cfg, sidecarLogger())
		if err != nil {
			return "", nil, err
		}
		return cfg.Listen, f.Serve, nil
	}},
	{names.RoleGitGate, "git-gate: the agent's only way to the declared git remotes", func(ctx context.Context, config string, rec audit.Recorder) (string, func(context.Context, net.Listener) error, error) {
		var cfg gitgate.Config
		if err := readStrictJSON(config, &cfg); err != nil {
			return "", nil, err
		}
		cfg.Recorder = rec
		if cfg.SpoolDir != "" {
			if err := os.MkdirAll(cfg.SpoolDir, 0o700); err != nil {
				return "", nil, err
			}
		}
		g, err := gitgate.New(cfg, os.Getenv, sidecarLogger())
		if err != nil {
			return "", nil, err
		}
		// Host keys, credentials and repositories are checked before the sidecar reports
		// ready, so a bad remote fails the start. The bound stays under start's readiness
		// timeout (20 s), so an upstream that does not answer fails with this error in the
		// log, not an empty one.
		ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if err := g.Probe(ctx); err != nil {
			return "", nil, fmt.Errorf("git-gate: %w", err)
		}
		return cfg.Listen, g.Serve, nil
	}},
	{names.RoleEgressProxy, "the credential-injecting egress-proxy", func(_ context.Context, config string, rec audit.Recorder) (string, func(context.Context, net.Listener) error, error) {
		var cfg egress.ProxyConfig
		if err := readStrictJSON(config, &cfg); err != nil {
			return "", nil, err
		}
		cfg.Recorder = rec
		p, err := egress.NewEgressProxy(cfg, os.Getenv, sidecarLogger())
		if err != nil {
			return "", nil, err
		}
		return cfg.Listen, p.Serve, nil
	}},
	{names.RoleSupervise, "supervise: the agent's proposals to change its capabilities", func(_ context.Context, config string, rec audit.Recorder) (string, func(context.Context, net.Listener) error, error) {
		var cfg supervise.Config
		if err := readStrictJSON(config, &cfg); err != nil {
			return "", nil, err
		}
		cfg.Recorder = rec
		s, err := supervise.NewServer(cfg, sidecarLogger())
		if err != nil {
			return "", nil, err
		}
		return cfg.Listen, s.Serve, nil
	}},
}

// sidecarCommand runs bottle's own sidecars inside their containers (hidden: users never
// call it). Each serves until SIGTERM and reports readiness by creating --ready-file once
// its listener is bound.
func sidecarCommand() *cli.Command {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "config", Required: true, Usage: "JSON config file"},
		&cli.StringFlag{Name: "ready-file", Value: "/run/bottle/ready", Usage: "created once the sidecar serves"},
		&cli.StringFlag{Name: "audit", Usage: "file the sidecar appends its audit records to"},
	}
	cmd := &cli.Command{
		Name:   "sidecar",
		Hidden: true,
		Usage:  "run one of bottle's sidecars (inside its container)",
	}
	for _, s := range sidecarServers {
		cmd.Subcommands = append(cmd.Subcommands, &cli.Command{
			Name:  s.role,
			Usage: s.usage,
			Flags: flags,
			Action: reportingFailure(func(c *cli.Context) error {
				var rec audit.Recorder
				if path := c.String("audit"); path != "" {
					w := audit.NewWriter(path, s.role, func(err error) { sidecarLogger().Warn("audit record not written", "error", err.Error()) })
					defer w.Close()
					rec = w
				}
				listen, serve, err := s.start(c.Context, c.String("config"), rec)
				if err != nil {
					return err
				}
				return serveSidecar(c, listen, serve)
			}),
		})
	}
	return cmd
}

// reportingFailure makes a sidecar that fails leave its error next to its ready file,
// where the start that waits for it reads the reason (the task's log may not have it
// yet when the exit is reported). Sidecar errors never hold secret values.
func reportingFailure(action cli.ActionFunc) cli.ActionFunc {
	return func(c *cli.Context) error {
		err := action(c)
		if ready := c.String("ready-file"); err != nil && ready != "" {
			_ = os.WriteFile(filepath.Join(filepath.Dir(ready), plan.SidecarErrorFile), []byte(err.Error()), 0o644)
		}
		return err
	}
}

func sidecarLogger() *slog.Logger { return slog.New(slog.NewJSONHandler(os.Stdout, nil)) }

func readStrictJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

func serveSidecar(c *cli.Context, addr string, serve func(context.Context, net.Listener) error) error {
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, os.Interrupt)
	defer stop()
	if addr == "" {
		return fmt.Errorf("config %s has no listen address", c.String("config"))
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w; check that the address is free and belongs to this host", addr, err)
	}
	if ready := c.String("ready-file"); ready != "" {
		if err := os.WriteFile(ready, nil, 0o644); err != nil {
			ln.Close()
			return fmt.Errorf("report readiness in %s: %w", filepath.Dir(ready), err)
		}
	}
	return serve(ctx, ln)
}
