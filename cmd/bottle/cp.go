package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/runtime"
	"github.com/bottle-dev/bottle/internal/treecopy"
)

func cpCommand() *cli.Command {
	return &cli.Command{
		Name:  "cp",
		Usage: "copy files out of a bottle's /workspace (ID:PATH DEST) or into it (SRC ID:PATH)",
		Description: "PATH is in /workspace (absolute, or relative to it), the agent's copy with --cwd. " +
			"Links that lead out of the copied tree, devices, FIFOs and sockets are left out, never followed. " +
			"Files copied out belong to you; files copied in belong to the workspace's owner. Works while the bottle runs or is stopped.",
		ArgsUsage:    "ID:PATH DEST | SRC ID:PATH",
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return usageError{errors.New("usage: bottle cp ID:PATH DEST, or bottle cp SRC ID:PATH")}
			}
			from, to := c.Args().Get(0), c.Args().Get(1)
			fromID, fromPath, fromBottle := bottlePath(from)
			toID, toPath, toBottle := bottlePath(to)
			if fromBottle == toBottle {
				return usageError{errors.New("exactly one of the two arguments must be ID:PATH (a bottle's /workspace)")}
			}
			inBottle := toPath
			if fromBottle {
				inBottle = fromPath
			}
			if _, err := treecopy.WorkspacePath(inBottle); err != nil {
				return usageError{err}
			}
			opts, err := engineOptions(c)
			if err != nil {
				return err
			}
			if os.Geteuid() != 0 {
				return errors.New("bottle cp needs root (the workspace copy and the state dir are root's); run it with sudo")
			}
			var rep treecopy.Report
			if fromBottle {
				rep, err = runtime.CopyOut(opts, fromID, fromPath, to)
			} else {
				rep, err = runtime.CopyIn(opts, from, toID, toPath)
			}
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(c.App.Writer, "copied %s to %s: %s\n", from, to, rep)
			return err
		},
	}
}

// bottlePath splits "ID:PATH" when the part before the first colon is a bottle identity.
func bottlePath(arg string) (names.Identity, string, bool) {
	before, after, ok := strings.Cut(arg, ":")
	if !ok {
		return "", "", false
	}
	id, err := names.ParseIdentity(before)
	if err != nil {
		return "", "", false
	}
	return id, after, true
}
