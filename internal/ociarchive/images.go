package ociarchive

import (
	"fmt"
	"os"
	"path/filepath"
)

// HostCABundle is where Debian-like hosts keep the CA bundle the sidecar image carries.
const HostCABundle = "/etc/ssl/certs/ca-certificates.crt"

// SidecarExecutablePath is where the sidecars' executable lives in the sidecar image.
const SidecarExecutablePath = "/bottle"

// SidecarExecutableName is the sidecars' own binary (cmd/bottle-sidecar), installed next
// to bottle's: each sidecar's sandbox then holds only the sidecars' code, not the CLI's.
const SidecarExecutableName = "bottle-sidecar"

// SidecarExecutable is the sidecar binary next to the running executable.
func SidecarExecutable() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("sidecar binary: locate own executable: %w", err)
	}
	path := filepath.Join(filepath.Dir(exe), SidecarExecutableName)
	if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() {
		return "", fmt.Errorf("sidecar binary %s is missing; install it next to bottle (`make build` builds both into bin/; `go build -o %s ./cmd/bottle-sidecar`)", path, path)
	}
	return path, nil
}

// SidecarImage describes bottle's sidecar image: the (static) sidecar executable at
// /bottle, the host's CA bundle at the same path inside, an empty sticky /tmp and
// minimal passwd/group files.
func SidecarImage(ref, executable, caBundle string) Image {
	return Image{
		Ref: ref,
		Entries: []Entry{
			{Path: SidecarExecutablePath, Type: File, Mode: 0o755, Source: executable},
			{Path: HostCABundle, Type: File, Mode: 0o644, Source: caBundle},
			{Path: "/tmp", Type: Dir, Mode: 0o777 | os.ModeSticky},
			{Path: "/etc/passwd", Type: File, Content: []byte(passwd)},
			{Path: "/etc/group", Type: File, Content: []byte(group)},
		},
		Config: Config{
			Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=" + HostCABundle},
			Entrypoint: []string{SidecarExecutablePath},
			WorkingDir: "/",
		},
	}
}

// BusyboxApplets are the applets linked to /bin/busybox in BusyboxImage.
var BusyboxApplets = []string{
	"ash", "awk", "base64", "basename", "cat", "chmod", "cp", "cut", "date", "dd", "df",
	"diff", "dirname", "dmesg", "du", "echo", "env", "expr", "false", "find", "grep", "head",
	"hostname", "httpd", "id", "ifconfig", "ip", "kill", "less", "ln", "ls", "mkdir",
	"mktemp", "mount", "mv", "nc", "netstat", "nproc", "nslookup", "printf", "ps", "pwd",
	"readlink", "rm", "route", "sed", "seq", "sh", "sha256sum", "sleep", "sort", "stat",
	"stty", "tac", "tail", "tee", "telnet", "test", "timeout", "touch", "tr", "true", "tty",
	"uname", "uniq", "vi", "wc", "wget", "which", "whoami", "xargs", "yes",
}

// BusyboxImage describes a test image: busyboxPath (a static busybox, e.g. Debian's
// busybox-static /bin/busybox) at /bin/busybox with applet symlinks in /bin, /tmp,
// and passwd/group files.
func BusyboxImage(ref, busyboxPath string) Image {
	entries := []Entry{
		{Path: "/bin/busybox", Type: File, Mode: 0o755, Source: busyboxPath},
		{Path: "/tmp", Type: Dir, Mode: 0o777 | os.ModeSticky},
		{Path: "/etc/passwd", Type: File, Content: []byte(passwd)},
		{Path: "/etc/group", Type: File, Content: []byte(group)},
		{Path: "/root", Type: Dir, Mode: 0o700},
	}
	for _, a := range BusyboxApplets {
		entries = append(entries, Entry{Path: "/bin/" + a, Type: Symlink, Target: "busybox"})
	}
	return Image{
		Ref:     ref,
		Entries: entries,
		Config: Config{
			Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Cmd: []string{"/bin/sh"},
		},
	}
}

const passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
const group = "root:x:0:\nnogroup:x:65534:\n"
