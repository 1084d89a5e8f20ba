// Command bottle runs an AI coding agent in a gVisor sandbox on containerd, whose only ways
// out are an allowlist filter and a credential-injecting egress-proxy.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/bottle-dev/bottle/internal/manifest"
)

// version is stamped by the Makefile (-X main.version=...).
var version = "dev"

// stderr carries bottle's log lines and import progress.
var stderr = newConsole(os.Stderr, term.IsTerminal(int(os.Stderr.Fd())))

// Exit statuses.
const (
	exitFailure = 1
	exitUsage   = 2 // bad manifest or bad input: nothing was done
)

// usageError marks errors caused by the user's input (exit status 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func main() {
	app := newApp()
	if err := app.Run(interspersed(app, os.Args)); err != nil {
		os.Exit(report(err))
	}
}

func report(err error) int {
	if msg := err.Error(); msg != "" {
		fmt.Fprintln(os.Stderr, "bottle: "+msg)
	}
	var me *manifest.Errors
	var ue usageError
	if errors.As(err, &me) || errors.As(err, &ue) {
		return exitUsage
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return exitFailure
}

func newApp() *cli.App {
	return &cli.App{
		Name:                 "bottle",
		Usage:                "run an AI coding agent in a gVisor sandbox with audited egress",
		Version:              version,
		EnableBashCompletion: true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "address", Value: "/run/containerd/containerd.sock", EnvVars: []string{"CONTAINERD_ADDRESS"}, Usage: "containerd socket"},
			&cli.StringFlag{Name: "namespace", Value: "bottle", EnvVars: []string{"BOTTLE_NAMESPACE"}, Usage: "containerd namespace"},
			&cli.StringFlag{Name: "state-dir", Value: "/var/lib/bottle", EnvVars: []string{"BOTTLE_STATE_DIR"}, Usage: "where bottle keeps metadata and stage files"},
			manifestFlag(),
			&cli.BoolFlag{Name: "debug", Usage: "show debug logs"},
		},
		OnUsageError: onUsageError,
		Before: func(c *cli.Context) error {
			level := slog.LevelInfo
			if c.Bool("debug") {
				level = slog.LevelDebug
			}
			slog.SetDefault(slog.New(newLineHandler(stderr, level)))
			return nil
		},
		Commands: append(append(lifecycleCommands(), superviseCommands()...),
			planCommand(),
			exportCommand(),
			k8sCommand(),
			manifestCommand(),
			&cli.Command{
				Name:  "version",
				Usage: "print bottle's version",
				Action: func(c *cli.Context) error {
					fmt.Fprintln(c.App.Writer, "bottle "+version)
					return nil
				},
			},
			imageCommand(),
			cpCommand(),
			doctorCommand(),
			auditCommand(),
			selftestCommand(),
		),
	}
}

func onUsageError(_ *cli.Context, err error, _ bool) error { return usageError{err} }

// manifestFlag is accepted globally and on each command that reads the manifest.
func manifestFlag() cli.Flag {
	return &cli.StringFlag{Name: "manifest", Usage: "manifest file (else $BOTTLE_MANIFEST, ./bottle.toml, the embedded default)"}
}

// interspersed lets flags follow positional arguments (`bottle plan claude --json`), which
// urfave/cli v2 does not parse by itself: a command's flags found after its positional
// arguments are moved in front of them. Everything after "--" stays as it is.
func interspersed(app *cli.App, args []string) []string {
	for i := 1; i < len(args); i++ {
		a := args[i]
		if a == "--" || !strings.HasPrefix(a, "-") {
			cmd := app.Command(a)
			if cmd == nil || a == "--" || len(cmd.Subcommands) > 0 || cmd.SkipFlagParsing {
				return args
			}
			return append(args[:i+1:i+1], permute(cmd, args[i+1:])...)
		}
		if takesValue(app.Flags, a) && !strings.Contains(a, "=") {
			i++
		}
	}
	return args
}

func permute(cmd *cli.Command, args []string) []string {
	var flags, positional []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			positional = append(positional, args[i:]...)
			break
		}
		if strings.HasPrefix(a, "-") && a != "-" {
			flags = append(flags, a)
			if takesValue(cmd.Flags, a) && !strings.Contains(a, "=") && i+1 < len(args) {
				i++
				flags = append(flags, args[i])
			}
			continue
		}
		positional = append(positional, a)
	}
	return append(flags, positional...)
}

func takesValue(flags []cli.Flag, arg string) bool {
	name := strings.TrimLeft(arg, "-")
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				_, isBool := f.(*cli.BoolFlag)
				return !isBool
			}
		}
	}
	return false
}
