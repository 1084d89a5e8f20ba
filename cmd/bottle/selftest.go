package main

import (
	"os"

	"github.com/urfave/cli/v2"

	"github.com/bottle-dev/bottle/internal/selftest"
)

// selftestCommand is the agent's first process (mounted into its sandbox): it proves
// the bottle sealed, then execs the agent's command. Not for people: hidden.
func selftestCommand() *cli.Command {
	return &cli.Command{
		Name:            "selftest",
		Usage:           "inside a bottle's agent: check that the bottle is sealed, then exec the command",
		ArgsUsage:       "--report FILE --gateway ADDR:PORT --filter ADDR:PORT -- CMD [ARGS...]",
		Hidden:          true,
		SkipFlagParsing: true,
		Action: func(c *cli.Context) error {
			// Main returns only when the command did not run.
			return cli.Exit("", selftest.Main(c.Args().Slice(), os.Stderr))
		},
	}
}
