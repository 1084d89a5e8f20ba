package plan

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestAgentUser: the agent runs as the workspace's owner (root too, then with a home
// root can write and Claude Code's sandbox switch), as the manifest's user when set
// (warned about when it cannot write the workspace), and as 1000:1000 when the owner is
// unknown; a --cwd copy is never warned about (the runtime gives it to the agent).
func TestAgentUser(t *testing.T) {
	m := load(t, filepath.Join("../../examples", "claude.toml"))
	env := map[string]string{"CLAUDE_CODE_OAUTH_TOKEN": "x"}
	for _, tc := range []struct {
		name     string
		user     string
		dir      DirInfo
		copy     bool
		uid, gid uint32
		home     string // "" when bottle leaves the image's HOME
		warn     string // a substring of the one warning; "" for none
	}{
		{"root-owned checkout", "", DirInfo{Known: true, UID: 0, GID: 0, Perm: 0o755}, false, 0, 0, "/root", ""},
		{"user-owned", "", DirInfo{Known: true, UID: 1234, GID: 1234, Perm: 0o755}, false, 1234, 1234, "", ""},
		{"owner unknown", "", DirInfo{}, false, 1000, 1000, "", ""},
		{"manifest user cannot write", "1000:1000", DirInfo{Known: true, UID: 0, GID: 0, Perm: 0o755}, false, 1000, 1000, "",
			"cannot write /workspace (/home/me/project: owner 0:0, mode 0755); fix: drop `user` from agent claude"},
		{"manifest user via group", "1000:50", DirInfo{Known: true, UID: 0, GID: 50, Perm: 0o775}, false, 1000, 50, "", ""},
		{"manifest user, copy", "1000:1000", DirInfo{Known: true, UID: 0, GID: 0, Perm: 0o755}, true, 1000, 1000, "", ""},
		{"owner without write bit", "", DirInfo{Known: true, UID: 1234, GID: 1234, Perm: 0o555}, false, 1234, 1234, "", "fix: `chmod u+w /home/me/project`"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m.Agents["claude"].User = tc.user
			in := input(m, "claude", env)
			in.WorkspaceDir, in.CopyWorkspace = tc.dir, tc.copy
			p, err := Build(in)
			if err != nil {
				t.Fatal(err)
			}
			u := p.Container("agent").Spec.Process.User
			if u.UID != tc.uid || u.GID != tc.gid {
				t.Errorf("agent user %d:%d, want %d:%d", u.UID, u.GID, tc.uid, tc.gid)
			}
			e := envOf(p.Container("agent"))
			if e["HOME"] != tc.home {
				t.Errorf("HOME %q, want %q", e["HOME"], tc.home)
			}
			if sandbox := e["IS_SANDBOX"] == "1"; sandbox != (tc.uid == 0) {
				t.Errorf("IS_SANDBOX=1 set %v, want it exactly for root", sandbox)
			}
			switch {
			case tc.warn == "" && len(p.Warnings) != 0:
				t.Errorf("unexpected warnings: %q", p.Warnings)
			case tc.warn != "" && (len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0], tc.warn)):
				t.Errorf("warnings %q, want one containing %q", p.Warnings, tc.warn)
			case tc.warn != "" && !strings.Contains(p.Summary(), "warning: "+p.Warnings[0]):
				t.Errorf("the summary does not show the warning:\n%s", p.Summary())
			}
		})
	}
}

func TestCanWrite(t *testing.T) {
	dir := DirInfo{Known: true, UID: 10, GID: 20, Perm: 0o750}
	for _, tc := range []struct {
		uid, gid uint32
		perm     uint32
		want     bool
	}{
		{10, 99, 0o750, true}, {10, 99, 0o550, false}, {11, 20, 0o750, false}, {11, 20, 0o770, true},
		{11, 21, 0o777, true}, {11, 21, 0o775, false}, {0, 0, 0o777, true}, {0, 0, 0o775, false},
		{10, 20, 0o070, false}, // the owner's bits decide for the owner, as in the kernel
	} {
		dir.Perm = tc.perm
		if got := CanWrite(dir, tc.uid, tc.gid); got != tc.want {
			t.Errorf("CanWrite(owner 10:20 mode %04o, %d:%d) = %v, want %v", tc.perm, tc.uid, tc.gid, got, tc.want)
		}
	}
}
