package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/bottle-dev/bottle/internal/hostfile"
	"github.com/bottle-dev/bottle/internal/imagebuild"
	"github.com/bottle-dev/bottle/internal/names"
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
		}, {
			Name: "build",
			Usage: "build a bottle's own agent image from a Dockerfile FROM its current agent image " +
				"(no network, RUN steps under gVisor) and restart its agent on it (resume uses it from then on)",
			ArgsUsage:    "ID DOCKERFILE",
			OnUsageError: onUsageError,
			// The restart resumes the bottle: it takes resume's flags but --detach.
			Flags: restartFlags(),
			Action: func(c *cli.Context) error {
				if c.NArg() != 2 {
					return usageError{fmt.Errorf("expected a bottle identity and a Dockerfile, got %d arguments", c.NArg())}
				}
				id, err := names.ParseIdentity(c.Args().First())
				if err != nil {
					return usageError{err}
				}
				dockerfile, err := readDockerfile(c.Args().Get(1))
				if err != nil {
					return err
				}
				return withEngine(c, func(e *runtime.Engine) error {
					ref, err := e.ApplyAgentDockerfile(c.Context, id, dockerfile, c.App.ErrWriter)
					if ref != "" {
						fmt.Fprintln(c.App.Writer, ref)
					}
					return err
				})
			},
		}},
	}
}

// readDockerfile reads a Dockerfile (a host file: a regular one, at most as large as a
// build accepts).
func readDockerfile(path string) (string, error) {
	data, err := hostfile.Read(path, imagebuild.MaxDockerfileSize)
	return string(data), err
}
