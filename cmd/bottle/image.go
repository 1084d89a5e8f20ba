package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/bottle-dev/bottle/internal/runtime"
)

func imageCommand() *cli.Command {
	return &cli.Command{
		Name:  "image",
		Usage: "manage bottle's images in containerd",
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
		}},
	}
}
