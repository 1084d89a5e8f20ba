package gitgate

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// packRepo builds a repository whose commits have long, near-identical messages, so
// pack-objects stores commits as deltas of each other, plus a merge.
func packRepo(t *testing.T) (*gitHarness, string) {
	h := newGitHarness(t)
	dir := filepath.Join(t.TempDir(), "r")
	h.run("", "init", "-q", dir)
	long := strings.Repeat("a long commit message body that repeats so commits delta well\n", 40)
	for i := 0; i < 12; i++ {
		h.commit(dir, "f.txt", strings.Repeat("line\n", 200)+strings.Repeat("x", i)+"\n")
		h.run(dir, "commit", "-q", "--amend", "-m", "commit "+string(rune('a'+i))+"\n\n"+long)
	}
	h.run(dir, "checkout", "-q", "-b", "side", "HEAD~3")
	h.commit(dir, "side.txt", "side\n")
	h.run(dir, "checkout", "-q", "main")
	h.run(dir, "merge", "-q", "--no-edit", "side")
	return h, dir
}

// packObjects runs git pack-objects with revs on stdin and returns the pack.
func packObjects(t *testing.T, h *gitHarness, dir, revs string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(h.git, append([]string{"pack-objects", "--stdout", "--revs", "--no-reuse-delta", "--window=50", "-q"}, args...)...)
	cmd.Dir, cmd.Env = dir, h.env
	cmd.Stdin = strings.NewReader(revs)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pack-objects: %v: %s", err, stderr.String())
	}
	return out
}

// wantParents is git's own view: commit -> parents, for revs.
func wantParents(t *testing.T, h *gitHarness, dir string, revs ...string) map[string][]string {
	m := map[string][]string{}
	for _, line := range strings.Split(h.run(dir, append([]string{"rev-list", "--parents"}, revs...)...), "\n") {
		f := strings.Fields(line)
		m[f[0]] = f[1:]
	}
	return m
}

func TestReadPackCommits(t *testing.T) {
	h, dir := packRepo(t)
	head := h.run(dir, "rev-parse", "HEAD")
	base := h.run(dir, "rev-parse", "HEAD~1~5") // on main, before the last commits
	for name, tc := range map[string]struct {
		revs string
		args []string
		want map[string][]string
	}{
		"ofs-delta full":  {"HEAD\n", []string{"--delta-base-offset"}, wantParents(t, h, dir, "HEAD")},
		"ref-delta full":  {"HEAD\n", nil, wantParents(t, h, dir, "HEAD")},
		"thin ofs-delta":  {"HEAD\n^" + base + "\n", []string{"--thin", "--delta-base-offset"}, wantParents(t, h, dir, "HEAD", "^"+base)},
		"thin ref-delta":  {"HEAD\n^" + base + "\n", []string{"--thin"}, wantParents(t, h, dir, "HEAD", "^"+base)},
		"empty (no news)": {"HEAD\n^HEAD\n", nil, map[string][]string{}},
	} {
		t.Run(name, func(t *testing.T) {
			pack := packObjects(t, h, dir, tc.revs, tc.args...)
			g, err := readPackCommits(bytes.NewReader(pack), 20)
			if err != nil {
				t.Fatal(err)
			}
			if len(g.parents) != len(tc.want) {
				t.Fatalf("pack has %d commits, git says %d", len(g.parents), len(tc.want))
			}
			for c, ps := range tc.want {
				got, ok := g.parents[c]
				if !ok || strings.Join(got, " ") != strings.Join(ps, " ") {
					t.Fatalf("commit %s: parents %v, want %v (found %v)", c, got, ps, ok)
				}
			}
			if len(tc.want) > 0 {
				if !g.provesFastForward(base, head) {
					t.Error("HEAD does not descend from its ancestor")
				}
				if g.provesFastForward(head, base) {
					t.Error("ancestor proven to descend from HEAD")
				}
			}
		})
	}
	// The packs above must exercise deltified commits, or the test proves little.
	pack := packObjects(t, h, dir, "HEAD\n", "--delta-base-offset")
	idx := filepath.Join(t.TempDir(), "p.pack")
	cmd := exec.Command(h.git, "index-pack", "--stdin", idx)
	cmd.Dir, cmd.Env = dir, h.env
	cmd.Stdin = bytes.NewReader(pack)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("index-pack: %v\n%s", err, out)
	}
	vp := exec.Command(h.git, "verify-pack", "-v", strings.TrimSuffix(idx, ".pack")+".idx")
	vp.Env = h.env
	out, err := vp.Output()
	if err != nil {
		t.Fatal(err)
	}
	deltaCommits := 0
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 7 && f[1] == "commit" {
			deltaCommits++
		}
	}
	if deltaCommits == 0 {
		t.Fatalf("no deltified commit in the test pack:\n%s", out)
	}
}

