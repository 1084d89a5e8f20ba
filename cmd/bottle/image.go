package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/bottle-dev/bottle/internal/runtime"
)

func imageCommand() *cli.Command {
	return &cli.Command{
		Name:  "image",
		Usage: "manage bottle's images",
		Subcommands: []*cli.Command{{
			Name:         "import",
			Usage:        "import an OCI image archive (for hosts without a registry)",
			ArgsUsage:    "FILE",
			OnUsageError: onUsageError,
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return usageError{fmt.Errorf("expected one OCI archive file, got %d arguments", c.NArg())}
				}
				opts := runtime.Options{Address: lineageString(c, "address"), Namespace: lineageString(c, "namespace"), Progress: stderr.progress}
				names, err := runtime.ImportImage(c.Context, opts, c.Args().First())
				if err != nil {
					return err
				}
				for _, n := range names {
					fmt.Fprintln(c.App.Writer, n)
				}
				return nil
			},
		}, {
			Name:         "export",
			Usage:        "write bottle's sidecar image as an OCI archive (to push to a registry Kubernetes pulls from)",
			ArgsUsage:    "FILE",
			OnUsageError: onUsageError,
			Flags:        []cli.Flag{&cli.StringFlag{Name: "ref", Value: runtime.PlannedSidecarImage(version), Usage: "image name in the archive"}},
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return usageError{fmt.Errorf("expected one output file, got %d arguments", c.NArg())}
				}
				return runtime.ExportSidecarImage(c.Args().First(), c.String("ref"))
			},
		}},
	}
}
