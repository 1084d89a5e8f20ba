package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// ownerOf is "uid:gid" of path (not following a link).
func ownerOf(t *testing.T, path string) (uid, gid uint32) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Uid, st.Gid
}

// TestReadmeMainPathWritesWorkspace runs the README's main path as written: as root,
// `make run` in a root-owned checkout (a copy of this repository the test makes), with a
// command instead of claude as the README allows. The agent creates a file and a
// directory and edits a file of the checkout; on the host they belong to the checkout's
// owner, root.
func TestReadmeMainPathWritesWorkspace(t *testing.T) {
	e := newEnv(t)
	ensureAgentImage(t, e)
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	checkout := filepath.Join(t.TempDir(), "checkout")
	if out, err := exec.Command("cp", "-a", "--", repo+"/.", checkout).CombinedOutput(); err != nil {
		t.Fatalf("copy the repository: %v: %s", err, out)
	}
	if err := os.Chown(checkout, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(checkout, 0o755); err != nil {
		t.Fatal(err)
	}
	script := `id -u > /workspace/made-by-agent && mkdir /workspace/agent-dir && echo x > /workspace/agent-dir/f && echo edited-by-agent >> /workspace/README.md && touch ~/.home-writable && echo done`
	cmd := exec.Command("make", "run", "CMD=sh -c '"+script+"'")
	cmd.Dir = checkout
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"CONTAINERD_ADDRESS=" + e.address, "BOTTLE_NAMESPACE=" + namespace, "BOTTLE_STATE_DIR=" + e.stateDir,
		"BOTTLE_RESOLV_CONF=" + e.resolv, "BOTTLE_POOL=" + pool, "BOTTLE_RUNC_ROOT=" + os.Getenv("BOTTLE_TEST_RUNC_ROOT"),
		"CLAUDE_CODE_OAUTH_TOKEN=not-a-real-token",
	}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "done") {
		t.Fatalf("make run CMD=...: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "cannot write /workspace") {
		t.Errorf("make run warned that the agent cannot write its workspace:\n%s", out)
	}
	for _, p := range []string{"made-by-agent", "agent-dir", "agent-dir/f"} {
		if uid, gid := ownerOf(t, filepath.Join(checkout, p)); uid != 0 || gid != 0 {
			t.Errorf("%s is owned by %d:%d on the host, want the checkout's owner 0:0", p, uid, gid)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(checkout, "made-by-agent")); strings.TrimSpace(string(b)) != "0" {
		t.Errorf("the agent ran as uid %q, want 0 (the checkout's owner)", b)
	}
	if b, _ := os.ReadFile(filepath.Join(checkout, "README.md")); !strings.HasSuffix(string(b), "edited-by-agent\n") {
		t.Error("the agent's edit of README.md is not in the checkout")
	}
}

// TestUserOwnedWorkspace: in a workspace owned by 1234:1234 the agent runs as 1234:1234,
// edits the files there and what it makes belongs to 1234:1234 on the host.
func TestUserOwnedWorkspace(t *testing.T) {
	e := newEnv(t)
	e.writeManifest("mine")
	ws := t.TempDir()
	if err := os.WriteFile(filepath.Join(ws, "existing"), []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{ws, filepath.Join(ws, "existing")} {
		if err := os.Chown(p, 1234, 1234); err != nil {
			t.Fatal(err)
		}
	}
	cmd := e.command(nil, "start", "--rm", "mine", "--", "/bin/sh", "-c", `id -u; id -g; echo new > /workspace/made && echo more >> /workspace/existing`)
	cmd.Dir = ws
	out, errOut, code := runCmd(t, cmd)
	if code != 0 {
		t.Fatalf("start: exit %d\n%s\n%s", code, out, errOut)
	}
	if got := strings.Fields(out); len(got) != 2 || got[0] != "1234" || got[1] != "1234" {
		t.Errorf("the agent ran as %q, want 1234 1234", out)
	}
	if uid, gid := ownerOf(t, filepath.Join(ws, "made")); uid != 1234 || gid != 1234 {
		t.Errorf("made is owned by %d:%d on the host, want 1234:1234", uid, gid)
	}
	if b, _ := os.ReadFile(filepath.Join(ws, "existing")); string(b) != "old\nmore\n" {
		t.Errorf("existing is %q after the agent's edit", b)
	}
}

// TestUnwritableWorkspaceSaidSo: a manifest user that cannot write the workspace gets a
// warning with the fix from plan, start and doctor.
func TestUnwritableWorkspaceSaidSo(t *testing.T) {
	e := newEnv(t)
	manifest := "[agents.ro]\nbottle = \"b\"\nimage = \"" + testImage + "\"\nuser = \"1000:1000\"\n[bottles.b]\nruntime = \"runsc-runc\"\nfilter = \"builtin\"\n"
	if err := os.WriteFile(e.manifest, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	ws := filepath.Dir(e.manifest) // root's, 0700
	const want = "cannot write /workspace"
	if out := e.must("plan", "ro"); !strings.Contains(out, want) || !strings.Contains(out, "fix: drop `user`") {
		t.Errorf("plan does not say the workspace is not writable:\n%s", out)
	}
	args := []string{"doctor", "--pool", pool}
	if root := os.Getenv("BOTTLE_TEST_RUNC_ROOT"); root != "" {
		args = append(args, "--runc-root", root)
	}
	if out, _, _ := e.bottle(nil, args...); !strings.Contains(out, want) {
		t.Errorf("doctor does not say the workspace is not writable:\n%s", out)
	}
	out, errOut, code := e.bottle(nil, "start", "--rm", "ro", "--", "/bin/sh", "-c", "touch /workspace/x || echo refused")
	if code != 0 || !strings.Contains(errOut, want) || !strings.Contains(out, "refused") {
		t.Errorf("start: exit %d, stdout %q, stderr %q; want the warning and the write refused", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(ws, "x")); err == nil {
		t.Error("the agent wrote a workspace it was warned it cannot write")
	}
}
