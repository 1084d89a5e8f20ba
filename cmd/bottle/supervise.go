package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bottle-dev/bottle/internal/hostenv"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/runtime"
	"github.com/bottle-dev/bottle/internal/supervise"
)

// superviseCommands are a person's side of supervise: list the agent's proposals, approve
// or deny them.
func superviseCommands() []*cli.Command {
	return []*cli.Command{
		{
			Name:         "proposals",
			Usage:        "list the proposals of supervised bottles (all, or bottle ID's) with their changes",
			ArgsUsage:    "[ID]",
			OnUsageError: onUsageError,
			Flags: []cli.Flag{
				&cli.BoolFlag{Name: "json", Usage: "print JSON lines"},
				&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing new proposals and decisions"},
			},
			Action: func(c *cli.Context) error {
				opts, err := engineOptions(c)
				if err != nil {
					return err
				}
				var ids []names.Identity
				if c.NArg() > 0 {
					id, err := identityArg(c)
					if err != nil {
						return err
					}
					ids = []names.Identity{id}
				}
				return listProposals(c, opts, ids)
			},
		},
		{
			Name:         "approve",
			Usage:        "approve proposal N of bottle ID and apply it",
			ArgsUsage:    "ID N",
			OnUsageError: onUsageError,
			// An approved Dockerfile restarts the bottle on its new image: resume's flags.
			Flags: append([]cli.Flag{
				&cli.DurationFlag{Name: "for", Usage: "an allowlist grant ends after this long (e.g. 30m; builtin filter only, pipelock refuses it)"},
				&cli.StringFlag{Name: "reason", Usage: "a note for the agent"},
				&cli.BoolFlag{Name: "save", Usage: "also write an allowlist change into the manifest (or print what to paste)"},
			}, restartFlags()...),
			Action: func(c *cli.Context) error {
				id, n, err := proposalArgs(c)
				if err != nil {
					return err
				}
				opts, err := engineOptions(c)
				if err != nil {
					return err
				}
				// A Dockerfile approval builds and restarts the agent, a route approval reads
				// its credential: host values are read as by start.
				opts.LookupEnv = hostenv.Take().Lookup
				dec, err := runtime.Approve(c.Context, opts, id, n, runtime.ApproveOptions{For: c.Duration("for"), Reason: c.String("reason"), Progress: c.App.ErrWriter, Save: c.Bool("save")})
				if err != nil {
					return err
				}
				until := ""
				if !dec.Until.IsZero() {
					until = " until " + dec.Until.Local().Format(time.DateTime)
				}
				if _, err := fmt.Fprintf(c.App.Writer, "approved proposal %d of %s%s\n", n, id, until); err != nil {
					return err
				}
				switch {
				case dec.Saved:
					_, err = fmt.Fprintf(c.App.Writer, "saved in the manifest:\n%s", dec.Snippet)
				case dec.Snippet != "":
					_, err = fmt.Fprintf(c.App.Writer, "the manifest has no one-line allowlist to change; paste this into it:\n%s", dec.Snippet)
				}
				return err
			},
		},
		{
			Name:         "deny",
			Usage:        "deny proposal N of bottle ID",
			ArgsUsage:    "ID N",
			OnUsageError: onUsageError,
			Flags:        []cli.Flag{&cli.StringFlag{Name: "reason", Usage: "why (the agent reads it)"}},
			Action: func(c *cli.Context) error {
				id, n, err := proposalArgs(c)
				if err != nil {
					return err
				}
				opts, err := engineOptions(c)
				if err != nil {
					return err
				}
				if _, err := runtime.Deny(opts, id, n, c.String("reason")); err != nil {
					return err
				}
				_, err = fmt.Fprintf(c.App.Writer, "denied proposal %d of %s\n", n, id)
				return err
			},
		},
	}
}

func proposalArgs(c *cli.Context) (names.Identity, int, error) {
	if c.NArg() != 2 {
		return "", 0, usageError{errors.New("usage: bottle " + c.Command.Name + " ID N (see `bottle proposals`)")}
	}
	id, err := names.ParseIdentity(c.Args().Get(0))
	if err != nil {
		return "", 0, usageError{err}
	}
	n, err := strconv.Atoi(c.Args().Get(1))
	if err != nil || n < 1 {
		return "", 0, usageError{fmt.Errorf("proposal number %q: want a number from `bottle proposals`", c.Args().Get(1))}
	}
	return id, n, nil
}

// listProposals prints the proposals of ids (every supervised bottle when empty); with
// --follow it goes on printing each new proposal and each change of state.
func listProposals(c *cli.Context, opts runtime.Options, ids []names.Identity) error {
	seen := map[string]string{} // identity/N -> state printed
	for {
		bottles := ids
		if len(bottles) == 0 {
			var err error
			if bottles, err = runtime.SupervisedBottles(opts); err != nil {
				return err
			}
		}
		now := time.Now()
		for _, id := range bottles {
			entries, err := runtime.Proposals(opts, id)
			if err != nil {
				return err
			}
			for _, en := range entries {
				key := fmt.Sprintf("%s/%d", id, en.N)
				st := entryState(en, now)
				if seen[key] == st {
					continue
				}
				seen[key] = st
				if err := printEntry(c, opts, id, en, st, now); err != nil {
					return err
				}
			}
		}
		if !c.Bool("follow") {
			if len(seen) == 0 && !c.Bool("json") {
				_, err := fmt.Fprintln(c.App.ErrWriter, "no proposals")
				return err
			}
			return nil
		}
		select {
		case <-c.Context.Done():
			return nil
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func entryState(en supervise.Entry, now time.Time) string {
	switch {
	case en.Refused != "":
		return "refused"
	case en.Decision != nil:
		return en.Decision.Decision
	case en.Pending(now):
		return "pending"
	}
	return "timed out"
}

func printEntry(c *cli.Context, opts runtime.Options, id names.Identity, en supervise.Entry, st string, now time.Time) error {
	if c.Bool("json") {
		data, err := json.Marshal(struct {
			Identity names.Identity `json:"identity"`
			State    string         `json:"state"`
			supervise.Entry
		}{id, st, en})
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(c.App.Writer, "%s\n", data)
		return err
	}
	_, err := fmt.Fprintf(c.App.Writer, "%s %s", id, runtime.ProposalView(opts, id, en, now))
	return err
}
