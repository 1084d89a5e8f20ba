package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/bottle-dev/bottle/internal/k8s"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/runtime"
)

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:         "export",
		Usage:        "print the Kubernetes objects of a bottle (from the plan `bottle start` runs; Secrets without values)",
		ArgsUsage:    "[AGENT]",
		OnUsageError: onUsageError,
		Flags: []cli.Flag{
			manifestFlag(),
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "yaml", Usage: "output format: " + strings.Join(k8s.Formats, ", ")},
			&cli.StringFlag{Name: "k8s-namespace", Usage: "namespace of the objects (default: the client's)"},
			&cli.StringFlag{Name: "sidecar-image", Usage: "registry ref of bottle's sidecar image (see 'bottle image export')"},
			&cli.StringFlag{Name: "runtime-class", Value: k8s.DefaultRuntimeClass, Usage: "RuntimeClass of the agent Pod"},
			&cli.StringFlag{Name: "filter", Usage: "override the allowlist filter: " + strings.Join(manifest.FilterChoices, ", ")},
			&cli.StringSliceFlag{Name: "add-host", Usage: "extra hosts entry NAME:IP for the sidecars that leave the bottle (repeatable)"},
			&cli.StringFlag{Name: "ca-file", Usage: "PEM file of extra CAs the egress-proxy trusts for upstreams (a private CA)"},
			&cli.StringFlag{Name: "pipelock-image", Usage: "pipelock image (overrides the manifest's and the pinned default)"},
		},
		Action: func(c *cli.Context) error {
			format := c.String("output")
			if !slices.Contains(k8s.Formats, format) {
				return usageError{fmt.Errorf("-o %q: use one of %s", format, strings.Join(k8s.Formats, ", "))}
			}
			po, err := planOptionsWithoutFiles(c, "export")
			if err != nil {
				return err
			}
			opts, err := engineOptions(c)
			if err != nil {
				return err
			}
			p, err := runtime.ExportPlan(c.Context, opts, po)
			if err != nil {
				return usageError{err}
			}
			objs, err := k8s.Export(p, k8s.Options{
				Namespace: c.String("k8s-namespace"), SidecarImage: c.String("sidecar-image"),
				RuntimeClass: c.String("runtime-class"), OptionalEnv: po.Manifest.Agents[po.Agent].OptionalEnv,
			})
			if err != nil {
				return err
			}
			out, err := objs.Render(format)
			if err != nil {
				return err
			}
			_, err = c.App.Writer.Write(out)
			return err
		},
	}
}
