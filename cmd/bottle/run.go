package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/bottle-dev/bottle/internal/hostenv"
	"github.com/bottle-dev/bottle/internal/hostfile"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/runtime"
)

// runFlags are shared by start, resume and plan.
func runFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "detach", Aliases: []string{"d"}, Usage: "start the agent in the background (output goes to 'bottle logs')"},
		&cli.StringFlag{Name: "runtime", Usage: "override the runtime: " + strings.Join(manifest.RuntimeChoices, ", ")},
		&cli.StringFlag{Name: "filter", Usage: "override the allowlist filter: " + strings.Join(manifest.FilterChoices, ", ")},
		&cli.StringFlag{Name: "runsc", Usage: "path of the runsc binary (default: search PATH, then /usr/local/bin)"},
		&cli.BoolFlag{Name: "allow-unsafe-runc", Usage: "allow runtime runc (NO gVisor sandbox: the agent shares the host kernel)"},
		poolFlag(),
		&cli.StringFlag{Name: "resolv-conf", EnvVars: []string{"BOTTLE_RESOLV_CONF"}, Usage: "resolver config for sidecars that leave the bottle (default: the host's)"},
		&cli.StringSliceFlag{Name: "add-host", Usage: "extra hosts entry NAME:IP for the sidecars that leave the bottle (repeatable)"},
		&cli.StringFlag{Name: "ca-file", Usage: "PEM file of extra CAs the egress-proxy trusts for upstreams (a private CA)"},
		&cli.StringFlag{Name: "pipelock-image", Usage: "pipelock image (overrides the manifest's and the pinned default)"},
		runcRootFlag(),
		&cli.BoolFlag{Name: "no-self-test", Usage: "DEBUGGING ONLY: skip the self-test that proves, before the agent's command runs, that the bottle is sealed (no route, no resolver, no direct connection out, the filter refuses, the firewall is in force)"},
	}
}

// restartFlags are the flags of commands that restart a running bottle as resume does
// (image build, approve of a Dockerfile): resume's, but the bottle keeps its mode.
func restartFlags() []cli.Flag {
	return slices.DeleteFunc(runFlags(), func(f cli.Flag) bool { return f.Names()[0] == "detach" })
}

// startFlags are start's flags; plan takes the same ones, so it shows what start runs.
func startFlags() []cli.Flag {
	return append(runFlags(), manifestFlag(),
		&cli.BoolFlag{Name: "cwd", Usage: "give the agent a copy of the current directory instead of the directory itself"},
		&cli.BoolFlag{Name: "rm", Usage: "remove the bottle when the agent exits (instead of keeping it stopped for 'bottle resume')"})
}

func poolFlag() cli.Flag {
	return &cli.StringFlag{Name: "pool", Value: runtime.DefaultPool.String(), EnvVars: []string{"BOTTLE_POOL"}, Usage: "address pool for bottle networks"}
}

func runcRootFlag() cli.Flag {
	return &cli.StringFlag{Name: "runc-root", Hidden: true, EnvVars: []string{"BOTTLE_RUNC_ROOT"}, Usage: "runc state root (tests)"}
}

// withEngine opens the engine for one command and closes it afterwards.
func withEngine(c *cli.Context, fn func(*runtime.Engine) error) error {
	e, err := openEngine(c)
	if err != nil {
		return err
	}
	defer e.Close()
	return fn(e)
}

// openEngine opens the engine of a command that changes the host.
func openEngine(c *cli.Context) (*runtime.Engine, error) {
	opts, err := engineOptions(c)
	if err != nil {
		return nil, err
	}
	// From here on, child processes (iptables, CNI plugins, cp) get a minimal environment
	// and host variables are read from the snapshot.
	opts.LookupEnv = hostenv.Take().Lookup
	return runtime.Open(c.Context, opts)
}

