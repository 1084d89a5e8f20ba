package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/bottle-dev/bottle/internal/hostenv"
	"github.com/bottle-dev/bottle/internal/hostfile"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/runtime"
)

func manifestCommand() *cli.Command {
	return &cli.Command{
		Name:  "manifest",
		Usage: "print the embedded default manifest, a starting point for ./bottle.toml",
		Action: func(c *cli.Context) error {
			_, err := c.App.Writer.Write(manifest.Default())
			return err
		},
	}
}

func planCommand() *cli.Command {
	return &cli.Command{
		Name:         "plan",
		Usage:        "show what `bottle start` would run (secrets redacted)",
		ArgsUsage:    "[AGENT]",
		OnUsageError: onUsageError,
		Flags: []cli.Flag{
			manifestFlag(),
			&cli.BoolFlag{Name: "json", Usage: "print the whole plan, with one OCI spec per container, as JSON"},
			&cli.StringFlag{Name: "runtime", Usage: "override the runtime: " + fmt.Sprint(manifest.RuntimeChoices)},
			&cli.StringFlag{Name: "filter", Usage: "override the allowlist filter: " + fmt.Sprint(manifest.FilterChoices)},
			&cli.BoolFlag{Name: "cwd", Usage: "give the agent a copy of the current directory"},
		},
		Action: func(c *cli.Context) error {
			m, src, err := loadManifest(c)
			if err != nil {
				return err
			}
			agent, err := agentName(c.Args().Slice(), m, src, "plan")
			if err != nil {
				return err
			}
			cwd, err := os.Getwd()
			if err != nil {
				return fmt.Errorf("current directory: %w", err)
			}
			resolv, err := hostenv.SidecarResolvConf()
			if err != nil {
				resolv = "# " + err.Error() + "\n"
			}
			// Subnets are reserved at start; the plan shows the pool's first pair.
			internal, egress, err := runtime.PoolSubnets(runtime.DefaultPool)
			if err != nil {
				return err
			}
			p, err := plan.Build(plan.Input{
				Manifest:          m,
				ManifestPath:      src.Path,
				AgentName:         agent,
				LookupEnv:         os.LookupEnv,
				NewSuffix:         hostenv.NewSuffix,
				Workspace:         cwd,
				WorkspaceOwner:    hostenv.Owner(cwd),
				CopyWorkspace:     c.Bool("cwd"),
				StateDir:          absOr(c.String("state-dir")),
				Internal:          internal,
				Egress:            egress,
				SidecarImage:      sidecarImageRef(),
				RuntimeOverride:   c.String("runtime"),
				FilterOverride:    c.String("filter"),
				SidecarResolvConf: resolv,
				ReadFile:          hostfile.ReadPEM,
			})
			if err != nil {
				return usageError{err}
			}
			if c.Bool("json") {
				out, err := p.JSON()
				if err != nil {
					return err
				}
				_, err = c.App.Writer.Write(out)
				return err
			}
			_, err = fmt.Fprint(c.App.Writer, p.Redacted().Summary())
			return err
		},
	}
}

// loadManifest finds, decodes and validates the manifest.
func loadManifest(c *cli.Context) (*manifest.Manifest, manifest.Source, error) {
	src, data, err := manifest.Locate(lineageString(c, "manifest"), os.Getenv)
	if err != nil {
		return nil, src, usageError{err}
	}
	m, err := manifest.Load(src.Path, data)
	if err != nil {
		return nil, src, err
	}
	return m, src, nil
}

func sidecarImageRef() string { return "bottle.local/sidecar:" + version }

func absOr(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// lineageString returns a flag accepted both globally and per command, wherever it was set.
func lineageString(c *cli.Context, name string) string {
	for _, cc := range c.Lineage() {
		if v := cc.String(name); v != "" {
			return v
		}
	}
	return ""
}
