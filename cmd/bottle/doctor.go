package main

import (
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/urfave/cli/v2"

	"github.com/bottle-dev/bottle/internal/runtime"
)

func doctorCommand() *cli.Command {
	return &cli.Command{
		Name:         "doctor",
		Usage:        "check that this host can run bottles, and say how to fix what is missing",
		OnUsageError: onUsageError,
		Flags: []cli.Flag{
			manifestFlag(),
			&cli.BoolFlag{Name: "json", Usage: "print the checks as JSON"},
			&cli.StringFlag{Name: "runtime", Usage: "runtime to check (default: auto)"},
			&cli.StringFlag{Name: "runsc", Usage: "path of the runsc binary (default: search PATH, then /usr/local/bin)"},
			&cli.StringSliceFlag{Name: "cni-path", Usage: "directories with CNI plugins (default: /opt/cni/bin, /usr/lib/cni)"},
			&cli.StringFlag{Name: "pool", Value: runtime.DefaultPool.String(), Usage: "address pool for bottle networks"},
			&cli.StringFlag{Name: "runc-root", Hidden: true, Usage: "runc state root (tests)"},
		},
		Action: func(c *cli.Context) error {
			pool, err := netip.ParsePrefix(c.String("pool"))
			if err != nil {
				return usageError{fmt.Errorf("--pool: %w", err)}
			}
			m, src, err := loadManifest(c)
			if err != nil {
				return err
			}
			checks := runtime.Doctor(c.Context, runtime.DoctorOptions{
				Options: runtime.Options{
					Address: lineageString(c, "address"), Namespace: lineageString(c, "namespace"),
					StateDir: absOr(lineageString(c, "state-dir")), Pool: pool,
					RuntimeOverride: c.String("runtime"), RunscPath: c.String("runsc"), RuncRoot: c.String("runc-root"),
					Version: version,
				},
				PluginDirs: c.StringSlice("cni-path"), Manifest: m, ManifestPath: src.Path,
			})
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				if err := enc.Encode(checks); err != nil {
					return err
				}
			} else {
				for _, ch := range checks {
					fmt.Fprintln(c.App.Writer, ch)
				}
			}
			if runtime.Blocking(checks) {
				return cli.Exit("a check above failed: a start would fail until its fix is applied", 1)
			}
			return nil
		},
	}
}
