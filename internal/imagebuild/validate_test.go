package imagebuild

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const base = "bottle.local/test-busybox:e2e-123"

func TestValidateAccepts(t *testing.T) {
	for _, df := range []string{
		"FROM " + base + "\nENV A=b\nRUN echo hi > /f\n",
		"# a comment\n\nFROM " + base + " AS agent\nRUN --network=none apk add x || true\n",
		"# check=skip=all\nfrom " + base + "\nCOPY Dockerfile /d\nRUN echo a \\\n  && echo b\n",
		"FROM " + base + "\r\nRUN true\r\n",
		"FROM " + base + "\nADD Dockerfile /x\nRUN --mount=type=cache,target=/c true\n",
	} {
		if err := Validate(df, base); err != nil {
			t.Errorf("Validate(%q): %v", df, err)
		}
	}
}

func TestValidateRefuses(t *testing.T) {
	for _, c := range []struct{ df, want string }{
		{"FROM busybox\nRUN true\n", "only the bottle's current agent image"},
		{"FROM " + base + "-other\n", "only the bottle's current agent image"},
		{"ARG B=" + base + "\nFROM $B\n", "only the bottle's current agent image"},
		{"FROM --platform=linux/arm64 " + base + "\n", "FROM flag"},
		{"# syntax=docker/dockerfile:1\nFROM " + base + "\n", "syntax"},
		{"#syntax = example.com/frontend\nFROM " + base + "\n", "syntax"},
		{"# escape=`\nFROM " + base + "\n", "escape"},
		{"FROM " + base + "\nFROM " + base + "\n", "2 FROM lines"},
		{"FROM " + base + " AS a\nFROM " + base + "\nCOPY --from=a / /\n", "--from"},
		{"FROM " + base + "\nCOPY --from=busybox /bin/sh /sh\n", "--from"},
		{"FROM " + base + "\nCOPY --FROM=busybox /bin/sh /sh\n", "--from"},
		// Spellings BuildKit's parser reads as another image, a second stage, the host
		// network or an insecure sandbox (a hostile review ran each through BuildKit).
		{"FROM " + base + "\nCOPY --fr\\\nom=other:latest /etc /x\n", "--from"},
		{"FROM " + base + "\nCOPY --fr\"o\"m=other:latest /etc /x\n", "--from"},
		{"FROM " + base + "\nCOPY --f\\rom=other:latest /etc /x\n", "--from"},
		{"FROM " + base + "\nRUN --mount=type=bind,\"from\"=other,target=/o true\n", "mount from another image"},
		{"FROM " + base + "\nFR\\\nOM other:latest\n", "only the bottle's current agent image"},
		{"FROM " + base + "\nRUN --net\"work\"=host true\n", "--network"},
		{"FROM " + base + "\nRUN --network=host echo --network=none\n", "--network"},
		{"FROM " + base + "\nRUN --security=insecure true\n", "--security"},
		{"FROM " + base + "\nRUN --sec\\\nurity=insecure true\n", "--security"},
		{"FROM " + base + "\nFOO bar\n", "unknown instruction"},
		{"FROM " + base + "\nRUN --mount=type=bind,from=busybox,target=/b true\n", "mount from another image"},
		{"FROM " + base + "\nRUN --network=host true\n", "--network"},
		{"FROM " + base + "\nADD https://example.com/x /x\n", "fetches from the network"},
		{"FROM " + base + "\nADD git@github.com:a/b.git /b\n", "fetches from the network"},
		{"FROM " + base + "\nONBUILD RUN true\n", "ONBUILD"},
		// A FROM hidden on a continued line is still seen.
		{"FROM " + base + "\nRUN echo \\\nFROM busybox\n", "only the bottle's current agent image"},
		{"RUN true\n", "first instruction must be FROM"},
		{"", "no FROM line"},
		{"FROM " + base + "\nRUN echo \x1b[31m\n", "control"},
		{"FROM " + base + "\n" + strings.Repeat("#", MaxDockerfileSize), "more than"},
	} {
		err := Validate(c.df, base)
		if err == nil || !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate(%.60q) = %v, want a refusal saying %q", c.df, err, c.want)
		}
	}
	if err := Validate("FROM x\n", ""); err == nil {
		t.Error("Validate without a base image accepted a Dockerfile")
	}
}