func TestReadPackCommitsRejectsGarbage(t *testing.T) {
	for name, data := range map[string][]byte{
		"empty":       nil,
		"bad magic":   []byte("KCAP\x00\x00\x00\x02\x00\x00\x00\x01"),
		"bad version": []byte("PACK\x00\x00\x00\x09\x00\x00\x00\x01"),
		"truncated":   []byte("PACK\x00\x00\x00\x02\x00\x00\x00\x01\x95"),
	} {
		if _, err := readPackCommits(bytes.NewReader(data), 20); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestProvesFastForward(t *testing.T) {
	// A <- B <- C (in pack: B, C); D off A (in pack); M merges C and X (X upstream).
	g := &commitGraph{parents: map[string][]string{
		"B": {"A"}, "C": {"B"}, "D": {"A"}, "M": {"X", "C"},
	}}
	for _, tc := range []struct {
		old, new string
		want     bool
	}{
		{"A", "C", true},
		{"B", "C", true},
		{"A", "M", true},  // through the second parent
		{"C", "D", false}, // sideways
		{"C", "B", false}, // rewind
		{"X", "M", true},
		{"A", "A", true}, // no-op update
		{"Q", "Z", false},
		{"A", "X", false}, // new commit not in the pack: not provable (documented limit)
	} {
		if got := g.provesFastForward(tc.old, tc.new); got != tc.want {
			t.Errorf("provesFastForward(%s, %s) = %v, want %v", tc.old, tc.new, got, tc.want)
		}
	}
}

func TestApplyDeltaRejectsBadInput(t *testing.T) {
	base := []byte("hello world")
	// src size 11, dst size 5, copy offset 0 size 5.
	good := []byte{11, 5, 0x90, 5}
	if out, err := applyDelta(base, good); err != nil || string(out) != "hello" {
		t.Fatalf("applyDelta = %q, %v", out, err)
	}
	for name, d := range map[string][]byte{
		"wrong base size": {12, 5, 0x90, 5},
		"copy past base":  {11, 5, 0x91, 10, 5},
		"short result":    {11, 6, 0x90, 5},
		"reserved op":     {11, 5, 0},
		"insert past end": {11, 5, 5, 'a'},
	} {
		if _, err := applyDelta(base, d); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestCommitParents: parents are the "parent" lines right after "tree", as git reads
// them; every other shape is refused.
func TestCommitParents(t *testing.T) {
	tree, p1, p2 := strings.Repeat("1", 40), strings.Repeat("a", 40), strings.Repeat("b", 40)
	who := "author A <a@x> 1700000000 +0000\ncommitter A <a@x> 1700000000 +0000\n"
	for _, tc := range []struct {
		name, data string
		want       string // parents joined by spaces; "error" when refused
	}{
		{"root", "tree " + tree + "\n" + who + "\nmsg\n", ""},
		{"one parent", "tree " + tree + "\nparent " + p1 + "\n" + who + "\nmsg\n", p1},
		{"merge", "tree " + tree + "\nparent " + p1 + "\nparent " + p2 + "\n" + who + "\nmsg\n", p1 + " " + p2},
		{"signed, continuation mentions parent", "tree " + tree + "\nparent " + p1 + "\n" + who + "gpgsig -----BEGIN-----\n parent " + p2 + "\n -----END-----\n\nmsg\n", p1},
		{"empty message", "tree " + tree + "\n" + who + "\n", ""},
		{"late parent", "tree " + tree + "\nparent " + p1 + "\n" + who + "parent " + p2 + "\n\nmsg\n", "error"},
		{"late parent, root", "tree " + tree + "\n" + who + "parent " + p2 + "\n\nmsg\n", "error"},
		{"parent between author and committer", "tree " + tree + "\nauthor A <a@x> 1 +0000\nparent " + p1 + "\ncommitter A <a@x> 1 +0000\n\nm\n", "error"},
		{"second tree", "tree " + tree + "\ntree " + tree + "\n" + who + "\nmsg\n", "error"},
		{"late tree", "tree " + tree + "\n" + who + "tree " + tree + "\n\nmsg\n", "error"},
		{"no tree", "parent " + p1 + "\n" + who + "\nmsg\n", "error"},
		{"upper-case parent", "tree " + tree + "\nparent " + strings.ToUpper(p1) + "\n" + who + "\nmsg\n", "error"},
		{"short parent", "tree " + tree + "\nparent " + p1[:39] + "\n" + who + "\nmsg\n", "error"},
		{"sha256 id in a sha1 push", "tree " + tree + "\nparent " + strings.Repeat("a", 64) + "\n" + who + "\nmsg\n", "error"},
		{"CRLF", "tree " + tree + "\r\nparent " + p1 + "\r\n" + who + "\nmsg\n", "error"},
		{"no author", "tree " + tree + "\nparent " + p1 + "\ncommitter A <a@x> 1 +0000\n\nmsg\n", "error"},
		{"second committer", "tree " + tree + "\n" + who + "committer B <b@x> 1 +0000\n\nmsg\n", "error"},
		{"NUL in header", "tree " + tree + "\n" + who + "x \x00\n\nmsg\n", "error"},
		{"no blank line", "tree " + tree + "\n" + who, "error"},
	} {
		got, err := commitParents([]byte(tc.data), 20)
		switch {
		case tc.want == "error" && err == nil:
			t.Errorf("%s: accepted with parents %v", tc.name, got)
		case tc.want != "error" && (err != nil || strings.Join(got, " ") != tc.want):
			t.Errorf("%s: parents %v, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}