// engineOptions turns the global and the command's flags into engine options: the one
// place for start, resume, plan, doctor and the other commands (a flag a command does
// not have reads as unset).
func engineOptions(c *cli.Context) (runtime.Options, error) {
	opts := runtime.Options{
		Address:         lineageString(c, "address"),
		Namespace:       lineageString(c, "namespace"),
		StateDir:        absOr(lineageString(c, "state-dir")),
		RuntimeOverride: c.String("runtime"),
		FilterOverride:  c.String("filter"),
		AllowUnsafeRunc: c.Bool("allow-unsafe-runc"),
		RuncRoot:        c.String("runc-root"),
		RunscPath:       c.String("runsc"),
		PipelockImage:   c.String("pipelock-image"),
		Version:         version,
		KillAt:          os.Getenv("BOTTLE_TEST_KILL_AT"),
		Fault:           os.Getenv("BOTTLE_TEST_FAULT"),
		NoSelfTest:      c.Bool("no-self-test"),
		Log:             slog.Default(),
		Progress:        stderr.progress,
	}
	if p := c.String("pool"); p != "" {
		pool, err := netip.ParsePrefix(p)
		if err != nil || !pool.Addr().Is4() || pool.Bits() > 23 {
			return opts, usageError{fmt.Errorf("--pool %q: want an IPv4 prefix of /23 or wider, e.g. 10.213.0.0/16", p)}
		}
		opts.Pool = pool
	}
	for _, h := range c.StringSlice("add-host") {
		entry, err := names.ParseHostEntry(h)
		if err != nil {
			return opts, usageError{fmt.Errorf("--add-host: %w", err)}
		}
		opts.SidecarHosts = append(opts.SidecarHosts, entry)
	}
	if f := c.String("ca-file"); f != "" {
		data, err := hostfile.ReadPEM(f)
		if err != nil {
			return opts, usageError{fmt.Errorf("--ca-file: %w", err)}
		}
		opts.ExtraCA = string(data)
	}
	// Unset, start uses the host's resolver and resume the one recorded at start.
	if f := c.String("resolv-conf"); f != "" {
		data, err := hostfile.Read(f, hostfile.MaxResolvConf)
		if err != nil {
			return opts, usageError{fmt.Errorf("--resolv-conf: %w", err)}
		}
		opts.SidecarResolvConf = string(data)
	}
	return opts, nil
}

// planOptions reads what start runs (and plan shows) from the manifest, the arguments
// ([AGENT] [-- CMD ARGS...]) and the current directory. Every host file is read here,
// once, before anything is created.
func planOptions(c *cli.Context, cmd string) (runtime.PlanOptions, error) {
	po, err := planOptionsWithoutFiles(c, cmd)
	if err != nil {
		return po, err
	}
	po.HostFiles, err = plan.ReadHostFiles(po.Manifest, po.ManifestPath, po.Agent, hostfile.ReadPEM)
	return po, err
}

// planOptionsWithoutFiles are planOptions without the host files the bottle names (a
// command that must not read them: export).
func planOptionsWithoutFiles(c *cli.Context, cmd string) (runtime.PlanOptions, error) {
	m, src, err := loadManifest(c)
	if err != nil {
		return runtime.PlanOptions{}, err
	}
	args, command := splitCommand(c)
	agent, err := agentName(args, m, src, cmd)
	if err != nil {
		return runtime.PlanOptions{}, err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return runtime.PlanOptions{}, fmt.Errorf("current directory: %w", err)
	}
	return runtime.PlanOptions{
		Manifest: m, ManifestPath: src.Path, Agent: agent, Workspace: cwd,
		CopyCwd: c.Bool("cwd"), Command: command,
	}, nil
}

func stdio() runtime.Stdio {
	return runtime.Stdio{In: os.Stdin, Out: os.Stdout, Err: os.Stderr, TTY: term.IsTerminal(int(os.Stdin.Fd()))}
}

// exitWith turns an agent's exit status into bottle's.
func exitWith(code int, err error) error {
	if err != nil {
		return err
	}
	if code != 0 {
		return cli.Exit("", code)
	}
	return nil
}

