package ctr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"

	"github.com/bottle-dev/bottle/internal/testutil"
)

// withLookPath replaces PATH lookup and the /usr/local/bin fallback for one test.
func withLookPath(t *testing.T, dir string, fallback string) {
	t.Helper()
	oldLook, oldFallback := lookPath, fallbackRunscDir
	lookPath = func(name string) (string, error) {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			return "", exec.ErrNotFound
		}
		return p, nil
	}
	fallbackRunscDir = fallback
	t.Cleanup(func() { lookPath, fallbackRunscDir = oldLook, oldFallback })
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		testutil.Missing(t, "%s: %v", src, err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// staticELF returns a statically linked executable of the host.
func staticELF(t *testing.T) string {
	for _, p := range []string{"/bin/busybox", "/usr/local/bin/runsc"} {
		if _, err := os.Stat(p); err == nil && checkStatic(p) == nil {
			return p
		}
	}
	testutil.Missing(t, "a static ELF executable (Debian busybox-static)")
	return ""
}

// dynamicELF returns a dynamically linked executable of the host.
func dynamicELF(t *testing.T) string {
	for _, p := range []string{"/bin/ls", "/usr/bin/env", "/bin/cat"} {
		if _, err := os.Stat(p); err == nil && checkStatic(p) != nil {
			return p
		}
	}
	testutil.Missing(t, "a dynamically linked executable such as /bin/ls")
	return ""
}

func TestDetectRuntimeRunscMissing(t *testing.T) {
	withLookPath(t, t.TempDir(), t.TempDir())
	for _, want := range []string{"auto", "", "runsc-runc"} {
		_, err := DetectRuntime(want, "", false)
		if err == nil {
			t.Fatalf("DetectRuntime(%q) succeeded without runsc", want)
		}
		for _, hint := range []string{"runsc not found", "sudo make setup", "scripts/setup-host.sh --system", "CGO_ENABLED=0"} {
			if !strings.Contains(err.Error(), hint) {
				t.Errorf("DetectRuntime(%q) error lacks %q: %v", want, hint, err)
			}
		}
	}
	if _, err := DetectRuntime("auto", "/nonexistent/runsc", false); err == nil || !strings.Contains(err.Error(), "/nonexistent/runsc") {
		t.Errorf("explicit missing runsc path: %v", err)
	}
}

func TestDetectRuntimeDynamicRunsc(t *testing.T) {
	dir := t.TempDir()
	copyFile(t, dynamicELF(t), filepath.Join(dir, "runsc"))
	withLookPath(t, dir, t.TempDir())
	_, err := DetectRuntime("auto", "", false)
	if err == nil {
		t.Fatal("DetectRuntime accepted a dynamically linked runsc")
	}
	for _, hint := range []string{"dynamically linked", "umounter", "CGO_ENABLED=0", filepath.Join(dir, "runsc")} {
		if !strings.Contains(err.Error(), hint) {
			t.Errorf("error lacks %q: %v", hint, err)
		}
	}
	// A file that is not ELF at all.
	notELF := filepath.Join(t.TempDir(), "runsc")
	if err := os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := DetectRuntime("runsc-runc", notELF, false); err == nil || !strings.Contains(err.Error(), "not a readable ELF") {
		t.Errorf("non-ELF runsc: %v", err)
	}
}

func TestDetectRuntimeStaticRunsc(t *testing.T) {
	dir := t.TempDir()
	copyFile(t, staticELF(t), filepath.Join(dir, "runsc"))
	withLookPath(t, dir, t.TempDir())
	rt, err := DetectRuntime("auto", "", false)
	if err != nil {
		t.Fatal(err)
	}
	if rt.Handler != HandlerRunscRunc || rt.Type != RuntimeTypeRunc || rt.RunscPath != filepath.Join(dir, "runsc") {
		t.Fatalf("auto resolved to %+v", rt)
	}
	// Fallback directory when not on PATH.
	fallback := t.TempDir()
	copyFile(t, staticELF(t), filepath.Join(fallback, "runsc"))
	withLookPath(t, t.TempDir(), fallback)
	rt, err = DetectRuntime("runsc-runc", "", false)
	if err != nil || rt.RunscPath != filepath.Join(fallback, "runsc") {
		t.Fatalf("fallback: %+v, %v", rt, err)
	}
	// The gVisor shim handler also needs containerd-shim-runsc-v1.
	if _, err := DetectRuntime("runsc", "", false); err == nil || !strings.Contains(err.Error(), RunscShimBinary) {
		t.Fatalf("runsc handler without shim: %v", err)
	}
	copyFile(t, staticELF(t), filepath.Join(fallback, RunscShimBinary))
	withLookPath(t, fallback, t.TempDir())
	rt, err = DetectRuntime("runsc", "", false)
	if err != nil || rt.Type != RuntimeTypeRunsc {
		t.Fatalf("runsc handler: %+v, %v", rt, err)
	}
}

func TestDetectRuntimeRuncNeedsOptIn(t *testing.T) {
	if _, err := DetectRuntime("runc", "", false); err == nil || !strings.Contains(err.Error(), "WITHOUT the gVisor sandbox") {
		t.Fatalf("runc without opt-in: %v", err)
	}
	rt, err := DetectRuntime("runc", "", true)
	if err != nil || rt.Handler != HandlerRunc {
		t.Fatalf("runc with opt-in: %+v, %v", rt, err)
	}
	if _, err := DetectRuntime("kata", "", true); err == nil {
		t.Fatal("unknown runtime accepted")
	}
	if _, err := (Runtime{Handler: HandlerAuto}).containerOpt(); err == nil {
		t.Fatal("unresolved runtime accepted by containerOpt")
	}
}

func TestConnectErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	_, err := Connect(ctx, filepath.Join(dir, "missing.sock"), "bottle")
	if err == nil || !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), "sudo make setup") {
		t.Fatalf("missing socket: %v", err)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Connect(ctx, plain, "bottle"); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("plain file: %v", err)
	}
	if _, err := Connect(ctx, plain, "bad namespace!"); err == nil {
		t.Fatal("invalid namespace accepted")
	}

	// A socket nobody answers gRPC on: must fail within the dial timeout.
	sock := filepath.Join(dir, "mute.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, conn); conn.Close() }()
		}
	}()
	start := time.Now()
	_, err = Connect(ctx, "unix://"+sock, "bottle")
	if err == nil || !strings.Contains(err.Error(), "does not answer") || !strings.Contains(err.Error(), "sudo make setup") {
		t.Fatalf("mute socket: %v", err)
	}
	if d := time.Since(start); d > 2*dialTimeout {
		t.Fatalf("Connect to a mute socket took %v", d)
	}
}

