package protect

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestScanHardLinkFlood: the review's repro, a 1 MiB config of dangerous lines
// hard-linked into 400 repositories (4 MB on disk), took minutes and gigabytes and gave
// tens of millions of findings. Now each file is read once, a file gives at most
// maxFileFindings findings and one "...and N more", and a link to it one finding.
func TestScanHardLinkFlood(t *testing.T) {
	dir := t.TempDir()
	const links = 400
	write(t, dir, "d0/.git/config", "[core]\n"+strings.Repeat("pager=a\n", (maxConfigSize-7)/8))
	write(t, dir, "d0/.git/HEAD", "ref: refs/heads/main\n")
	for i := 1; i < links; i++ {
		write(t, dir, fmt.Sprintf("d%d/.git/HEAD", i), "ref: refs/heads/main\n")
		if err := os.Link(filepath.Join(dir, "d0/.git/config"), filepath.Join(dir, fmt.Sprintf("d%d/.git/config", i))); err != nil {
			t.Fatal(err)
		}
	}
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	t0 := time.Now()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	found, err := Scan(root, ".")
	took := time.Since(t0)
	runtime.ReadMemStats(&m1)
	alloc := (m1.TotalAlloc - m0.TotalAlloc) >> 20
	t.Logf("%d hard links: %s, %d findings, %d MiB allocated", links, took, len(found), alloc)
	if took > 5*time.Second || alloc > 256 {
		t.Errorf("the scan took %s and allocated %d MiB", took, alloc)
	}
	if err != nil {
		t.Fatal(err)
	}
	perFile := map[string]int{}
	for _, f := range found {
		perFile[f.Path]++
	}
	if n := perFile["d0/.git/config"]; n != maxFileFindings+1 || found[maxFileFindings].What != fmt.Sprintf("...and %d more", (maxConfigSize-7)/8-maxFileFindings) {
		t.Errorf("the first config gives %d findings, the last %v", n, found[maxFileFindings])
	}
	if len(found) != maxFileFindings+links {
		t.Errorf("%d findings, want %d", len(found), maxFileFindings+links)
	}
	for i := 1; i < links; i++ {
		p := fmt.Sprintf("d%d/.git/config", i)
		if perFile[p] != 1 {
			t.Errorf("%s: %d findings, want the one of a hard link", p, perFile[p])
		}
	}
	if !strings.Contains(findingsText(found), "d9/.git/config: hard link to d0/.git/config (") {
		t.Errorf("no hard link finding:\n%s", findingsText(found[:30]))
	}
}

// TestScanHardLinksReadOnce: a hook and an index hard-linked into many repositories are
// read once (the bytes the scan reads say so); each link is still found.
func TestScanHardLinksReadOnce(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "r0/.git/HEAD", "ref: refs/heads/main\n")
	write(t, dir, "r0/.git/hooks/pre-commit", "#!/bin/sh\n"+strings.Repeat("#\n", 1<<19))
	index := gitIndex(t, "sha1", 2, "sub")
	if err := os.WriteFile(filepath.Join(dir, "r0/.git/index"), index, 0o644); err != nil {
		t.Fatal(err)
	}
	const links = 20
	for i := 1; i < links; i++ {
		write(t, dir, fmt.Sprintf("r%d/.git/HEAD", i), "ref: refs/heads/main\n")
		mkdirs(t, dir, fmt.Sprintf("r%d/.git/hooks", i))
		for _, f := range []string{".git/hooks/pre-commit", ".git/index"} {
			if err := os.Link(filepath.Join(dir, "r0", f), filepath.Join(dir, fmt.Sprintf("r%d", i), f)); err != nil {
				t.Fatal(err)
			}
		}
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	s := newScanner(root)
	found, err := s.scan(".")
	if err != nil {
		t.Fatal(err)
	}
	if once := int64(1<<20 + 10 + len(index)); s.bytes != once {
		t.Errorf("the scan read %d bytes, want %d (each file once)", s.bytes, once)
	}
	hooks, digests := 0, map[string]bool{}
	for _, f := range found {
		if f.What == "hook" {
			hooks++
			digests[f.Digest] = true
		}
	}
	text := findingsText(found)
	if hooks != links || len(digests) != 1 || !strings.Contains(text, "r7/.git/index: hard link to r0/.git/index (1 findings there)") {
		t.Errorf("%d hooks with %d digests, want %d with one:\n%s", hooks, len(digests), links, text)
	}
}

