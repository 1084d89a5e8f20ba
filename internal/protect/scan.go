package protect

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
)

// Scan bounds: a hostile tree must not make a scan endless.
const (
	maxScanEntries = 200_000
	maxScanDepth   = 64
	maxScanTime    = 30 * time.Second
	maxConfigSize  = 1 << 20
)

// Finding is a hook, a dangerous git config key, or a git link file in a tree: each can
// make the next git command a person runs there execute code, or act elsewhere.
type Finding struct {
	// Path is relative to the scanned root.
	Path string `json:"path"`
	// What it is: "hook", "git link", or "config KEY = VALUE".
	What string `json:"what"`
	// Digest identifies a hook's or link's content, so a changed one counts as new.
	Digest string `json:"digest,omitempty"`
}

// String is the finding for a terminal: the path and what the agent wrote are the
// agent's, so anything not printable is escaped.
func (f Finding) String() string { return printable(f.Path) + ": " + printable(f.What) }

func printable(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) < 0 {
		return s
	}
	q := strconv.QuoteToASCII(s)
	return q[1 : len(q)-1]
}

// Scan lists the findings beneath rel ("." for all) of root, following no link and
// skipping object stores. It stops with an error after maxScanEntries entries, below
// maxScanDepth, or after maxScanTime.
func Scan(root *os.Root, rel string) ([]Finding, error) {
	var out []Finding
	n := 0
	t0 := time.Now()
	err := fs.WalkDir(root.FS(), rel, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == rel {
				return fs.SkipAll
			}
			return err
		}
		if n++; n > maxScanEntries {
			return fmt.Errorf("more than %d entries: scan stopped", maxScanEntries)
		}
		if n%1024 == 0 && time.Since(t0) > maxScanTime {
			return fmt.Errorf("longer than %s: scan stopped at %s", maxScanTime, p)
		}
		if strings.Count(p, "/") > maxScanDepth {
			return fmt.Errorf("deeper than %d: scan stopped at %s", maxScanDepth, p)
		}
		name := d.Name()
		if d.IsDir() {
			if name == "objects" && inGitDir(p) {
				return fs.SkipDir
			}
			return nil
		}
		switch {
		case name == ".git":
			out = append(out, Finding{Path: p, What: "git link (" + firstLine(root, p) + ")", Digest: digest(root, p, d)})
		case (name == "commondir" || name == "gitdir") && inGitDir(p):
			// git takes config and hooks from where these point (bottle's own commondir,
			// ".", points at the git dir itself).
			if line := firstLine(root, p); line != "." || name != "commondir" {
				out = append(out, Finding{Path: p, What: "git dir link (" + line + ")", Digest: digest(root, p, d)})
			}
		case name == "HEAD" && path.Base(path.Dir(p)) == ".git" && !validHead(firstLine(root, p)):
			// git then takes this .git for no repository and looks further: at a bare
			// layout beside it, or a repository above.
			out = append(out, Finding{Path: p, What: "invalid HEAD: git ignores this .git and looks for a repository further up", Digest: digest(root, p, d)})
		case name == "HEAD" && !inGitDir(p) && isBareLayout(root, path.Dir(p)):
			// A dir that looks like a bare repository: git uses it, and its config, when
			// the .git above it is missing or broken, or when git runs in it.
			out = append(out, Finding{Path: p, What: BareLayout, Digest: digest(root, p, d)})
			if conf := path.Join(path.Dir(p), "config"); isRegular(root, conf) {
				keys, err := scanConfig(root, conf)
				if err != nil {
					return err
				}
				out = append(out, keys...)
			}
		case inHooks(p):
			if !strings.HasSuffix(name, ".sample") {
				out = append(out, Finding{Path: p, What: "hook", Digest: digest(root, p, d)})
			}
		case name == "index" && inGitDir(p) && d.Type().IsRegular():
			// A gitlink makes the host's git status go into that dir as a submodule, and
			// run what its git dir configures.
			out = append(out, scanIndex(root, p)...)
		case isConfig(p) && d.Type().IsRegular():
			keys, err := scanConfig(root, p)
			if err != nil {
				return err
			}
			out = append(out, keys...)
		}
		return nil
	})
	return out, err
}

// BareLayout is the finding of a bare repository layout.
const BareLayout = "bare repository layout (HEAD, objects, refs)"

