package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/gitgate"
	"github.com/bottle-dev/bottle/internal/k8s/canary"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/supervise"
)

// sidecarServer is one of bottle's own sidecars: its subcommand (its role), and how its
// config file turns into a server listening on the config's address.
type sidecarServer struct {
	role string
	// start decodes the config file and builds the server, which hands its audit records
	// to rec (nil: none); the credentials come from this container's own process env only.
	start func(ctx context.Context, config string, rec audit.Recorder) (listen string, serve func(context.Context, net.Listener) error, err error)
}

// sidecarServers are the sidecars this binary runs; plan runs each as
// `/bottle sidecar ROLE --config FILE`.
var sidecarServers = []sidecarServer{
	{names.RoleFilter, func(_ context.Context, config string, rec audit.Recorder) (string, func(context.Context, net.Listener) error, error) {
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
	{names.RoleGitGate, func(ctx context.Context, config string, rec audit.Recorder) (string, func(context.Context, net.Listener) error, error) {
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
	{names.RoleEgressProxy, func(_ context.Context, config string, rec audit.Recorder) (string, func(context.Context, net.Listener) error, error) {
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
	{names.RoleSupervise, func(_ context.Context, config string, rec audit.Recorder) (string, func(context.Context, net.Listener) error, error) {
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

// main runs one sidecar, as the plan calls it: `/bottle sidecar ROLE --config FILE
// [--ready-file F] [--audit F]`. It is a binary of its own, apart from bottle's CLI:
// each sidecar runs in its own gVisor sandbox, where every page of the program it
// touches is private memory, and this one carries only the sidecars' code (less than
// half of bottle's resident size).
func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "bottle-sidecar:", err)
		os.Exit(1)
	}
}

// version is stamped by the Makefile (-X main.version=...); `bottle doctor` runs
// `/bottle version` in the sidecar image under the runtime.
var version = "dev"

func run(args []string) error {
	if len(args) == 1 && args[0] == "version" {
		fmt.Println("bottle-sidecar " + version)
		return nil
	}
	if len(args) > 0 && args[0] == "canary" {
		return runCanary(args[1:])
	}
	if len(args) < 2 || args[0] != "sidecar" {
		return fmt.Errorf("usage: bottle-sidecar sidecar ROLE --config FILE [--ready-file FILE] [--audit FILE] (ROLE: %s)", roles())
	}
	i := slices.IndexFunc(sidecarServers, func(s sidecarServer) bool { return s.role == args[1] })
	if i < 0 {
		return fmt.Errorf("unknown sidecar %q (known: %s)", args[1], roles())
	}
	s := sidecarServers[i]
	fs := flag.NewFlagSet(s.role, flag.ContinueOnError)
	config := fs.String("config", "", "JSON config file")
	ready := fs.String("ready-file", "/run/bottle/ready", "created once the sidecar serves")
	auditFile := fs.String("audit", "", "file the sidecar appends its audit records to")
	if err := fs.Parse(args[2:]); err != nil {
		return err
	}
	if *config == "" || fs.NArg() != 0 {
		return fmt.Errorf("sidecar %s: --config FILE is required and nothing else may follow", s.role)
	}
	err := serveRole(s, *config, *ready, *auditFile)
	// The start that waits for the sidecar reads the reason next to the ready file (the
	// task's log may not have it yet when the exit is reported). Sidecar errors never
	// hold secret values.
	if err != nil && *ready != "" {
		_ = os.WriteFile(filepath.Join(filepath.Dir(*ready), names.SidecarErrorFile), []byte(err.Error()), 0o644)
	}
	return err
}

// runCanary runs what `bottle k8s doctor`'s Pods run from the sidecar image: `canary
// serve PORT` or `canary dial ADDR TRIES`.
func runCanary(args []string) error {
	switch {
	case len(args) == 2 && args[0] == "serve":
		return canary.Serve(args[1])
	case len(args) == 3 && args[0] == "dial":
		tries, err := strconv.Atoi(args[2])
		if err != nil || tries < 1 {
			return fmt.Errorf("canary dial: tries %q is not a positive number", args[2])
		}
		return canary.Dial(args[1], tries)
	}
	return fmt.Errorf("usage: bottle-sidecar canary serve PORT | canary dial ADDR TRIES")
}

func roles() string {
	var out []string
	for _, s := range sidecarServers {
		out = append(out, s.role)
	}
	return strings.Join(out, ", ")
}

// serveRole serves sidecar s until SIGTERM, creating ready once its listener is bound.
func serveRole(s sidecarServer, config, ready, auditFile string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var rec audit.Recorder
	if auditFile != "" {
		w := audit.NewWriter(auditFile, s.role, func(err error) { sidecarLogger().Warn("audit record not written", "error", err.Error()) })
		defer w.Close()
		rec = w
	}
	addr, serve, err := s.start(ctx, config, rec)
	if err != nil {
		return err
	}
	if addr == "" {
		return fmt.Errorf("config %s has no listen address", config)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w; check that the address is free and belongs to this host", addr, err)
	}
	if ready != "" {
		if err := os.WriteFile(ready, nil, 0o644); err != nil {
			ln.Close()
			return fmt.Errorf("report readiness in %s: %w", filepath.Dir(ready), err)
		}
	}
	return serve(ctx, ln)
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
