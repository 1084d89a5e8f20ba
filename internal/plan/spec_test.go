package plan

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/bottle-dev/bottle/internal/names"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// stripSidecarGoEnv checks that a sidecar's process env has the Go runtime settings
// (newer than the baseline) and removes them.
func stripSidecarGoEnv(t *testing.T, key string, spec map[string]any) {
	t.Helper()
	process := spec["process"].(map[string]any)
	var rest []any
	found := 0
	for _, kv := range process["env"].([]any) {
		k, v, _ := strings.Cut(kv.(string), "=")
		if want, ok := sidecarGoEnv[k]; ok {
			if v != want {
				t.Errorf("%s: %s=%s, want %s", key, k, v, want)
			}
			found++
			continue
		}
		rest = append(rest, kv)
	}
	if found != len(sidecarGoEnv) {
		t.Errorf("%s: %d of the %d Go runtime settings in the env", key, found, len(sidecarGoEnv))
	}
	if process["env"] = rest; rest == nil {
		delete(process, "env")
	}
}

// TestSpecsAsBeforeOCI compares every container's spec and every stage file of four
// plans with what bottle planned before its specs were built with containerd's pkg/oci
// (testdata/pre-oci-specs.json, written by the hand-made spec code). The only accepted
// differences (besides the agent's later seccomp profile): the process lists its primary group among its additional groups (as
// containerd's WithUIDGID always does) and /proc/interrupts is masked too (containerd's
// default). JSON stage files are compared as JSON: their field order follows the
// sidecars' own config types now.
func TestSpecsAsBeforeOCI(t *testing.T) {
	data, err := os.ReadFile("testdata/pre-oci-specs.json")
	if err != nil {
		t.Fatal(err)
	}
	var before map[string]json.RawMessage
	if err := json.Unmarshal(data, &before); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"CLAUDE_CODE_OAUTH_TOKEN": "sk-golden-oauth", "MY_CLAUDE_OAUTH": "sk-golden-2",
		"GITHUB_TOKEN": "ghp-golden", "GITHUB_USER": "octo-golden-user", "UPSTREAM_GIT_TOKEN": "upstream-golden",
		"file:/home/me/.ssh/bottle_ed25519": "-----BEGIN OPENSSH PRIVATE KEY-----golden-key-----",
	}
	none := func(*Input) {}
	seen := 0
	for _, tc := range []struct {
		name, file, agent string
		mod               func(*Input)
	}{
		{"claude", "claude.toml", "claude", func(in *Input) {
			in.ExtraCA = "-----BEGIN CERTIFICATE-----x"
			in.WorkspaceDir = DirInfo{Known: true, UID: 1001, GID: 1002, Perm: 0o755}
		}},
		{"minimal", "minimal.toml", "shell", none},
		{"team", "team.toml", "coder", none},
		{"team-pipelock", "team.toml", "coder", func(in *Input) { in.PipelockPresent = true; in.Command = []string{"bash", "-l"} }},
	} {
		in := input(load(t, filepath.Join("../../examples", tc.file)), tc.agent, env)
		tc.mod(&in)
		p, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range p.Redacted().Containers {
			key := tc.name + "/" + c.Role
			seen++
			var old, now map[string]any
			if err := json.Unmarshal(before[key], &old); err != nil {
				t.Fatalf("%s: baseline: %v", key, err)
			}
			raw, _ := json.Marshal(c.Spec)
			if err := json.Unmarshal(raw, &now); err != nil {
				t.Fatal(err)
			}
			if c.AuditDir != "" { // newer than the baseline (TestAuditTrailMounts)
				stripAuditTrail(t, key, now)
			}
			user := now["process"].(map[string]any)["user"].(map[string]any)
			if got := fmt.Sprint(user["additionalGids"]); got != fmt.Sprintf("[%v]", user["gid"]) {
				t.Errorf("%s: additional groups %s, want only the primary group %v", key, got, user["gid"])
			}
			delete(user, "additionalGids")
			linux := now["linux"].(map[string]any)
			masked, oldMasked := strs(linux["maskedPaths"]), strs(old["linux"].(map[string]any)["maskedPaths"])
			if extra := slices.DeleteFunc(slices.Clone(masked), func(p string) bool { return slices.Contains(oldMasked, p) }); !slices.Equal(extra, []string{"/proc/interrupts"}) {
				t.Errorf("%s: masked paths beyond the old ones: %v", key, extra)
			}
			for _, p := range oldMasked {
				if !slices.Contains(masked, p) {
					t.Errorf("%s: %s no longer masked", key, p)
				}
			}
			linux["maskedPaths"] = old["linux"].(map[string]any)["maskedPaths"]
			// Newer than the baseline: the agent's seccomp profile against set-ID files
			// (TestAgentRefusesSetIDFiles checks it).
			if c.Role == names.RoleAgent {
				annotations := now["annotations"].(map[string]any)
				if linux["seccomp"] == nil || annotations[annotationOCISeccomp] != "true" {
					t.Errorf("%s: no seccomp profile in force", key)
				}
				delete(linux, "seccomp")
				delete(annotations, annotationOCISeccomp)
			}
			if c.Role != names.RoleAgent {
				stripSidecarGoEnv(t, key, now)
			}
			if strings.HasPrefix(tc.name, "team") {
				dropSupervise(t, key, c.Role, now)
			}
			diff(t, key, old, now)
		}
		var oldFiles map[string]string
		if err := json.Unmarshal(before[tc.name+"/stage"], &oldFiles); err != nil {
			t.Fatal(err)
		}
		if supervised := strings.HasPrefix(tc.name, "team"); supervised {
			oldFiles["supervise/config.json"], oldFiles["agent/managed-mcp.json"] = "", ""
			var filter map[string]any
			_ = json.Unmarshal([]byte(oldFiles["filter/filter.json"]), &filter)
			filter["changes_file"] = "/etc/bottle/changes/allowlist.json"
			data, _ := json.Marshal(filter)
			oldFiles["filter/filter.json"] = string(data)
			var gate map[string]any
			_ = json.Unmarshal([]byte(oldFiles["git-gate/config.json"]), &gate)
			gate["rules_file"] = "/etc/bottle/changes/git-rules.json"
			data, _ = json.Marshal(gate)
			oldFiles["git-gate/config.json"] = string(data)
		}
		if len(oldFiles) != len(p.StageFiles) {
			t.Errorf("%s: %d stage files, before %d", tc.name, len(p.StageFiles), len(oldFiles))
		}
		for _, f := range p.StageFiles {
			if f.Name == "supervise/config.json" || f.Name == "agent/managed-mcp.json" {
				continue // newer than the baseline: the supervise sidecar
			}
			old, ok := oldFiles[f.Name]
			switch {
			case !ok:
				t.Errorf("%s: new stage file %s", tc.name, f.Name)
			case strings.HasSuffix(f.Name, ".json"):
				var a, b any
				if json.Unmarshal([]byte(old), &a) != nil || json.Unmarshal([]byte(f.Content), &b) != nil {
					t.Fatalf("%s: %s is not JSON", tc.name, f.Name)
				}
				diff(t, tc.name+"/"+f.Name, a, b)
			case old != f.Content:
				t.Errorf("%s: stage file %s changed:\n%s\nbefore:\n%s", tc.name, f.Name, f.Content, old)
			}
		}
	}
	if containers := len(before) - 4; seen != containers {
		t.Errorf("compared %d containers, the baseline has %d", seen, containers)
	}
}