// TestScanCaps: a scan stops, with what it found so far, past its findings, its bytes
// and its time, and checks its time at every entry, not every 1024.
func TestScanCaps(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, ".git/HEAD", "ref: refs/heads/main\n")
	for i := range maxScanFindings + 100 {
		write(t, dir, fmt.Sprintf(".git/hooks/h%04d", i), "#!/bin/sh\n")
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	found, err := Scan(root, ".")
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("more than %d findings", maxScanFindings)) || len(found) != maxScanFindings {
		t.Errorf("%d hooks: %d findings, err %v", maxScanFindings+100, len(found), err)
	}

	// A dir is read in chunks of dirChunk entries: all of them are seen.
	big := t.TempDir()
	write(t, big, ".git/HEAD", "ref: refs/heads/main\n")
	for i := range dirChunk + 100 {
		write(t, big, fmt.Sprintf(".git/hooks/h%04d.sample", i), "#!/bin/sh\n")
	}
	write(t, big, ".git/hooks/post-checkout", "#!/bin/sh\n")
	if found := scanDir(t, big); len(found) != 1 || found[0].Path != ".git/hooks/post-checkout" {
		t.Errorf("a hooks dir of %d entries: %v", dirChunk+101, found)
	}

	s := newScanner(root)
	s.timeLimit = time.Nanosecond
	if _, err := s.scan("."); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("a scan past its time on its first entries: err %v", err)
	}

	conf := t.TempDir()
	for i := range 4 {
		write(t, conf, fmt.Sprintf("r%d/.git/config", i), "[core]\n\tpager = x\n"+strings.Repeat("# pad\n", 1000))
		write(t, conf, fmt.Sprintf("r%d/.git/HEAD", i), "ref: refs/heads/main\n")
	}
	croot, err := os.OpenRoot(conf)
	if err != nil {
		t.Fatal(err)
	}
	defer croot.Close()
	s = newScanner(croot)
	s.budget = 15_000 // two configs and a half
	found, err = s.scan(".")
	if err == nil || !strings.Contains(err.Error(), "more than 15000 bytes read") || len(found) != 2 {
		t.Errorf("a scan past its byte budget: %d findings, err %v", len(found), err)
	}
}

// TestMoreDangerousKeys: keys that make git run a program, missing from the first list.
func TestMoreDangerousKeys(t *testing.T) {
	for _, e := range []ConfigEntry{
		{Section: "imap", Name: "tunnel", Value: "evil"},
		{Section: "guitool", Subsection: "x", Name: "cmd", Value: "evil"},
		{Section: "remote", Subsection: "origin", Name: "vcs", Value: "evil"},
	} {
		if !Dangerous(e) {
			t.Errorf("%s is not dangerous", e.Key())
		}
	}
}

// TestConfigFindingsHoldNoSecret: a URL's credentials in a url.*.insteadOf key or value
// and a credential helper's command are not in a finding, which goes to the terminal,
// the log and the audit trail.
func TestConfigFindingsHoldNoSecret(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, ".git"), 0o755); err != nil {
		t.Fatal(err)
	}
	config := "[url \"https://x-access-token:SECRET1@github.com/\"]\n\tinsteadOf = https://github.com/\n" +
		"[url \"https://example.test/\"]\n\tinsteadOf = https://bob:SECRET2@example.test/\n" +
		"[credential]\n\thelper = \"!f() { echo password=SECRET3; }; f\"\n"
	if err := os.WriteFile(filepath.Join(dir, ".git/config"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	found, _ := Scan(root, ".")
	var all []string
	for _, f := range found {
		all = append(all, f.Path+": "+f.What)
	}
	text := strings.Join(all, "\n")
	if strings.Contains(text, "SECRET") {
		t.Errorf("a finding holds a secret:\n%s", text)
	}
	if !strings.Contains(text, "https://<redacted>@github.com/") || !strings.Contains(text, "credential.helper") {
		t.Errorf("the entries are not reported, redacted:\n%s", text)
	}
}
