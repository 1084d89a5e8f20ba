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
	script := `id -u > /workspace/made-by-agent && mkdir /workspace/agent-dir && echo x > /workspace/agent-dir/f && echo edited-by-agent >> /workspace/README.md && touch ~/.home-writable && echo done-$$((40+2))`
	cmd := exec.Command("make", "run", "CMD=sh -c '"+script+"'")
	cmd.Dir = checkout
	cmd.Env = e.makeEnv("CLAUDE_CODE_OAUTH_TOKEN=not-a-real-token")
	out, err := cmd.CombinedOutput()
	// make echoes the recipe with $$((40+2)) unexpanded: only the agent's shell prints 42.
	if err != nil || !strings.Contains(string(out), "done-42") {
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

// TestCwdCopyAndCp: a --cwd copy belongs to the agent's user (here the manifest's
// 1000:1000 in a root-owned directory), so the agent edits copied files; start, ps and
// rm name the copy's path. `bottle cp` takes the agent's work out and puts files in,
// refuses paths out of /workspace and never follows the links the agent planted.
func TestCwdCopyAndCp(t *testing.T) {
	e := newEnv(t)
	manifest := "[agents.cpy]\nbottle = \"b\"\nimage = \"" + testImage + "\"\nuser = \"1000:1000\"\n[bottles.b]\nruntime = \"runsc-runc\"\nfilter = \"builtin\"\n"
	if err := os.WriteFile(e.manifest, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	ws := t.TempDir() // not the manifest's dir: that holds the state dir, which the copy must not
	if err := os.MkdirAll(filepath.Join(ws, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"orig.txt": "orig\n", "sub/inner.txt": "inner\n"} {
		if err := os.WriteFile(filepath.Join(ws, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	outside := t.TempDir() // a host directory the agent points a link at
	script := `if [ -f /workspace/in.txt ]; then echo agent-edit >> /workspace/in.txt && echo in-edited; exit; fi; ` +
		`id -u; echo edited >> /workspace/orig.txt && echo result > /workspace/result && ln -s /etc /workspace/evil && ` +
		`ln -s ` + outside + ` /workspace/evil2 && ln -s sub/inner.txt /workspace/good && echo planted`
	cmd := e.command(nil, "start", "--cwd", "cpy", "--", "/bin/sh", "-c", script)
	cmd.Dir = ws
	out, errOut, code := runCmd(t, cmd)
	if code != 0 || !strings.Contains(out, "planted") || !strings.HasPrefix(out, "1000\n") {
		t.Fatalf("start --cwd: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	id := e.identityOf("cpy")
	copyDir := filepath.Join(e.stateDir, "bottles", id, "workspace")
	if !strings.Contains(errOut, copyDir) {
		t.Errorf("start does not name the copy %s:\n%s", copyDir, errOut)
	}
	if strings.Contains(errOut, "cannot write /workspace") {
		t.Errorf("start warned about a copy the agent owns:\n%s", errOut)
	}
	if ps := e.must("ps"); !strings.Contains(ps, "copy: "+copyDir) {
		t.Errorf("ps does not show the copy %s:\n%s", copyDir, ps)
	}
	if b, _ := os.ReadFile(filepath.Join(copyDir, "orig.txt")); string(b) != "orig\nedited\n" {
		t.Errorf("the agent could not edit its copy of orig.txt: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(ws, "orig.txt")); string(b) != "orig\n" {
		t.Errorf("the original orig.txt changed: %q", b)
	}

	// Out: one file, then the whole workspace; the links out of it are left out.
	dest := t.TempDir()
	e.must("cp", id+":result", filepath.Join(dest, "result"))
	if b, _ := os.ReadFile(filepath.Join(dest, "result")); string(b) != "result\n" {
		t.Errorf("cp out of one file: %q", b)
	}
	if uid, _ := ownerOf(t, filepath.Join(dest, "result")); uid != 0 {
		t.Errorf("a file copied out belongs to %d, want the invoking user (root)", uid)
	}
	all := e.must("cp", id+":/workspace", dest)
	if !strings.Contains(all, "skipped") || !strings.Contains(all, "evil") {
		t.Errorf("cp of the workspace does not report the links it left out:\n%s", all)
	}
	for name, want := range map[string]string{"workspace/orig.txt": "orig\nedited\n", "workspace/sub/inner.txt": "inner\n", "workspace/good": "inner\n"} {
		if b, err := os.ReadFile(filepath.Join(dest, name)); err != nil || string(b) != want {
			t.Errorf("%s copied out: %q %v, want %q", name, b, err, want)
		}
	}
	for _, name := range []string{"workspace/evil", "workspace/evil2"} {
		if _, err := os.Lstat(filepath.Join(dest, name)); err == nil {
			t.Errorf("%s (a link out of the workspace) was copied", name)
		}
	}
	if _, _, code := e.bottle(nil, "cp", id+":evil/passwd", filepath.Join(dest, "bad")); code == 0 {
		t.Error("cp of evil/passwd followed the agent's link to /etc")
	}
	if out := e.must("cp", id+":evil2", filepath.Join(dest, "bad")); !strings.Contains(out, "skipped: evil2 (link to "+outside) {
		t.Errorf("cp of a link out of the workspace does not say it left it out:\n%s", out)
	}
	if _, err := os.Lstat(filepath.Join(dest, "bad")); err == nil {
		t.Error("cp through a link out of the workspace made something")
	}
	for _, bad := range []string{id + ":../../etc/passwd", id + ":/etc/passwd", id + ":/workspace/../etc"} {
		if _, errOut, code := e.bottle(nil, "cp", bad, filepath.Join(dest, "x")); code != 2 {
			t.Errorf("cp %s: exit %d (%s), want 2 (refused)", bad, code, errOut)
		}
	}

	// In: a file into the copy, owned by the copy's owner (the agent), which edits it on
	// resume; nothing goes through the agent's link to the host directory.
	in := filepath.Join(t.TempDir(), "in.txt")
	if err := os.WriteFile(in, []byte("from host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.must("cp", in, id+":/workspace")
	if uid, gid := ownerOf(t, filepath.Join(copyDir, "in.txt")); uid != 1000 || gid != 1000 {
		t.Errorf("a file copied in belongs to %d:%d, want the agent's 1000:1000", uid, gid)
	}
	for _, bad := range []string{id + ":evil2/planted", id + ":evil2"} {
		if _, _, code := e.bottle(nil, "cp", in, bad); code == 0 {
			t.Errorf("cp into %s succeeded", bad)
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("cp wrote through the agent's link into %s: %v", outside, ents)
	}
	if out := e.must("resume", id); !strings.Contains(out, "in-edited") {
		t.Errorf("the agent could not edit the file copied in: %q", out)
	}

	_, errOut, code = e.bottle(nil, "rm", id)
	if code != 0 || !strings.Contains(errOut, "workspace copy") || !strings.Contains(errOut, copyDir) {
		t.Errorf("rm: exit %d, stderr %q; want it to say the copy %s goes", code, errOut, copyDir)
	}
	if _, err := os.Stat(copyDir); err == nil {
		t.Error("rm left the workspace copy")
	}
	e.assertNothingLeft(id)
}

// TestAgentCannotPlantSetIDFiles: an agent running as the owner of a root-owned
// workspace (root, without capabilities) tries every way to give a file there the
// set-user-ID or set-group-ID bit, by system call and with busybox chmod. Each is
// refused and no host file carries the bits; the control (a plain chmod) works. Without
// the refusal the host would hold a set-user-ID-root file the agent wrote.
func TestAgentCannotPlantSetIDFiles(t *testing.T) {
	e := newEnv(t)
	e.writeManifest("setid")
	ws := t.TempDir()
	if err := os.Chown(ws, 0, 0); err != nil {
		t.Fatal(err)
	}
	cmd := e.command(nil, "start", "--detach", "setid", "--", "/bin/sleep", "600")
	cmd.Dir = ws
	if out, errOut, code := runCmd(t, cmd); code != 0 {
		t.Fatalf("start: exit %d\n%s\n%s", code, out, errOut)
	}
	id := e.identityOf("setid")
	defer e.must("rm", "--force", id)
	out := e.probe(id, "setid", "/workspace")
	for _, line := range strings.Split(out, "\n") {
		what, verdict, _ := strings.Cut(line, " ")
		want := "REFUSED"
		if what == "chmod-0755" {
			want = "DONE"
		}
		if !strings.HasPrefix(verdict, want) {
			t.Errorf("%s: %s, want %s", what, verdict, want)
		}
	}
	if !strings.Contains(out, "mkdir-2755") {
		t.Fatalf("the probe did not run every try:\n%s", out)
	}
	for _, mode := range []string{"u+s", "g+s", "4755"} {
		if _, _, code := e.bottle(nil, "exec", id, "--", "chmod", mode, "/workspace/setid-chmod"); code == 0 {
			t.Errorf("busybox chmod %s succeeded", mode)
		}
	}
	err := filepath.Walk(ws, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
			t.Errorf("%s carries set-ID bits on the host: %v", p, info.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(filepath.Join(ws, "setid-chmod")); err != nil || info.Mode().Perm() != 0o755 {
		t.Errorf("control: the plain chmod did not reach the host: %v %v", info, err)
	}
}
