package protect

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseConfigAndDangerous(t *testing.T) {
	conf := `# comment
[core]
	repositoryformatversion = 0
	bare = false
	hooksPath = "/tmp/evil" ; trailing comment
	FSMonitor = touch\
 /tmp/x
[remote "origin"]
	url = https://example.invalid/repo.git
	uploadpack = evil
[filter "lfs"]
	smudge = git-lfs smudge -- %f
[diff "bin"] textconv = hexdump
[includeIf "gitdir:~/w/"]
	path = ~/.evil
[alias]
	st = status
	x = "!sh -c 'evil'"
[url "https://evil.invalid/"]
	insteadOf = https://github.com/
[Core.Sub]
	editor
[user]
	name = "A \"quoted\" name"
`
	entries, err := ParseConfig(strings.NewReader(conf))
	if err != nil {
		t.Fatal(err)
	}
	var dangerous []string
	values := map[string]string{}
	for _, e := range entries {
		values[e.Key()] = e.Value
		if Dangerous(e) {
			dangerous = append(dangerous, e.Key())
		}
	}
	sort.Strings(dangerous)
	want := []string{"alias.x", "core.fsmonitor", "core.hookspath", "core.sub.editor", "diff.bin.textconv", "filter.lfs.smudge", "includeif.gitdir:~/w/.path", "remote.origin.uploadpack", "url.https://evil.invalid/.insteadof"}
	if strings.Join(dangerous, " ") != strings.Join(want, " ") {
		t.Errorf("dangerous keys\n%v\nwant\n%v", dangerous, want)
	}
	for k, v := range map[string]string{"core.hookspath": "/tmp/evil", "core.fsmonitor": "touch /tmp/x", "user.name": `A "quoted" name`, "core.sub.editor": "true"} {
		if values[k] != v {
			t.Errorf("%s = %q, want %q", k, values[k], v)
		}
	}
	if _, err := ParseConfig(strings.NewReader("[core\nx = 1\n")); err == nil {
		t.Error("an unterminated header parsed")
	}
}

