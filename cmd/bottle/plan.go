package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/bottle-dev/bottle/internal/manifest"
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
		Usage:        "show what `bottle start` would run (secrets redacted); it takes start's flags (--detach and --rm change nothing here)",
		ArgsUsage:    "[AGENT] [-- CMD ARGS...]",
		OnUsageError: onUsageError,
		Flags:        append(startFlags(), &cli.BoolFlag{Name: "json", Usage: "print the whole plan, with one OCI spec per container, as JSON"}),
		Action: func(c *cli.Context) error {
			po, err := planOptions(c, "plan")
			if err != nil {
				return err
			}
			opts, err := engineOptions(c)
			if err != nil {
				return err
			}
			e := runtime.OpenPlanner(c.Context, opts)
			defer e.Close()
			p, err := e.Plan(c.Context, po)
			if err != nil {
				return usageError{err}
			}
			// Without containerd the plan cannot know which images are present.
			var note string
			if off := e.Offline(); off != nil {
				note = fmt.Sprintf("note: containerd not reachable (%s): the pipelock image is assumed absent", strings.ReplaceAll(off.Error(), "\n", "; "))
			}
			if c.Bool("json") {
				out, err := p.JSON()
				if err != nil {
					return err
				}
				if note != "" {
					fmt.Fprintln(c.App.ErrWriter, note)
				}
				_, err = c.App.Writer.Write(out)
				return err
			}
			if _, err := fmt.Fprint(c.App.Writer, p.Redacted().Summary()); err != nil {
				return err
			}
			if note != "" {
				_, err = fmt.Fprintln(c.App.Writer, note)
			}
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
