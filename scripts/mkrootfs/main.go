// Command mkrootfs writes an OCI image archive whose single layer is a whole directory
// tree (a root file system), for hosts without Docker or a registry.
//
//	go run ./scripts/mkrootfs --ref REF [--ref REF2] [--env K=V]... [--workdir DIR] \
//	    [--user UID:GID] [--entrypoint ARG]... [--cmd ARG]... [--label K=V]... ROOTFS OUT.tar
//
// scripts/build-agent-image.sh uses it for the Claude Code agent image.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/bottle-dev/bottle/internal/ociarchive"
)

// listFlag collects a repeated string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, " ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var refs, env, entrypoint, cmd, labels listFlag
	fs := flag.NewFlagSet("mkrootfs", flag.ContinueOnError)
	fs.Var(&refs, "ref", "image reference (repeat for more names of the same image)")
	fs.Var(&env, "env", "config Env entry NAME=VALUE (repeatable)")
	fs.Var(&entrypoint, "entrypoint", "one Entrypoint argument (repeatable)")
	fs.Var(&cmd, "cmd", "one Cmd argument (repeatable)")
	fs.Var(&labels, "label", "config label KEY=VALUE (repeatable)")
	workdir := fs.String("workdir", "", "config WorkingDir")
	user := fs.String("user", "", "config User (UID:GID)")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: mkrootfs --ref REF [flags] ROOTFS OUT.tar")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if fs.NArg() != 2 || len(refs) == 0 {
		fs.Usage()
		os.Exit(2)
	}
	labelMap := map[string]string{}
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			fmt.Fprintf(os.Stderr, "mkrootfs: --label %q is not KEY=VALUE\n", l)
			os.Exit(2)
		}
		labelMap[k] = v
	}
	for _, e := range env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			fmt.Fprintf(os.Stderr, "mkrootfs: --env %q is not NAME=VALUE\n", e)
			os.Exit(2)
		}
	}
	if len(labelMap) == 0 {
		labelMap = nil
	}
	rootfs, out := fs.Arg(0), fs.Arg(1)
	res, err := ociarchive.WriteDirFile(out, ociarchive.DirImage{
		Refs: refs,
		Root: rootfs,
		Config: ociarchive.Config{
			Env:        env,
			Entrypoint: entrypoint,
			Cmd:        cmd,
			WorkingDir: *workdir,
			User:       *user,
			Labels:     labelMap,
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkrootfs:", err)
		os.Exit(1)
	}
	fmt.Printf("%s %s (layer %d bytes) -> %s\n", strings.Join(refs, " "), res.Manifest.Digest, res.Layer.Size, out)
}
