package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/state"
)

// auditCommand shows, verifies and prunes a bottle's audit trail. `prune` is its first
// argument rather than a subcommand, so the flags may follow the ID as everywhere else.
func auditCommand() *cli.Command {
	return &cli.Command{
		Name:  "audit",
		Usage: "show a bottle's audit trail (lifecycle, filter, egress-proxy and git-gate records); `audit prune` deletes trails",
		ArgsUsage: "ID | prune [ID]\n\n" +
			"The trail outlives `bottle rm` until `bottle audit prune ID` (or --all: every removed bottle's trail).",
		OnUsageError: onUsageError,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing records as they are written"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON lines (non-ASCII escaped)"},
			&cli.StringFlag{Name: "since", Usage: "only records from this time on: RFC 3339, or a duration ago (e.g. 1h)"},
			&cli.BoolFlag{Name: "verify", Usage: "check every record's chain; name each edited, dropped or reordered record"},
			&cli.BoolFlag{Name: "all", Usage: "prune: the trails of every removed bottle"},
			&cli.StringFlag{Name: "older-than", Usage: "prune: only trails last written longer ago than this (e.g. 720h, 30d)"},
		},
		Action: func(c *cli.Context) error {
			stateDir := absOr(lineageString(c, "state-dir"))
			if c.Args().First() == "prune" {
				return auditPrune(c, stateDir)
			}
			if c.Bool("all") || c.IsSet("older-than") {
				return usageError{errors.New("--all and --older-than go with `bottle audit prune`")}
			}
			id, err := identityArg(c)
			if err != nil {
				return err
			}
			dir := audit.Dir(stateDir, id)
			if c.Bool("verify") {
				return auditVerify(c.App.Writer, id, dir)
			}
			return auditShow(c, dir)
		},
	}
}

func auditShow(c *cli.Context, dir string) error {
	opts := audit.Options{Follow: c.Bool("follow")}
	if s := c.String("since"); s != "" {
		since, err := parseSince(s, time.Now())
		if err != nil {
			return usageError{err}
		}
		opts.Since = since
	}
	write := audit.WriteText
	if c.Bool("json") {
		write = audit.WriteJSON
	}
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	problems, err := audit.Read(ctx, dir, opts, func(r audit.Record) error { return write(c.App.Writer, r) })
	for _, p := range problems {
		fmt.Fprintln(c.App.ErrWriter, "bottle: audit: "+p.String()+" (skipped; --verify checks the whole trail)")
	}
	return err
}

func auditVerify(w io.Writer, id names.Identity, dir string) error {
	n, problems, err := audit.Verify(dir)
	if err != nil {
		return err
	}
	if len(problems) == 0 {
		fmt.Fprintf(w, "audit trail of %s: %d records, every chain intact\n", id, n)
		return nil
	}
	for _, p := range problems {
		fmt.Fprintln(w, p.String())
	}
	return cli.Exit(fmt.Sprintf("bottle: audit trail of %s: %d problems", id, len(problems)), exitFailure)
}

// auditPrune deletes trails: one removed bottle's, or with --all every removed bottle's;
// --older-than keeps the trails written since.
func auditPrune(c *cli.Context, stateDir string) error {
	var olderThan time.Duration
	if s := c.String("older-than"); s != "" {
		d, err := parseAge(s)
		if err != nil {
			return usageError{fmt.Errorf("--older-than: %w", err)}
		}
		olderThan = d
	}
	args := c.Args().Tail()
	var ids []names.Identity
	switch {
	case c.Bool("all") && len(args) == 0:
		all, err := audit.Trails(stateDir)
		if err != nil {
			return err
		}
		ids = all
	case !c.Bool("all") && len(args) == 1:
		id, err := names.ParseIdentity(args[0])
		if err != nil {
			return usageError{err}
		}
		ids = []names.Identity{id}
	default:
		return usageError{errors.New("usage: bottle audit prune ID | --all [--older-than D]")}
	}
	store := state.Store{Dir: stateDir}
	for _, id := range ids {
		dir := audit.Dir(stateDir, id)
		if _, err := os.Stat(store.BottleDir(id)); err == nil {
			if !c.Bool("all") {
				return fmt.Errorf("bottle %s still exists; its trail goes after `bottle rm %s`", id, id)
			}
			continue
		}
		last, err := audit.LastWrite(dir)
		if err != nil {
			return err
		}
		if olderThan > 0 && time.Since(last) < olderThan {
			continue
		}
		if err := audit.Remove(stateDir, id); err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "pruned the audit trail of %s\n", id)
	}
	return nil
}

// parseSince reads an RFC 3339 time or a duration before now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := parseAge(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--since %q: want an RFC 3339 time or a duration such as 1h", s)
	}
	return now.Add(-d), nil
}

// parseAge reads a Go duration, or whole days as "30d".
func parseAge(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("invalid number of days %q", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("invalid duration %q (e.g. 720h or 30d)", s)
	}
	return d, nil
}