// dropSupervise removes from a spec what the supervise sidecar (newer than the
// baseline) adds, after checking it is there: its own config and directories, the
// filter's changes directory, the agent's managed MCP config and URL.
func dropSupervise(t *testing.T, key, role string, spec map[string]any) {
	t.Helper()
	added := map[string][]string{
		names.RoleAgent:     {ClaudeManagedMCP},
		names.RoleFilter:    {changesDir},
		names.RoleGitGate:   {changesDir},
		names.RoleSupervise: {"/etc/bottle/supervise.json", superviseProposals, superviseHost},
	}[role]
	var kept []any
	for _, m := range spec["mounts"].([]any) {
		dest := m.(map[string]any)["destination"].(string)
		if i := slices.Index(added, dest); i >= 0 {
			added = slices.Delete(added, i, i+1)
			continue
		}
		kept = append(kept, m)
	}
	if len(added) > 0 {
		t.Errorf("%s: supervise mounts missing: %v", key, added)
	}
	spec["mounts"] = kept
	proc := spec["process"].(map[string]any)
	switch role {
	case names.RoleAgent:
		env := proc["env"].([]any)
		if i := slices.Index(env, any("BOTTLE_SUPERVISE_URL="+SuperviseURL)); i < 0 {
			t.Errorf("%s: no BOTTLE_SUPERVISE_URL", key)
		} else {
			proc["env"] = slices.Delete(env, i, i+1)
		}
	case names.RoleSupervise:
		proc["args"] = proc["args"].([]any)[:3]
	}
}

