package main

import (
	"encoding/json"
	"fmt"

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
			poolFlag(),
			runcRootFlag(),
		},
		Action: func(c *cli.Context) error {
			opts, err := engineOptions(c)
			if err != nil {
				return err
			}
			opts.PluginDirs = c.StringSlice("cni-path")
			m, src, err := loadManifest(c)
			if err != nil {
				return err
			}
			checks := runtime.Doctor(c.Context, runtime.DoctorOptions{Options: opts, Manifest: m, ManifestPath: src.Path})
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
