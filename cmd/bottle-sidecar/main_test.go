package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bottle-dev/bottle/internal/names"
)

// Every sidecar runs this binary in a sandbox of its own, where each page it touches is
// private memory: it must not link bottle's CLI, planner or container clients (with
// them a sidecar's resident size was 28 MB instead of 12, issue 13).
func TestSidecarBinaryLinksOnlySidecars(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, banned := range []string{
			"github.com/bottle-dev/bottle/internal/plan", "github.com/bottle-dev/bottle/internal/runtime",
			"github.com/bottle-dev/bottle/internal/manifest", "github.com/bottle-dev/bottle/internal/ctr",
			"github.com/containerd/containerd/v2/client", "github.com/containerd/containerd/v2/pkg/oci",
			"github.com/urfave/cli/v2", "k8s.io/", "github.com/containernetworking/",
		} {
			if pkg == banned || strings.HasPrefix(pkg, banned+"/") || strings.HasSuffix(banned, "/") && strings.HasPrefix(pkg, banned) {
				t.Errorf("bottle-sidecar links %s", pkg)
			}
		}
	}
}

// TestRunRefusesBadArguments: the sidecar names its roles and requires its config.
func TestRunRefusesBadArguments(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "usage: bottle-sidecar sidecar ROLE"},
		{[]string{"sidecar", "nosuch", "--config", "x"}, `unknown sidecar "nosuch" (known: filter, git-gate, egress-proxy, supervise)`},
		{[]string{"sidecar", "filter"}, "--config FILE is required"},
		{[]string{"sidecar", "filter", "--config", "x", "extra"}, "nothing else may follow"},
		{[]string{"sidecar", "filter", "--config", "/nonexistent/filter.json", "--ready-file", ""}, "read config"},
	} {
		if err := run(tc.args); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run %q: %v, want an error saying %q", tc.args, err, tc.want)
		}
	}
}

// TestSidecarBadListenAddress: a sidecar that cannot listen does not report ready, and
// leaves the reason next to the ready file, where the waiting start reads it.
func TestSidecarBadListenAddress(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "filter.json")
	if err := os.WriteFile(cfg, []byte(`{"listen":"127.0.0.1:not-a-port","allowlist":["example.test"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	ready := filepath.Join(dir, "ready")
	if err := run([]string{"sidecar", "filter", "--config", cfg, "--ready-file", ready}); err == nil || !strings.Contains(err.Error(), "listen on 127.0.0.1:not-a-port") {
		t.Errorf("run: %v; want a listen error", err)
	}
	if _, err := os.Stat(ready); err == nil {
		t.Error("a sidecar that does not serve reported ready")
	}
	if reason, err := os.ReadFile(filepath.Join(dir, names.SidecarErrorFile)); err != nil || !strings.Contains(string(reason), "listen on 127.0.0.1:not-a-port") {
		t.Errorf("error file: %q, %v", reason, err)
	}
}
