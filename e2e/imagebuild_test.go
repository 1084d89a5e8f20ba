package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/bottle-dev/bottle/internal/ctr"
	"github.com/bottle-dev/bottle/internal/testutil"
)

// buildArgs are `bottle image build`'s arguments: the restart resumes the bottle, so it
// gets resume's test flags.
func (e *env) buildArgs(id, dockerfile string) []string {
	e.t.Helper()
	path := filepath.Join(e.t.TempDir(), "Dockerfile")
	if err := os.WriteFile(path, []byte(dockerfile), 0o644); err != nil {
		e.t.Fatal(err)
	}
	args := []string{"image", "build", "--pool", pool, "--resolv-conf", e.resolv}
	if root := os.Getenv("BOTTLE_TEST_RUNC_ROOT"); root != "" {
		args = append(args, "--runc-root", root)
	}
	return append(args, id, path)
}

// builtImages lists the images of bottle id's own repository.
func (e *env) builtImages(id string) []string {
	e.t.Helper()
	c, err := ctr.Connect(context.Background(), e.address, e.namespace)
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	imgs, err := c.ImagesWithPrefix(context.Background(), "bottle.local/"+id+":")
	if err != nil {
		e.t.Fatal(err)
	}
	return imgs
}

// leases counts the containerd leases of the test namespace (a build must leave none).
func (e *env) leases() int {
	e.t.Helper()
	c, err := client.New(e.address)
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	ls, err := c.LeasesService().List(namespaces.WithNamespace(context.Background(), e.namespace))
	if err != nil {
		e.t.Fatal(err)
	}
	return len(ls)
}