func TestLabelFilter(t *testing.T) {
	got := labelFilter(map[string]string{"bottle.role": "agent", "bottle.identity": "claude-a1b2c3"})
	want := `labels."bottle.identity"=="claude-a1b2c3",labels."bottle.role"=="agent"`
	if got != want {
		t.Fatalf("labelFilter = %s, want %s", got, want)
	}
}

func TestSidecarImageRef(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	if got := sidecarImageRef("v1.2.3+dirty", sum); got != "bottle.local/sidecar:v1.2.3_dirty-abababababab" {
		t.Fatalf("ref = %s", got)
	}
	if got := sidecarImageRef("", sum); got != "bottle.local/sidecar:dev-abababababab" {
		t.Fatalf("ref = %s", got)
	}
	if got := sidecarImageRef(".-x", sum); got != "bottle.local/sidecar:x-abababababab" {
		t.Fatalf("ref = %s", got)
	}
}

func TestTaskStatusNames(t *testing.T) {
	want := map[tasktypes.Status]TaskStatus{
		tasktypes.Status_CREATED: TaskCreated, tasktypes.Status_RUNNING: TaskRunning,
		tasktypes.Status_STOPPED: TaskStopped, tasktypes.Status_PAUSED: TaskPaused,
		tasktypes.Status_PAUSING: TaskPausing, tasktypes.Status_UNKNOWN: TaskUnknown, 99: TaskUnknown,
	}
	for in, out := range want {
		if got := taskStatus(in); got != out {
			t.Errorf("taskStatus(%v) = %s, want %s", in, got, out)
		}
	}
}

func TestCachedSHA256(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "exe")
	cache := filepath.Join(dir, "cache", "hash")
	os.WriteFile(f, []byte("one"), 0o755)
	a, err := cachedSHA256(f, cache)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := fileSHA256(f); a != want {
		t.Fatalf("digest %s, want %s", a, want)
	}
	if _, err := os.Stat(cache); err != nil {
		t.Fatalf("cache not written: %v", err)
	}
	// A changed file (new size and mtime) is hashed again, never served from the cache.
	os.WriteFile(f, []byte("two, longer"), 0o755)
	b, _ := cachedSHA256(f, cache)
	if want, _ := fileSHA256(f); b != want || b == a {
		t.Fatalf("changed file: digest %s, want %s", b, want)
	}
}

// TestDetectRuntimeRuncRefusalNamesTheFlag: the refusal names the flag that allows runc,
// as a user types it.
func TestDetectRuntimeRuncRefusalNamesTheFlag(t *testing.T) {
	_, err := DetectRuntime("runc", "", false)
	if err == nil || !strings.Contains(err.Error(), "--allow-unsafe-runc") {
		t.Errorf("runc without the opt-in: %v", err)
	}
	if rt, err := DetectRuntime("runc", "", true); err != nil || rt.Handler != HandlerRunc {
		t.Errorf("runc with the opt-in: %+v, %v", rt, err)
	}
}

// shimProc is a process whose Delete and Status fail as told.
type shimProc struct {
	client.Process
	deleteErr, statusErr error
}

func (p shimProc) Delete(context.Context, ...client.ProcessDeleteOpts) (*client.ExitStatus, error) {
	return nil, p.deleteErr
}

func (p shimProc) Status(context.Context) (client.Status, error) {
	return client.Status{Status: client.Running}, p.statusErr
}

// TestDeleteOnShim: a delete whose shim closed the connection counts as done only when
// the task is gone afterwards; a missing task is fine; other failures stay failures.
func TestDeleteOnShim(t *testing.T) {
	closed := fmt.Errorf("failed to delete task: %w", ttrpc.ErrClosed)
	for _, tc := range []struct {
		name                 string
		deleteErr, statusErr error
		ok                   bool
	}{
		{"deleted", nil, nil, true},
		{"already gone", errdefs.ErrNotFound, nil, true},
		{"shim ended, task gone", closed, errdefs.ErrNotFound, true},
		{"shim ended, task still there", closed, nil, false},
		{"other failure", errors.New("boom"), errdefs.ErrNotFound, false},
	} {
		_, err := deleteOnShim(context.Background(), shimProc{deleteErr: tc.deleteErr, statusErr: tc.statusErr})
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}