// Appeared lists the findings of after that before does not have (new or changed).
func Appeared(before, after []Finding) []Finding {
	had := map[Finding]bool{}
	for _, f := range before {
		had[f] = true
	}
	var out []Finding
	for _, f := range after {
		if !had[f] {
			out = append(out, f)
		}
	}
	return out
}

// isBareLayout reports whether dir holds objects/ and refs/ besides its HEAD.
func isBareLayout(root *os.Root, dir string) bool {
	for _, sub := range []string{"objects", "refs"} {
		fi, err := root.Lstat(path.Join(dir, sub))
		if err != nil || !fi.IsDir() {
			return false
		}
	}
	return true
}

// validHead reports whether line (a HEAD's first line) is what git takes: a symbolic
// ref into refs/, or an object name.
func validHead(line string) bool {
	if ref, ok := strings.CutPrefix(line, "ref:"); ok {
		return strings.HasPrefix(strings.TrimSpace(ref), "refs/")
	}
	if len(line) != 40 && len(line) != 64 {
		return false
	}
	for _, c := range line {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return false
		}
	}
	return true
}

func isRegular(root *os.Root, p string) bool {
	fi, err := root.Lstat(p)
	return err == nil && fi.Mode().IsRegular()
}

// inGitDir reports whether p lies inside a .git dir.
func inGitDir(p string) bool {
	return strings.HasPrefix(p, ".git/") || strings.Contains(p, "/.git/")
}

// inHooks reports whether p is directly in the hooks dir of a git dir (a repository's
// or a submodule's).
func inHooks(p string) bool {
	return inGitDir(p) && path.Base(path.Dir(p)) == "hooks"
}

// isConfig reports whether p is a git dir's config file.
func isConfig(p string) bool {
	if !inGitDir(p) {
		return false
	}
	switch path.Base(p) {
	case "config", "config.worktree":
		return true
	}
	return false
}

// scanConfig lists the dangerous keys of git config file p.
func scanConfig(root *os.Root, p string) ([]Finding, error) {
	f, err := openRegular(root, p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxConfigSize {
		// git reads all of it: what lies past the limit could be anything.
		return []Finding{{Path: p, What: fmt.Sprintf("config larger than %d bytes, too large to scan", maxConfigSize)}}, nil
	}
	entries, err := ParseConfig(bytes.NewReader(data))
	if err != nil {
		return []Finding{{Path: p, What: "config that bottle cannot parse (" + err.Error() + ")"}}, nil
	}
	var out []Finding
	for _, e := range entries {
		if Dangerous(e) {
			out = append(out, Finding{Path: p, What: fmt.Sprintf("config %s = %q", e.Key(), e.Value)})
		}
	}
	return out, nil
}

// scanIndex lists the gitlinks of index file p.
func scanIndex(root *os.Root, p string) []Finding {
	f, err := openRegular(root, p)
	if err != nil {
		return []Finding{{Path: p, What: "index bottle cannot read (" + err.Error() + ")"}}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxIndexSize+1))
	if err == nil && len(data) > maxIndexSize {
		err = fmt.Errorf("larger than %d bytes", maxIndexSize)
	}
	var links []string
	if err == nil {
		links, err = Gitlinks(data)
	}
	if errors.Is(err, errNotIndex) {
		return nil
	}
	if err != nil {
		return []Finding{{Path: p, What: "index bottle cannot scan for submodules (" + err.Error() + ")"}}
	}
	out := make([]Finding, 0, len(links))
	for _, l := range links {
		out = append(out, Finding{Path: p, What: fmt.Sprintf("gitlink %q (git goes into it as a submodule)", l)})
	}
	return out
}

// openRegular opens p for reading only when it is a regular file, not following a link
// at its end, and without blocking: a FIFO the agent left would hang the scan.
func openRegular(root *os.Root, p string) (*os.File, error) {
	f, err := root.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", p)
	}
	return f, nil
}

func digest(root *os.Root, p string, d fs.DirEntry) string {
	h := sha256.New()
	if d.Type()&fs.ModeSymlink != 0 {
		target, _ := root.Readlink(p)
		h.Write([]byte("link:" + target))
	} else if f, err := openRegular(root, p); err == nil {
		_, _ = io.Copy(h, io.LimitReader(f, 16<<20))
		f.Close()
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func firstLine(root *os.Root, p string) string {
	f, err := openRegular(root, p)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	line, _ := bufio.NewReader(io.LimitReader(f, 512)).ReadString('\n')
	return strings.TrimSpace(line)
}