func identityArg(c *cli.Context) (names.Identity, error) {
	if c.NArg() != 1 {
		return "", usageError{fmt.Errorf("expected one bottle identity (see `bottle ps`), got %d arguments", c.NArg())}
	}
	id, err := names.ParseIdentity(c.Args().First())
	if err != nil {
		return "", usageError{err}
	}
	return id, nil
}

func lifecycleCommands() []*cli.Command {
	return []*cli.Command{
		{
			Name:         "start",
			Usage:        "start an agent in a new bottle on the current directory",
			ArgsUsage:    "[AGENT] [-- CMD ARGS...]",
			OnUsageError: onUsageError,
			Flags:        startFlags(),
			Action: func(c *cli.Context) error {
				if c.Bool("rm") && c.Bool("detach") {
					return usageError{errors.New("--rm and --detach exclude each other: a detached bottle is removed with `bottle rm ID`")}
				}
				po, err := planOptions(c, "start")
				if err != nil {
					return err
				}
				return withEngine(c, func(e *runtime.Engine) error {
					return exitWith(e.Start(c.Context, runtime.StartOptions{
						PlanOptions: po, Detach: c.Bool("detach"), Remove: c.Bool("rm"), Stdio: stdio(),
					}))
				})
			},
		},
		{
			Name:         "resume",
			Usage:        "start a stopped bottle again, with the same identity",
			ArgsUsage:    "ID",
			OnUsageError: onUsageError,
			Flags:        runFlags(),
			Action: func(c *cli.Context) error {
				id, err := identityArg(c)
				if err != nil {
					return err
				}
				return withEngine(c, func(e *runtime.Engine) error {
					load := func(path string) (*manifest.Manifest, string, plan.HostFiles, error) {
						return runtime.LoadRecordedManifest(path, id.Agent())
					}
					return exitWith(e.Resume(c.Context, id, load, c.Bool("detach"), stdio()))
				})
			},
		},
		{
			Name:         "ps",
			Usage:        "list bottles",
			OnUsageError: onUsageError,
			Flags:        []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
			Action: func(c *cli.Context) error {
				return withEngine(c, func(e *runtime.Engine) error {
					list, err := e.List(c.Context)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						enc := json.NewEncoder(c.App.Writer)
						enc.SetIndent("", "  ")
						return enc.Encode(list)
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "IDENTITY\tAGENT\tPHASE\tCONTAINERS\tWORKSPACE")
					for _, s := range list {
						phase := s.Phase
						if s.Reason != "" {
							phase += ": " + s.Reason
						}
						var parts []string
						for _, role := range names.Roles {
							if st, ok := s.Containers[role]; ok {
								parts = append(parts, role+":"+st)
							}
						}
						ws := s.Workspace
						if s.Copy != "" {
							ws += " (copy: " + s.Copy + ")"
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Identity, s.Agent, phase, strings.Join(parts, " "), ws)
					}
					return tw.Flush()
				})
			},
		},
		identityCommand("stop", "stop a bottle (its containers stay for `bottle resume`)", nil, func(c *cli.Context, e *runtime.Engine, id names.Identity) error {
			return e.Stop(c.Context, id)
		}),
		identityCommand("rm", "remove a stopped bottle and everything it left",
			[]cli.Flag{&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "remove it even when it runs (its tasks are killed)"}},
			func(c *cli.Context, e *runtime.Engine, id names.Identity) error {
				return e.Remove(c.Context, id, c.Bool("force"))
			}),
		{
			Name:         "logs",
			Usage:        "print a bottle's container log",
			ArgsUsage:    "ID",
			OnUsageError: onUsageError,
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "role", Value: names.RoleAgent, Usage: "which container: agent, filter, egress-proxy"},
				&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing while the container runs"},
			},
			Action: func(c *cli.Context) error {
				id, err := identityArg(c)
				if err != nil {
					return err
				}
				return withEngine(c, func(e *runtime.Engine) error {
					return e.Logs(c.Context, id, c.String("role"), c.Bool("follow"), c.App.Writer)
				})
			},
		},
		{
			Name:         "exec",
			Usage:        "run a command in a running bottle's agent container",
			ArgsUsage:    "ID -- CMD ARGS...",
			OnUsageError: onUsageError,
			Action: func(c *cli.Context) error {
				args, command := splitCommand(c)
				if len(args) != 1 || len(command) == 0 {
					return usageError{errors.New("usage: bottle exec ID -- CMD [ARGS]")}
				}
				id, err := names.ParseIdentity(args[0])
				if err != nil {
					return usageError{err}
				}
				return withEngine(c, func(e *runtime.Engine) error {
					return exitWith(e.Exec(c.Context, id, command, stdio()))
				})
			},
		},
		{
			Name:         "cleanup",
			Usage:        "remove orphaned bottles and every bottle object no bottle owns (of this --state-dir and --namespace only)",
			OnUsageError: onUsageError,
			Flags: []cli.Flag{
				&cli.BoolFlag{Name: "all", Usage: "remove every bottle, running or not"},
				&cli.StringFlag{Name: "orphaned-owner", Usage: "instead, remove the host network objects of owner `ID` (or \"legacy\") whose state dir is gone, as cleanup and doctor list them"},
			},
			Action: func(c *cli.Context) error {
				owner := c.String("orphaned-owner")
				if owner != "" && c.Bool("all") {
					return usageError{errors.New("--orphaned-owner and --all exclude each other")}
				}
				return withEngine(c, func(e *runtime.Engine) error {
					var rep runtime.CleanupReport
					var err error
					if owner != "" {
						rep, err = e.CleanupOrphanedOwner(c.Context, owner)
					} else {
						rep, err = e.Cleanup(c.Context, c.Bool("all"))
					}
					fmt.Fprintln(c.App.Writer, rep.String())
					return err
				})
			},
		},
	}
}

