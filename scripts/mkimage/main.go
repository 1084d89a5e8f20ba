// Command mkimage writes small OCI image archives without Docker or a registry.
//
//	go run ./scripts/mkimage busybox REF OUT.tar   # Debian's static busybox as a demo/test agent
package main

import (
	"fmt"
	"os"

	"github.com/bottle-dev/bottle/internal/ociarchive"
)

func main() {
	if len(os.Args) != 4 || os.Args[1] != "busybox" {
		fmt.Fprintln(os.Stderr, "usage: mkimage busybox REF OUT.tar")
		os.Exit(2)
	}
	const busybox = "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		fmt.Fprintf(os.Stderr, "mkimage: %s missing: install Debian's busybox-static (scripts/setup-host.sh does)\n", busybox)
		os.Exit(1)
	}
	res, err := ociarchive.WriteFile(os.Args[3], ociarchive.BusyboxImage(os.Args[2], busybox))
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
	fmt.Printf("%s %s -> %s\n", os.Args[2], res.Manifest.Digest, os.Args[3])
}