// recordedImage is the bottle's recorded own image and its build count.
func (e *env) recordedImage(id string) (string, int) {
	e.t.Helper()
	data, err := os.ReadFile(filepath.Join(e.stateDir, "bottles", id, "meta.json"))
	if err != nil {
		e.t.Fatal(err)
	}
	var m struct {
		Image string `json:"agent_image"`
		Seq   int    `json:"agent_image_seq"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		e.t.Fatal(err)
	}
	return m.Image, m.Seq
}

// TestAgentImageBuild: a Dockerfile that adds a file and an env var, FROM the bottle's
// agent image, is built by a real BuildKit (no registry, RUN under gVisor without
// network); the running agent is restarted on it and sees the file, the env var and its
// old workspace files; stop + resume keeps the image; a Dockerfile FROM another image or
// with `# syntax=` is refused and changes nothing; rm leaves no image, buildkitd or dir.
func TestAgentImageBuild(t *testing.T) {
	testutil.RequireBinary(t, "buildkitd")
	testutil.RequireBinary(t, "buildctl")
	e := newEnv(t)
	e.writeManifest("ib")
	leasesBefore := e.leases()
	// The agent leaves a file in its workspace on its first run only.
	e.must("start", "--detach", "ib", "--", "/bin/sh", "-c", "[ -f /workspace/old.txt ] || echo first-run > /workspace/old.txt; exec sleep 600")
	id := e.identityOf("ib")
	waitFile(t, filepath.Join(filepath.Dir(e.manifest), "old.txt"))

	dockerfile := "FROM " + testImage + "\n" +
		"ENV BUILT_ENV=from-dockerfile\n" +
		"RUN echo added-by-build > /added.txt && \\\n" +
		"    cat /proc/version > /build-kernel.txt && cat /proc/net/dev > /build-net.txt\n"
	t0 := time.Now()
	out, errOut, code := e.bottle(nil, e.buildArgs(id, dockerfile)...)
	cold := time.Since(t0)
	if code != 0 {
		t.Fatalf("image build: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	want := "bottle.local/" + id + ":1"
	if strings.TrimSpace(out) != want {
		t.Errorf("image build printed %q, want %q", out, want)
	}
	if !strings.Contains(errOut, "DONE") {
		t.Errorf("no plain build progress on stderr:\n%s", errOut)
	}
	t.Logf("first build (cold) and restart took %s", cold)
	if img, seq := e.recordedImage(id); img != want || seq != 1 {
		t.Errorf("recorded image %q #%d, want %q #1", img, seq, want)
	}
	checkAgent := func(when string) {
		t.Helper()
		e.waitPhase("ib", "running", 30*time.Second)
		got := e.must("exec", id, "--", "/bin/sh", "-c", "cat /added.txt; echo env=$BUILT_ENV; cat /workspace/old.txt")
		for _, w := range []string{"added-by-build", "env=from-dockerfile", "first-run"} {
			if !strings.Contains(got, w) {
				t.Errorf("%s: agent output lacks %q:\n%s", when, w, got)
			}
		}
	}
	checkAgent("after the build")
	// The RUN step ran under gVisor (its kernel is not the host's) and without network.
	kernel := e.must("exec", id, "--", "/bin/cat", "/build-kernel.txt")
	host, err := os.ReadFile("/proc/version")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(kernel) == strings.TrimSpace(string(host)) || !strings.Contains(kernel, "gvisor") {
		t.Errorf("RUN step saw kernel %q (host %q): not gVisor's", kernel, host)
	}
	// /proc/net/dev: two header lines, then one line per interface ("NAME: counters").
	netdev := e.must("exec", id, "--", "/bin/cat", "/build-net.txt")
	lines := strings.Split(strings.TrimSpace(netdev), "\n")
	if len(lines) < 2 || !strings.Contains(lines[0], "Receive") {
		t.Fatalf("RUN step's /proc/net/dev unreadable:\n%s", netdev)
	}
	for _, l := range lines[2:] {
		if name, _, _ := strings.Cut(strings.TrimSpace(l), ":"); name != "lo" {
			t.Errorf("RUN step had network interface %q:\n%s", name, netdev)
		}
	}
	t.Logf("RUN step's kernel: %s; its interfaces: %d besides the header", strings.TrimSpace(kernel), len(lines)-2)

	// Refused: FROM another image (the manifest's is no longer the current one), a
	// syntax directive; nothing changes.
	for _, bad := range []struct{ dockerfile, want string }{
		{"FROM " + testImage + "\nRUN true\n", "only the bottle's current agent image"},
		{"# syntax=docker/dockerfile:1\nFROM " + want + "\nRUN true\n", "syntax"},
	} {
		out, errOut, code := e.bottle(nil, e.buildArgs(id, bad.dockerfile)...)
		if code == 0 || !strings.Contains(errOut, bad.want) {
			t.Errorf("bad Dockerfile %q: exit %d, stdout %q, stderr %q; want a refusal saying %q", bad.dockerfile, code, out, errOut, bad.want)
		}
	}
	if img, seq := e.recordedImage(id); img != want || seq != 1 {
		t.Errorf("after refusals: recorded image %q #%d, want %q #1", img, seq, want)
	}
	if imgs := e.builtImages(id); len(imgs) != 1 {
		t.Errorf("after refusals: images %v, want only %s", imgs, want)
	}
	checkAgent("after the refusals")

	// A second build, FROM the first: warm (the base is unpacked already).
	t0 = time.Now()
	out = e.must(e.buildArgs(id, "FROM "+want+"\nRUN echo second > /second.txt\n")...)
	t.Logf("second build (warm: base unpacked) and restart took %s", time.Since(t0))
	want2 := "bottle.local/" + id + ":2"
	if strings.TrimSpace(out) != want2 {
		t.Errorf("second build printed %q, want %q", out, want2)
	}
	if imgs := e.builtImages(id); len(imgs) != 1 || imgs[0] != want2 {
		t.Errorf("images after the second build: %v, want only %s", imgs, want2)
	}

	// stop + resume keeps the bottle's own image.
	e.must("stop", id)
	e.must("resume", "--detach", id)
	checkAgent("after stop and resume")
	if got := e.must("exec", id, "--", "/bin/cat", "/second.txt"); !strings.Contains(got, "second") {
		t.Errorf("resumed agent is not on the second image: %q", got)
	}

	e.must("stop", id)
	e.must("rm", id)
	e.assertNothingLeft(id)
	if imgs := e.builtImages(id); len(imgs) != 0 {
		t.Errorf("rm left images %v", imgs)
	}
	if n := e.leases(); n != leasesBefore {
		t.Errorf("containerd leases: %d before the builds, %d after rm", leasesBefore, n)
	}
	if out, _ := exec.Command("pgrep", "-a", "buildkitd").Output(); strings.Contains(string(out), e.stateDir) {
		t.Errorf("buildkitd still runs:\n%s", out)
	}
}

// waitFile waits until path exists.
func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s did not appear", path)
}