func identityCommand(name, usage string, flags []cli.Flag, fn func(*cli.Context, *runtime.Engine, names.Identity) error) *cli.Command {
	return &cli.Command{
		Name:         name,
		Usage:        usage,
		ArgsUsage:    "ID",
		OnUsageError: onUsageError,
		Flags:        flags,
		Action: func(c *cli.Context) error {
			id, err := identityArg(c)
			if err != nil {
				return err
			}
			return withEngine(c, func(e *runtime.Engine) error { return fn(c, e, id) })
		},
	}
}

// splitCommand separates positional arguments from a command after "--". Flag parsing
// may or may not have eaten the "--", so the original argv tells where the command starts.
func splitCommand(c *cli.Context) (args, command []string) {
	all := c.Args().Slice()
	if i := slices.Index(all, "--"); i >= 0 {
		return all[:i], all[i+1:]
	}
	if i := slices.Index(os.Args, "--"); i >= 0 {
		if n := len(os.Args) - i - 1; n <= len(all) {
			return all[:len(all)-n], all[len(all)-n:]
		}
	}
	return all, nil
}

// agentName picks the AGENT argument, or the manifest's only agent.
func agentName(args []string, m *manifest.Manifest, src manifest.Source, cmd string) (string, error) {
	if len(args) > 1 {
		return "", usageError{fmt.Errorf("expected at most one AGENT argument, got %v", args)}
	}
	if len(args) == 1 {
		if m.Agents[args[0]] == nil {
			return "", usageError{fmt.Errorf("unknown agent %q%s in %s; known agents: %s", args[0], manifest.DidYouMean(args[0], m.AgentNames()), src.Path, strings.Join(m.AgentNames(), ", "))}
		}
		return args[0], nil
	}
	names := m.AgentNames()
	if len(names) != 1 {
		return "", usageError{fmt.Errorf("%s defines agents %v; name one: bottle %s AGENT", src.Path, names, cmd)}
	}
	return names[0], nil
}