// TestScanAppeared: what an agent adds to a copy (a hook, a changed hook, a dangerous
// key, a nested repository's hook, a git link) is found; what the original had is not.
func TestScanAppeared(t *testing.T) {
	orig := mkTree(t, ".git/hooks/pre-commit.sample", ".git/hooks/pre-push", ".git/objects/ab/cd", "src/a.go")
	write(t, orig, ".git/config", "[core]\n\tbare = false\n[remote \"origin\"]\n\turl = https://example.invalid/r.git\n")
	cp := t.TempDir()
	copyTree(t, orig, cp)
	write(t, cp, ".git/hooks/post-checkout", "#!/bin/sh\nevil\n")
	write(t, cp, ".git/hooks/pre-push", "changed")
	write(t, cp, ".git/config", "[core]\n\tbare = false\n\tfsmonitor = evil\n[remote \"origin\"]\n\turl = https://example.invalid/r.git\n")
	write(t, cp, "vendor/lib/.git/hooks/post-merge", "evil")
	write(t, cp, "vendor/lib/.git/HEAD", "ref: refs/heads/main\n")
	write(t, cp, "sub/.git", "gitdir: ../vendor/lib/.git\n")
	write(t, cp, ".git/objects/ab/hooks/x", "not a hook: object store")

	scan := func(dir string) []Finding { return scanDir(t, dir) }
	var got []string
	for _, f := range Appeared(scan(orig), scan(cp)) {
		got = append(got, f.Path+" "+strings.Fields(f.What)[0])
	}
	sort.Strings(got)
	want := []string{".git/config config", ".git/hooks/post-checkout hook", ".git/hooks/pre-push hook", "sub/.git git", "vendor/lib/.git/hooks/post-merge hook"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("appeared:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if a := Appeared(scan(orig), scan(orig)); len(a) != 0 {
		t.Errorf("an unchanged tree has findings that appeared: %v", a)
	}
}

func write(t *testing.T, dir, rel, content string) {
	t.Helper()
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	if err := os.CopyFS(to, os.DirFS(from)); err != nil {
		t.Fatal(err)
	}
}

// TestScannerNotFooled: tricks a hostile review used to hide a key from the scanner: a
// comment line ending in a backslash (git does not continue comments), keys that run
// programs, and a config padded past the size limit.
func TestScannerNotFooled(t *testing.T) {
	conf := "[core]\n# x \\\n\tfsmonitor = \"cmd\"\n[gpg \"ssh\"]\n\tdefaultKeyCommand = evil\n[interactive]\n\tdiffFilter = evil\n" +
		"[trailer \"x\"]\n\tcommand = evil\n[sendemail]\n\tsmtpServer = /tmp/evil\n[protocol \"ext\"]\n\tallow = always\n[core]\n\talternateRefsCommand = evil\n"
	entries, err := ParseConfig(strings.NewReader(conf))
	if err != nil {
		t.Fatal(err)
	}
	var dangerous []string
	for _, e := range entries {
		if Dangerous(e) {
			dangerous = append(dangerous, e.Key())
		}
	}
	sort.Strings(dangerous)
	want := []string{"core.alternaterefscommand", "core.fsmonitor", "gpg.ssh.defaultkeycommand", "interactive.difffilter", "protocol.ext.allow", "sendemail.smtpserver", "trailer.x.command"}
	if strings.Join(dangerous, " ") != strings.Join(want, " ") {
		t.Errorf("dangerous keys\n%v\nwant\n%v", dangerous, want)
	}

	dir := t.TempDir()
	padded := "[core]\n" + strings.Repeat("# padding\n", maxConfigSize/10+1) + "\tfsmonitor = evil\n"
	if err := os.WriteFile(filepath.Join(dir, "config"), []byte(padded), 0o644); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	found, err := newScanner(root).scanConfig("config")
	if err != nil || len(found) != 1 || !strings.Contains(found[0].What, "too large to scan") {
		t.Errorf("a padded config: %+v %v", found, err)
	}
}

// TestScanGitDirRedirects: a commondir file in a git dir and a bare-repository layout
// outside one are found (git reads config and hooks from where they lead).
func TestScanGitDirRedirects(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{".git/hooks", "evil/objects", "evil/refs", "nested/objects"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for f, c := range map[string]string{".git/commondir": "../evil\n", "evil/HEAD": "ref: refs/heads/main\n", "evil/config": "[core]\n\tfsmonitor = x\n", "nested/HEAD": "x\n"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	found, err := Scan(root, ".")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range found {
		got = append(got, f.String())
	}
	all := strings.Join(got, "\n")
	for _, want := range []string{".git/commondir: git dir link (../evil)", "evil/HEAD: bare repository layout", `evil/config: config core.fsmonitor = "x"`} {
		if !strings.Contains(all, want) {
			t.Errorf("scan lacks %q:\n%s", want, all)
		}
	}
	if strings.Contains(all, "nested/HEAD") {
		t.Errorf("a HEAD without refs/ is reported:\n%s", all)
	}
}

// TestScanGitlinksAndBounds: a gitlink the agent adds to the index is new (its config
// too), the ones the repository had are not, bottle's own commondir is no finding, and
// a tree deeper than the bound stops the scan with an error instead of going on.
func TestScanGitlinksAndBounds(t *testing.T) {
	orig := t.TempDir()
	write(t, orig, ".git/HEAD", "ref: refs/heads/main\n")
	write(t, orig, ".git/commondir", ".\n")
	if err := os.WriteFile(filepath.Join(orig, ".git/index"), gitIndex(t, "sha1", 2, "vendor/known"), 0o644); err != nil {
		t.Fatal(err)
	}
	cp := t.TempDir()
	copyTree(t, orig, cp)
	if err := os.WriteFile(filepath.Join(cp, ".git/index"), gitIndex(t, "sha1", 4, "vendor/known", "sub"), 0o644); err != nil {
		t.Fatal(err)
	}
	write(t, cp, "sub/.git/config", "[core]\n\tfsmonitor = evil\n")
	write(t, cp, "sub/.git/HEAD", "ref: refs/heads/main\n")
	write(t, cp, "notes/index", "DIRC but not in a git dir")
	scan := func(dir string) []Finding { return scanDir(t, dir) }
	var got []string
	for _, f := range Appeared(scan(orig), scan(cp)) {
		got = append(got, f.String())
	}
	want := []string{`.git/index: gitlink "sub" (git goes into it as a submodule)`, `sub/.git/config: config core.fsmonitor = "evil"`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("appeared:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, f := range scan(orig) {
		if f.Path == ".git/commondir" {
			t.Errorf("bottle's own commondir is a finding: %v", f)
		}
	}
	write(t, cp, ".git/HEAD", "garbage\n")
	if f := Appeared(scanDir(t, orig), scanDir(t, cp)); len(f) != 3 || f[0].Path != ".git/HEAD" || !strings.Contains(f[0].What, "invalid HEAD") {
		t.Errorf("a broken .git/HEAD: %v, want it found besides the gitlink and its config", f)
	}
	for _, ok := range []string{"ref: refs/heads/main", strings.Repeat("a1", 20), strings.Repeat("0f", 32)} {
		if !validHead(ok) {
			t.Errorf("validHead(%q) = false", ok)
		}
	}
	write(t, cp, ".git/HEAD", "ref: refs/heads/main\n")
	write(t, cp, ".git/index", "DIRC\x00\x00\x00\x02\xff\xff\xff\xff")
	if f := Appeared(scan(orig), scan(cp)); len(f) == 0 || !strings.Contains(f[0].What, "cannot scan") {
		t.Errorf("a broken index: %v, want a finding that it cannot be scanned", f)
	}

	deep := t.TempDir()
	if err := os.MkdirAll(filepath.Join(deep, strings.Repeat("d/", maxScanDepth+2)), 0o755); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(deep)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if _, err := Scan(root, "."); err == nil || !strings.Contains(err.Error(), "deeper than") {
		t.Errorf("a tree deeper than %d: err %v", maxScanDepth, err)
	}
}

// scanDir is Scan of all of dir.
func scanDir(t *testing.T, dir string) []Finding {
	t.Helper()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	f, err := Scan(root, ".")
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestScanDoesNotBlock: FIFOs where the scan reads (a nested repository's hook, config,
// .git link, HEAD, index, commondir) neither hang it nor count as harmless.
func TestScanDoesNotBlock(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"a/.git/hooks", "b", "c/.git"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"a/.git/hooks/post-checkout", "a/.git/config", "b/.git", "c/.git/HEAD", "c/.git/index", "c/.git/commondir"} {
		if err := unix.Mkfifo(filepath.Join(dir, f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan []Finding, 1)
	go func() { done <- scanDir(t, dir) }()
	select {
	case found := <-done:
		var got []string
		for _, f := range found {
			got = append(got, f.Path)
		}
		all := strings.Join(got, " ")
		for _, want := range []string{"a/.git/hooks/post-checkout", "b/.git", "c/.git/HEAD", "c/.git/commondir"} {
			if !strings.Contains(all, want) {
				t.Errorf("findings %v lack the FIFO %s", got, want)
			}
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the scan blocked on a FIFO")
	}
}

// TestFindingPrintable: a path or value the agent chose reaches the person's terminal
// with its control characters escaped.
func TestFindingPrintable(t *testing.T) {
	f := Finding{Path: "sub\x1b[2J/.git/config", What: "config core.pager = \"x\x07\""}
	got := f.String()
	if strings.ContainsAny(got, "\x1b\x07") || !strings.Contains(got, `sub\x1b[2J/.git/config`) {
		t.Errorf("String() = %q", got)
	}
	if plain := (Finding{Path: "a/.git/hooks/x", What: "hook"}).String(); plain != "a/.git/hooks/x: hook" {
		t.Errorf("a plain finding: %q", plain)
	}
}