func TestImageRef(t *testing.T) {
	if got := ImageRef("claude-a1b2c3", 4); got != "bottle.local/claude-a1b2c3:4" {
		t.Errorf("ImageRef = %q", got)
	}
}

// TestConfig: the daemon's config names only the containerd worker, the bottle's
// namespace and snapshotter, and runs RUN steps with runsc through the runc shim.
func TestConfig(t *testing.T) {
	got := config(Spec{
		Dir: "/s/build", Containerd: "/run/c.sock", Namespace: "bottle", Snapshotter: "overlayfs",
		Runtime: Runtime{Type: "io.containerd.runc.v2", BinaryName: "/usr/local/bin/runsc", Root: "/run/r"},
	}, "/s/build/sock")
	for _, want := range []string{
		`root = "/s/build/root"`, `address = ["unix:///s/build/sock"]`,
		"[worker.oci]\n  enabled = false", "[worker.containerd]\n  enabled = true", `address = "/run/c.sock"`,
		`namespace = "bottle"`, `snapshotter = "overlayfs"`, `name = "io.containerd.runc.v2"`,
		`BinaryName = "/usr/local/bin/runsc"`, `Root = "/run/r"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("config lacks %q:\n%s", want, got)
		}
	}
	if got := config(Spec{Dir: "/d", Runtime: Runtime{Type: "io.containerd.runsc.v1"}}, "/d/sock"); strings.Contains(got, "options") {
		t.Errorf("gVisor shim config has runc options:\n%s", got)
	}
}

func TestTailBuffer(t *testing.T) {
	var tb tailBuffer
	for i := 0; i < 1000; i++ {
		tb.Write([]byte("line of output number\n"))
	}
	tb.Write([]byte("last line"))
	s := tb.String()
	if len(s) > tailMax || !strings.HasSuffix(s, "last line") || !strings.HasPrefix(s, "line of") {
		t.Errorf("tail of %d bytes: %q...", len(s), s[:40])
	}
}

// TestRunscWrapper: the wrapper runs runsc with the same arguments (writes to the root
// file system, not an overlay in the sandbox), and a kill of a sandbox that has exited
// succeeds while any other failure still fails.
func TestRunscWrapper(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "fake runsc's")
	// The fake prints its arguments; `kill gone` fails as runsc does for an exited sandbox.
	script := "#!/bin/sh\necho \"args: $*\"\ncase \"$*\" in *'kill gone'*) echo 'sandbox is not running' >&2; exit 128;; *'kill bad'*) echo 'other failure' >&2; exit 1;; esac\n"
	if err := os.WriteFile(fake, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	wrapper := filepath.Join(dir, "wrapper")
	if err := os.WriteFile(wrapper, []byte(runscWrapper(fake)), 0o700); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		out, err := exec.Command(wrapper, args...).CombinedOutput()
		return string(out), err
	}
	if out, err := run("--root", "/r", "state", "a b"); err != nil || !strings.Contains(out, "args: --overlay2=none --root /r state a b") {
		t.Errorf("state: %q, %v", out, err)
	}
	if out, err := run("--root", "/r", "kill", "gone", "9"); err != nil {
		t.Errorf("kill of an exited sandbox: %q, %v; want success", out, err)
	}
	if out, err := run("kill", "bad", "9"); err == nil || !strings.Contains(out, "other failure") {
		t.Errorf("failing kill: %q, %v; want the failure passed on", out, err)
	}
}

// TestLockDir: one build at a time per build dir.
func TestLockDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "build")
	unlock, err := lockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockDir(dir); err == nil || !strings.Contains(err.Error(), "another image build") {
		t.Errorf("second lock: %v, want refused", err)
	}
	unlock()
	unlock2, err := lockDir(dir)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	unlock2()
}