func strs(v any) []string {
	var out []string
	for _, s := range v.([]any) {
		out = append(out, s.(string))
	}
	return out
}

// diff reports every path where two decoded JSON values differ.
func diff(t *testing.T, path string, a, b any) {
	t.Helper()
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if aok && bok {
		keys := map[string]bool{}
		for k := range am {
			keys[k] = true
		}
		for k := range bm {
			keys[k] = true
		}
		sorted := make([]string, 0, len(keys))
		for k := range keys {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		for _, k := range sorted {
			diff(t, path+"."+k, am[k], bm[k])
		}
		return
	}
	if !reflect.DeepEqual(a, b) {
		t.Errorf("%s: before %v, now %v", path, a, b)
	}
}

// TestAgentRefusesSetIDFiles checks the agent's seccomp profile: every call that gives a
// file a mode refuses the set-user-ID and set-group-ID bits (each combination), open
// calls only when they create, and runsc is told to apply the profile. The sidecars
// write no host files and get none.
func TestAgentRefusesSetIDFiles(t *testing.T) {
	p, err := Build(input(load(t, "../../examples/claude.toml"), "claude", map[string]string{"CLAUDE_CODE_OAUTH_TOKEN": "x"}))
	if err != nil {
		t.Fatal(err)
	}
	s := p.Container(names.RoleAgent).Spec
	if s.Annotations[annotationOCISeccomp] != "true" || s.Linux.Seccomp == nil || s.Linux.Seccomp.DefaultAction != specs.ActAllow {
		t.Fatalf("agent spec without its seccomp profile: %+v %v", s.Linux.Seccomp, s.Annotations)
	}
	refused := map[string][]uint64{} // call -> the set-ID values refused
	for _, r := range s.Linux.Seccomp.Syscalls {
		if r.Action != specs.ActErrno || r.ErrnoRet == nil {
			t.Errorf("rule %v does not refuse with an errno", r.Names)
			continue
		}
		for _, a := range r.Args {
			if a.Op == specs.OpMaskedEqual && a.Value == setIDBits {
				refused[r.Names[0]] = append(refused[r.Names[0]], a.ValueTwo)
			}
		}
		if r.Names[0] == "openat" && len(r.Args) != 2 {
			t.Errorf("openat rule %v does not depend on creating a file", r.Args)
		}
	}
	for _, c := range setIDCalls() {
		got := refused[c.name]
		slices.Sort(got)
		want := []uint64{0o2000, 0o4000, 0o6000}
		if c.open {
			want = []uint64{0o2000, 0o2000, 0o4000, 0o4000, 0o6000, 0o6000} // O_CREAT and O_TMPFILE
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s refuses set-ID values %o, want %o", c.name, got, want)
		}
	}
	for _, name := range []string{"fchmodat", "openat", "mkdirat"} {
		if _, ok := refused[name]; !ok {
			t.Errorf("%s is not covered", name)
		}
	}
	for _, c := range p.Containers {
		if c.Role != names.RoleAgent && c.Spec.Linux.Seccomp != nil {
			t.Errorf("%s got the agent's profile", c.Role)
		}
	}
}
