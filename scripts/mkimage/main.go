// Command mkimage writes small OCI image archives without Docker or a registry.
//
//	go run ./scripts/mkimage busybox REF OUT.tar   # Debian's static busybox as a demo/test agent
//	go run ./scripts/mkimage binary REF OUT.tar SRC DEST [ENTRYPOINT...]
//
// The binary mode packs one static host executable SRC at DEST in the image, with the
// host's CA bundle, minimal /etc/passwd and /etc/group and a sticky /tmp; the entrypoint
// is DEST unless given. It makes, for example, an importable pipelock image from a
// pipelock binary built from source:
//
//	go run ./scripts/mkimage binary ghcr.io/luckypipewrench/pipelock:v2.3.0 pipelock.tar ./pipelock /pipelock
//	bottle image import pipelock.tar
package main

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path"

	"github.com/bottle-dev/bottle/internal/ociarchive"
)

const usage = "usage: mkimage busybox REF OUT.tar\n       mkimage binary REF OUT.tar SRC DEST [ENTRYPOINT...]"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		var u usageError
		if errors.As(err, &u) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg + "\n" + usage }

func run(args []string) error {
	if len(args) < 1 {
		return usageError{"no mode given"}
	}
	var img ociarchive.Image
	switch mode := args[0]; {
	case mode == "busybox" && len(args) == 3:
		const busybox = "/bin/busybox"
		if _, err := os.Stat(busybox); err != nil {
			return fmt.Errorf("%s missing: install Debian's busybox-static (scripts/setup-host.sh does)", busybox)
		}
		img = ociarchive.BusyboxImage(args[1], busybox)
	case mode == "binary" && len(args) >= 5:
		var err error
		if img, err = binaryImage(args[1], args[3], args[4], args[5:]); err != nil {
			return err
		}
	default:
		return usageError{fmt.Sprintf("wrong arguments for mode %q", mode)}
	}
	out := args[2]
	res, err := ociarchive.WriteFile(out, img)
	if err != nil {
		return err
	}
	fmt.Printf("%s %s -> %s\n", img.Ref, res.Manifest.Digest, out)
	return nil
}

// binaryImage describes an image holding only the executable src at dest (plus what
// TLS clients and user lookups need). The image has no shell and no dynamic loader, so
// src must be statically linked.
func binaryImage(ref, src, dest string, entrypoint []string) (ociarchive.Image, error) {
	if !path.IsAbs(dest) || path.Clean(dest) != dest || dest == "/" {
		return ociarchive.Image{}, usageError{fmt.Sprintf("DEST %q must be a clean absolute file path such as /pipelock", dest)}
	}
	if err := checkStatic(src); err != nil {
		return ociarchive.Image{}, err
	}
	if _, err := os.Stat(ociarchive.HostCABundle); err != nil {
		return ociarchive.Image{}, fmt.Errorf("host CA bundle %s missing: install Debian's ca-certificates", ociarchive.HostCABundle)
	}
	if len(entrypoint) == 0 {
		entrypoint = []string{dest}
	}
	return ociarchive.Image{
		Ref: ref,
		Entries: []ociarchive.Entry{
			{Path: dest, Type: ociarchive.File, Mode: 0o755, Source: src},
			{Path: ociarchive.HostCABundle, Type: ociarchive.File, Mode: 0o644, Source: ociarchive.HostCABundle},
			{Path: "/tmp", Type: ociarchive.Dir, Mode: 0o777 | os.ModeSticky},
			{Path: "/etc/passwd", Type: ociarchive.File, Content: []byte("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")},
			{Path: "/etc/group", Type: ociarchive.File, Content: []byte("root:x:0:\nnogroup:x:65534:\n")},
		},
		Config: ociarchive.Config{
			Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=" + ociarchive.HostCABundle},
			Entrypoint: entrypoint,
			WorkingDir: "/",
		},
	}, nil
}

// checkStatic refuses anything but a statically linked ELF executable: a dynamic one
// would fail in the image with a confusing "no such file or directory".
func checkStatic(src string) error {
	f, err := elf.Open(src)
	if err != nil {
		return fmt.Errorf("SRC %s is not a readable ELF executable: %w", src, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("SRC %s is dynamically linked; the image has no loader or libraries: rebuild it static (for Go: CGO_ENABLED=0 go build)", src)
		}
	}
	return nil
}
