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
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
)

// Scan bounds: a hostile tree must not make a scan endless, nor make it hold or return
// more than a person can read.
const (
	maxScanEntries  = 200_000
	maxScanDepth    = 64
	maxScanTime     = 30 * time.Second
	maxConfigSize   = 1 << 20
	maxScanBytes    = 512 << 20 // read from files, over a whole scan
	maxFileFindings = 20        // then one "...and N more" finding
	maxScanFindings = 1000      // then the scan stops with an error
	dirChunk        = 1024      // directory entries read at a time
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
// skipping object stores. It stops with an error, returning what it found so far, after
// maxScanEntries entries, below maxScanDepth, after maxScanTime, past maxScanBytes read
// or maxScanFindings findings.
func Scan(root *os.Root, rel string) ([]Finding, error) {
	return newScanner(root).scan(rel)
}

func (s *scanner) scan(rel string) ([]Finding, error) {
	fi, err := s.root.Lstat(rel)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	err = s.visit(path.Clean(rel), fs.FileInfoToDirEntry(fi))
	return s.out, err
}

func newScanner(root *os.Root) *scanner {
	return &scanner{root: root, t0: time.Now(), timeLimit: maxScanTime, budget: maxScanBytes, files: map[fileKey]scannedFile{}, commons: map[string]bool{}}
}

// scanner is the state of one Scan.
type scanner struct {
	root    *os.Root
	t0      time.Time
	entries int
	bytes   int64
	// timeLimit and budget (bytes to read) are maxScanTime and maxScanBytes, lower in tests.
	timeLimit time.Duration
	budget    int64
	out       []Finding
	// files are the files read so far (by device and inode): a hard link to one is
	// read once.
	files map[fileKey]scannedFile
	// commons are the common dirs (commondir targets) scanned so far.
	commons map[string]bool
	// stop ends the scan: its byte budget is spent.
	stop error
}

var errStop = errors.New("scan stopped")

// add records f, and stops the scan past maxScanFindings.
func (s *scanner) add(f ...Finding) error {
	s.out = append(s.out, f...)
	if len(s.out) > maxScanFindings {
		s.out = s.out[:maxScanFindings]
		return fmt.Errorf("more than %d findings: %w", maxScanFindings, errStop)
	}
	return nil
}

// capped keeps at most maxFileFindings of one file's findings, and says how many more.
func capped(p string, found []Finding) []Finding {
	if len(found) <= maxFileFindings {
		return found
	}
	more := len(found) - maxFileFindings
	return append(found[:maxFileFindings:maxFileFindings], Finding{Path: p, What: fmt.Sprintf("...and %d more", more)})
}

// walk visits the entries of dir p, read in bounded chunks (each chunk in name order).
func (s *scanner) walk(p string) error {
	f, err := s.root.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	for {
		ents, err := f.ReadDir(dirChunk)
		sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
		for _, d := range ents {
			if err := s.visit(path.Join(p, d.Name()), d); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func (s *scanner) visit(p string, d fs.DirEntry) error {
	if s.entries++; s.entries > maxScanEntries {
		return fmt.Errorf("more than %d entries: %w", maxScanEntries, errStop)
	}
	if time.Since(s.t0) > s.timeLimit {
		return fmt.Errorf("longer than %s: %w at %s", s.timeLimit, errStop, p)
	}
	if strings.Count(p, "/") > maxScanDepth {
		return fmt.Errorf("deeper than %d: %w at %s", maxScanDepth, errStop, p)
	}
	name := d.Name()
	if d.IsDir() {
		switch {
		case name == "objects" && inGitDir(p):
			return nil
		case name == ".git":
			// git takes a .git without a valid HEAD for no repository and looks further:
			// at a bare layout beside it, or a repository above. (A HEAD file with
			// invalid content, or that is no regular file, is found at the file.)
			if fi, err := s.root.Lstat(path.Join(p, "HEAD")); err != nil || fi.IsDir() {
				if err := s.add(Finding{Path: path.Join(p, "HEAD"), What: "missing or a dir: " + invalidHead}); err != nil {
					return err
				}
			}
		case isSequencerState(s.root, p, name):
			// git rebase --continue (or cherry-pick/revert --continue) carries on with
			// what is recorded here: exec lines of its todo run as commands.
			if err := s.add(Finding{Path: p, What: "rebase, cherry-pick or revert in progress (git continues it, running its exec lines)"}); err != nil {
				return err
			}
		}
		return s.walk(p)
	}
	var found []Finding
	switch {
	case name == ".git":
		found = []Finding{{Path: p, What: "git link (" + s.firstLine(p) + ")", Digest: s.digest(p, d)}}
	case (name == "commondir" || name == "gitdir") && inGitDir(p):
		// git takes config and hooks from where these point (bottle's own commondir,
		// ".", points at the git dir itself, a linked worktree's at the main git dir).
		line := s.firstLine(p)
		if name == "commondir" && s.ownCommondir(p, line) || name == "gitdir" && isWorktreeAdmin(p) {
			return nil
		}
		found = append(found, Finding{Path: p, What: "git dir link (" + line + ")", Digest: s.digest(p, d)})
		if name == "commondir" {
			found = append(found, s.scanCommon(path.Dir(p), line)...)
		}
	case name == "HEAD" && path.Base(path.Dir(p)) == ".git" && !validHead(s.headLine(p, d)):
		found = []Finding{{Path: p, What: invalidHead, Digest: s.digest(p, d)}}
	case name == "HEAD" && !inGitDir(p) && s.isBareLayout(path.Dir(p)):
		// A dir that git takes for a bare repository: git uses it, and its config, when
		// the .git above it is missing or broken, or when git runs in it.
		dir := path.Dir(p)
		found = []Finding{{Path: p, What: BareLayout, Digest: s.digest(p, d)}}
		for _, link := range []string{"commondir", "gitdir"} {
			lp := path.Join(dir, link)
			if fi, err := s.root.Lstat(lp); err == nil {
				line := s.firstLine(lp)
				found = append(found, Finding{Path: lp, What: "git dir link (" + line + ")", Digest: s.digest(lp, fs.FileInfoToDirEntry(fi))})
				if link == "commondir" {
					found = append(found, s.scanCommon(dir, line)...)
				}
			}
		}
		found = append(found, s.scanRepoDir(dir)...)
	case inHooks(p):
		if !strings.HasSuffix(name, ".sample") {
			found = []Finding{{Path: p, What: "hook", Digest: s.digest(p, d)}}
		}
	case name == "index" && inGitDir(p) && d.Type().IsRegular():
		// A gitlink makes the host's git status go into that dir as a submodule, and
		// run what its git dir configures.
		found = s.scanIndex(p)
	case isConfig(p) && d.Type().IsRegular():
		keys, err := s.scanConfig(p)
		if err != nil {
			return err
		}
		found = keys
	case isConfig(p):
		// git follows a link: what it leads to is not scanned.
		found = []Finding{{Path: p, What: "config that is no regular file (a link git follows?)", Digest: s.digest(p, d)}}
	case isTodo(p):
		found = s.scanTodo(p)
	case d.Type()&fs.ModeSymlink != 0 && isSequencerState(s.root, p, name):
		found = []Finding{{Path: p, What: "rebase, cherry-pick or revert in progress, through a link", Digest: s.digest(p, d)}}
	}
	if s.stop != nil {
		return s.stop
	}
	return s.add(found...)
}

const invalidHead = "invalid HEAD: git ignores this .git and looks for a repository further up"

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

// isBareLayout reports whether git takes dir for a git dir (setup.c is_git_directory): a
// valid HEAD, and objects/ and refs/ (followed through links, as git's access(2) does)
// or a commondir leading to them.
func (s *scanner) isBareLayout(dir string) bool {
	head := path.Join(dir, "HEAD")
	fi, err := s.root.Lstat(head)
	if err != nil || !validHead(s.headLine(head, fs.FileInfoToDirEntry(fi))) {
		return false
	}
	if _, err := s.root.Lstat(path.Join(dir, "commondir")); err == nil {
		return true // git looks for objects/ and refs/ where it leads
	}
	return s.present(path.Join(dir, "objects")) && s.present(path.Join(dir, "refs"))
}

// present reports whether p is a dir, following links within the root; a link that
// leaves the root counts (git follows it).
func (s *scanner) present(p string) bool {
	fi, err := s.root.Stat(p)
	if err == nil {
		return fi.IsDir()
	}
	li, lerr := s.root.Lstat(p)
	return lerr == nil && li.Mode()&fs.ModeSymlink != 0 && !errors.Is(err, fs.ErrNotExist)
}

// headLine is what git reads of HEAD file p: its first line as it is, or for a link
// "ref:" and where it points (git takes a link only into refs/).
func (s *scanner) headLine(p string, d fs.DirEntry) string {
	if d.Type()&fs.ModeSymlink != 0 {
		target, err := s.root.Readlink(p)
		if err != nil {
			return ""
		}
		return "ref:" + target
	}
	f, err := openRegular(s.root, p)
	if err != nil {
		return ""
	}
	defer f.Close()
	line, _ := bufio.NewReader(io.LimitReader(f, 255)).ReadString('\n')
	return line
}

// ownCommondir reports whether commondir file p, holding line, leads back to a git dir
// the scan covers anyway: bottle's own "." and a linked worktree's "../..".
func (s *scanner) ownCommondir(p, line string) bool {
	dir := path.Dir(p)
	t, ok := s.inRoot(dir, line)
	return ok && (t == dir || path.Base(path.Dir(dir)) == "worktrees" && t == path.Dir(path.Dir(dir)))
}

// isWorktreeAdmin reports whether p is in a linked worktree's admin dir of a git dir
// (worktrees/NAME/), where git keeps a gitdir file that says where the worktree is.
func isWorktreeAdmin(p string) bool {
	return path.Base(path.Dir(path.Dir(p))) == "worktrees"
}

// inRoot resolves target, as git reads it from a file in dir, to a path in the root.
func (s *scanner) inRoot(dir, target string) (string, bool) {
	if filepath.IsAbs(target) {
		rel, err := filepath.Rel(s.root.Name(), target)
		if err != nil || !filepath.IsAbs(s.root.Name()) {
			return "", false
		}
		target = filepath.ToSlash(rel)
	} else {
		target = path.Join(dir, target)
	}
	target = path.Clean(target)
	if target == ".." || strings.HasPrefix(target, "../") {
		return "", false
	}
	return target, true
}

// scanCommon lists the dangerous config keys and hooks of the common dir a commondir
// file in dir leads to (line), when it is in the root.
func (s *scanner) scanCommon(dir, line string) []Finding {
	common, ok := s.inRoot(dir, line)
	if !ok {
		return nil
	}
	return s.scanRepoDir(common)
}

// scanRepoDir lists the dangerous config keys and the hooks of git dir dir (once a
// scan), those the walk does not find: it finds them in a .git dir, not in an object
// store (which it skips) nor outside a .git dir. A config read twice gives its findings
// once (scanConfig).
func (s *scanner) scanRepoDir(dir string) []Finding {
	if s.commons[dir] {
		return nil
	}
	s.commons[dir] = true
	walked := inGitDir(dir+"/") && !strings.Contains("/"+dir+"/", "/objects/")
	var out []Finding
	if conf := path.Join(dir, "config"); isRegular(s.root, conf) {
		keys, _ := s.scanConfig(conf) // a budget spent stops the scan in visit
		out = append(out, keys...)
	}
	hooks := path.Join(dir, "hooks")
	if walked {
		return out
	}
	f, err := s.root.Open(hooks) // git follows a link here: so does os.Root, within the root
	if err != nil {
		if fi, lerr := s.root.Lstat(hooks); lerr == nil && fi.Mode()&fs.ModeSymlink != 0 {
			target, _ := s.root.Readlink(hooks)
			out = append(out, Finding{Path: hooks, What: "hooks dir that is a link bottle cannot follow (" + target + ")"})
		}
		return out
	}
	defer f.Close()
	ents, _ := f.ReadDir(dirChunk) // a hooks dir holds a few: more is found at the cap
	var hs []Finding
	for _, d := range ents {
		if p := path.Join(hooks, d.Name()); !d.IsDir() && !strings.HasSuffix(d.Name(), ".sample") {
			hs = append(hs, Finding{Path: p, What: "hook", Digest: s.digest(p, d)})
		}
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].Path < hs[j].Path })
	return append(out, capped(hooks, hs)...)
}

// isSequencerState reports whether dir p (name) is a rebase, am, cherry-pick or revert in
// progress in a git dir.
func isSequencerState(root *os.Root, p, name string) bool {
	switch name {
	case "rebase-merge", "rebase-apply", "sequencer":
		_, err := root.Lstat(path.Join(path.Dir(p), "HEAD"))
		return inGitDir(p) && err == nil
	}
	return false
}

// isTodo reports whether p is the todo list of a rebase or of a cherry-pick or revert.
func isTodo(p string) bool {
	parent := path.Base(path.Dir(p))
	return inGitDir(p) && (parent == "rebase-merge" && path.Base(p) == "git-rebase-todo" || parent == "sequencer" && path.Base(p) == "todo")
}

// validHead reports whether line (a HEAD's first line) is what git takes (setup.c
// validate_headref): "ref:", spaces and a ref in refs/, or a line that starts with an
// object name in hex (git reads the first 40 digits, of either case, and no further).
func validHead(line string) bool {
	if ref, ok := strings.CutPrefix(line, "ref:"); ok {
		return strings.HasPrefix(strings.TrimLeft(ref, " \t\n\v\f\r"), "refs/")
	}
	if len(line) < 40 {
		return false
	}
	for _, c := range line[:40] {
		if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
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

// What the scan reads of a file, for the dedupe of hard links.
const (
	readConfig = iota
	readIndex
	readTodo
	readDigest
)

type fileKey struct {
	dev, ino uint64
	kind     int
}

type scannedFile struct {
	path     string
	findings int    // of the file's own scan
	digest   string // of a hook or link
}

// open opens regular file p (openRegular) for a read of this kind. seen: the scan read
// this file (a hard link) for this kind before, and f is nil.
func (s *scanner) open(p string, kind int) (f *os.File, key fileKey, seen *scannedFile, err error) {
	f, err = openRegular(s.root, p)
	if err != nil {
		return nil, key, nil, err
	}
	if fi, err := f.Stat(); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			key = fileKey{uint64(st.Dev), uint64(st.Ino), kind}
		}
	}
	if prev, ok := s.files[key]; ok {
		f.Close()
		return nil, key, &prev, nil
	}
	return f, key, nil, nil
}

// readAll reads at most limit+1 bytes of f, within the scan's byte budget: past it the
// scan stops (s.stop).
func (s *scanner) readAll(f *os.File, limit int64) ([]byte, error) {
	left := s.budget - s.bytes
	n := min(limit+1, left)
	data, err := io.ReadAll(io.LimitReader(f, n))
	s.bytes += int64(len(data))
	if err == nil && n < limit+1 && int64(len(data)) == n {
		s.stop = fmt.Errorf("more than %d bytes read: %w", s.budget, errStop)
		return nil, s.stop
	}
	return data, err
}

// hardLink is the finding of a file that the scan read before under another path.
func hardLink(p string, prev *scannedFile) []Finding {
	if prev.path == p || prev.findings == 0 {
		return nil
	}
	return []Finding{{Path: p, What: fmt.Sprintf("hard link to %s (%d findings there)", prev.path, prev.findings)}}
}

// scanConfig lists the dangerous keys of git config file p.
func (s *scanner) scanConfig(p string) ([]Finding, error) {
	f, key, prev, err := s.open(p, readConfig)
	if err != nil {
		return nil, err
	}
	if prev != nil {
		return hardLink(p, prev), nil
	}
	defer f.Close()
	data, err := s.readAll(f, maxConfigSize)
	if err != nil {
		return nil, err
	}
	var out []Finding
	if len(data) > maxConfigSize {
		// git reads all of it: what lies past the limit could be anything.
		out = []Finding{{Path: p, What: fmt.Sprintf("config larger than %d bytes, too large to scan", maxConfigSize)}}
	} else if entries, err := ParseConfig(bytes.NewReader(data)); err != nil {
		out = []Finding{{Path: p, What: "config that bottle cannot parse (" + err.Error() + ")"}}
	} else {
		more := 0
		for _, e := range entries {
			switch {
			case !Dangerous(e):
			case len(out) < maxFileFindings:
				out = append(out, Finding{Path: p, What: configFinding(e)})
			default:
				more++
			}
		}
		if more > 0 {
			out = append(out, Finding{Path: p, What: fmt.Sprintf("...and %d more", more)})
		}
		s.files[key] = scannedFile{path: p, findings: len(out) + more - min(more, 1)}
		return out, nil
	}
	s.files[key] = scannedFile{path: p, findings: len(out)}
	return out, nil
}

// scanIndex lists the gitlinks of index file p.
func (s *scanner) scanIndex(p string) []Finding {
	f, key, prev, err := s.open(p, readIndex)
	if err != nil {
		return []Finding{{Path: p, What: "index bottle cannot read (" + err.Error() + ")"}}
	}
	if prev != nil {
		return hardLink(p, prev)
	}
	defer f.Close()
	data, err := s.readAll(f, maxIndexSize)
	if errors.Is(err, errStop) {
		return nil
	}
	if err == nil && len(data) > maxIndexSize {
		err = fmt.Errorf("larger than %d bytes", maxIndexSize)
	}
	var links []string
	if err == nil {
		links, err = Gitlinks(data)
	}
	var out []Finding
	switch {
	case errors.Is(err, errNotIndex):
	case err != nil:
		out = []Finding{{Path: p, What: "index bottle cannot scan for submodules (" + err.Error() + ")"}}
	default:
		for _, l := range links {
			out = append(out, Finding{Path: p, What: fmt.Sprintf("gitlink %q (git goes into it as a submodule)", l)})
		}
	}
	s.files[key] = scannedFile{path: p, findings: len(out)}
	return capped(p, out)
}

// scanTodo lists the exec lines of a rebase's or sequencer's todo file p: git runs them
// as shell commands when the rebase goes on.
func (s *scanner) scanTodo(p string) []Finding {
	f, key, prev, err := s.open(p, readTodo)
	if err != nil {
		return []Finding{{Path: p, What: "todo list bottle cannot read (" + err.Error() + ")"}}
	}
	if prev != nil {
		return hardLink(p, prev)
	}
	defer f.Close()
	data, err := s.readAll(f, maxConfigSize)
	if err != nil {
		return nil
	}
	var out []Finding
	if len(data) > maxConfigSize {
		out = []Finding{{Path: p, What: fmt.Sprintf("todo list larger than %d bytes, too large to scan", maxConfigSize)}}
	}
	for line := range strings.Lines(string(data[:min(len(data), maxConfigSize)])) {
		cmd, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
		if cmd == "exec" || cmd == "x" {
			out = append(out, Finding{Path: p, What: "exec " + strings.TrimSpace(rest)})
		}
	}
	s.files[key] = scannedFile{path: p, findings: len(out)}
	return capped(p, out)
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

// digest identifies the content of p (the first 16 MiB of a file, or a link's target).
func (s *scanner) digest(p string, d fs.DirEntry) string {
	h := sha256.New()
	if d.Type()&fs.ModeSymlink != 0 {
		target, _ := s.root.Readlink(p)
		h.Write([]byte("link:" + target))
	} else if f, key, prev, err := s.open(p, readDigest); prev != nil {
		return prev.digest
	} else if err == nil {
		left := s.budget - s.bytes
		n, _ := io.Copy(h, io.LimitReader(f, min(16<<20, left)))
		f.Close()
		if s.bytes += n; n == left {
			s.stop = fmt.Errorf("more than %d bytes read: %w", s.budget, errStop)
		}
		sum := hex.EncodeToString(h.Sum(nil))[:16]
		s.files[key] = scannedFile{path: p, digest: sum}
		return sum
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func (s *scanner) firstLine(p string) string {
	f, err := openRegular(s.root, p)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	line, _ := bufio.NewReader(io.LimitReader(f, 512)).ReadString('\n')
	return strings.TrimSpace(line)
}

// urlUserinfo matches the user[:password]@ of a URL: url.<base>.insteadOf and proxies
// often carry a token there.
var urlUserinfo = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s"]+@`)

// configFinding describes a dangerous config entry without the secrets such entries
// often hold (findings go to the terminal, the log and the audit trail, and a person's
// own config is scanned too): a URL's userinfo, and a credential helper's command.
func configFinding(e ConfigEntry) string {
	key, value := urlUserinfo.ReplaceAllString(e.Key(), "${1}<redacted>@"), urlUserinfo.ReplaceAllString(e.Value, "${1}<redacted>@")
	if e.Section == "credential" {
		value = "<redacted>"
	}
	return fmt.Sprintf("config %s = %q", key, value)
}
