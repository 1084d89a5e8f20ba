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
)

// TestSpecsAsBeforeOCI compares every container's spec and every stage file of four
// plans with what bottle planned before its specs were built with containerd's pkg/oci
// (testdata/pre-oci-specs.json, written by the hand-made spec code). The only accepted
// differences: the process lists its primary group among its additional groups (as
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
			diff(t, key, old, now)
		}
		var oldFiles map[string]string
		if err := json.Unmarshal(before[tc.name+"/stage"], &oldFiles); err != nil {
			t.Fatal(err)
		}
		if len(oldFiles) != len(p.StageFiles) {
			t.Errorf("%s: %d stage files, before %d", tc.name, len(p.StageFiles), len(oldFiles))
		}
		for _, f := range p.StageFiles {
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
