package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bottle-dev/bottle/internal/ociarchive"
)

// TestImageImportProgressWithoutTerminal imports an archive with stderr on a pipe (as in
// a log or CI): one line per step, no carriage returns or escapes.
func TestImageImportProgressWithoutTerminal(t *testing.T) {
	e := newEnv(t)
	const ref = "bottle.local/e2e-progress:1"
	archive := filepath.Join(t.TempDir(), "image.tar")
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ociarchive.Write(f, ociarchive.BusyboxImage(ref, "/bin/busybox")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := e.bottle(nil, "image", "import", archive)
	if code != 0 || strings.TrimSpace(out) != ref {
		t.Fatalf("image import: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if strings.ContainsAny(errOut, "\r\x1b") {
		t.Errorf("carriage return or escape on a pipe: %q", errOut)
	}
	lines := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n")
	want := []string{"bottle: reading image archive (", "bottle: unpacking " + ref + " (", "bottle: imported "}
	if len(lines) != len(want) {
		t.Fatalf("stderr has %d lines, want one per step (%d): %q", len(lines), len(want), errOut)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d = %q, want prefix %q", i, lines[i], w)
		}
	}
}

// openPTY opens a pseudo-terminal pair of 80x24.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Close() })
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetWinsize(int(slave.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: 80}); err != nil {
		t.Fatalf("pty size: %v", err)
	}
	return master, slave
}

// columnOf plays out like a terminal where the cursor is when marker starts: \r returns
// to column 0, \n moves down only, escape sequences move nothing.
func columnOf(out, marker string) (int, bool) {
	i := strings.Index(out, marker)
	if i < 0 {
		return 0, false
	}
	col := 0
	for j := 0; j < i; j++ {
		switch c := out[j]; {
		case c == '\r':
			col = 0
		case c == '\n':
		case c == 0x1b: // CSI ... final byte
			for j++; j < i && (out[j] == '[' || out[j] < 0x40 || out[j] > 0x7e); j++ {
			}
		case c >= 0x20:
			col++
		}
	}
	return col, true
}

// TestAttachedTerminalStartsAgentAtColumnZero runs an attached start in a pseudo-terminal:
// what bottle prints before the agent runs must leave the cursor at column 0, so the
// agent's first line starts there (bottle used to print its banner after putting the
// terminal in raw mode, without a carriage return).
func TestAttachedTerminalStartsAgentAtColumnZero(t *testing.T) {
	e := newEnv(t)
	e.writeManifest("tty")
	master, slave := openPTY(t)
	const marker = "hello-from-the-agent"
	cmd := e.command(nil, "start", "--rm", "tty", "--", "/bin/sh", "-c", "echo "+marker)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	var out bytes.Buffer
	copied := make(chan struct{})
	go func() {
		_, _ = io.Copy(&out, master) // ends with EIO once bottle has exited
		close(copied)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			<-copied
			t.Fatalf("attached start in a terminal: %v\n%q", err, out.String())
		}
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-waited
		t.Fatalf("attached start in a terminal did not end in 90s:\n%q", out.String())
	}
	<-copied
	got := out.String()
	col, ok := columnOf(got, marker)
	if !ok {
		t.Fatalf("the agent's output is missing:\n%q", got)
	}
	if col != 0 {
		t.Errorf("the agent's first line starts at column %d, want 0:\n%q", col, got)
	}
	if !strings.Contains(got, "bottle tty-") {
		t.Errorf("no banner before the agent's output:\n%q", got)
	}
}

// TestBusyboxWgetCommands runs the busybox wget commands the README gives for the demo's
// shell, as written: busybox wget ignores NO_PROXY, so reaching the egress-proxy needs
// `-Y off`; everything else goes through the filter, which refuses hosts off the
// allowlist. No traffic leaves: the filter refuses before resolving, and the
// egress-proxy answers its own health check.
func TestBusyboxWgetCommands(t *testing.T) {
	e := newEnv(t)
	manifest := fmt.Sprintf(`[agents.wget]
bottle = "b"
image = %q
command = ["/bin/sleep", "600"]

[bottles.b]
runtime = "runsc-runc"
filter = "builtin"
allowlist = []

[[bottles.b.egress_proxy.routes]]
host = "api.route.test"
token_ref = "E2E_WGET_TOKEN"
`, testImage)
	if err := os.WriteFile(e.manifest, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := e.bottle([]string{"E2E_WGET_TOKEN=not-a-real-token"}, "start", "--detach", "wget"); code != 0 {
		t.Fatalf("start: exit %d: %s %s", code, out, errOut)
	}
	id := e.identityOf("wget")
	sh := func(cmd string) (string, int) {
		t.Helper()
		out, errOut, code := e.bottle(nil, "exec", id, "--", "/bin/sh", "-c", cmd)
		return out + errOut, code
	}
	if out, code := sh("wget -Y off -q -O- http://egress-proxy:9000/healthz"); code != 0 || strings.TrimSpace(out) != "ok" {
		t.Errorf("wget -Y off to the egress-proxy: exit %d: %q, want ok", code, out)
	}
	if out, code := sh("wget -q -O- http://egress-proxy:9000/healthz"); code == 0 {
		t.Errorf("wget without -Y off reached the egress-proxy (busybox wget now honours NO_PROXY? then update the README): %q", out)
	}
	if out, code := sh("wget -O- http://example.com/"); code == 0 || !strings.Contains(out, "403") {
		t.Errorf("wget through the filter to a host off the allowlist: exit %d: %q, want 403", code, out)
	}
}
