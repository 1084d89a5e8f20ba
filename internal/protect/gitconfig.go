package protect

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// ConfigEntry is one variable of a git config file: section and name lowercased (git
// compares them case-insensitively), subsection as written.
type ConfigEntry struct {
	Section, Subsection, Name, Value string
}

// Key is the variable's full name, section.subsection.name.
func (e ConfigEntry) Key() string {
	if e.Subsection == "" {
		return e.Section + "." + e.Name
	}
	return e.Section + "." + e.Subsection + "." + e.Name
}

// ParseConfig reads git config syntax (git-config(1) "CONFIGURATION FILE"): sections
// `[name]`, `[name "sub"]` and the old `[name.sub]`, variables `name = value` or a bare
// `name` (true), comments after # or ;, quoted values with escapes, and lines continued
// by a trailing backslash. It errs toward reporting a key (it is a scanner for warnings,
// not a config reader).
func ParseConfig(r io.Reader) ([]ConfigEntry, error) {
	var out []ConfigEntry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var section, sub string
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := sc.Text()
		// A value continued on the next line (git continues values only: a comment line
		// ending in a backslash ends there, and the next line is read on its own).
		t := strings.TrimSpace(line)
		isComment := t != "" && (t[0] == '#' || t[0] == ';')
		for !isComment && strings.HasSuffix(line, "\\") && !strings.HasSuffix(line, "\\\\") && sc.Scan() {
			lineNo++
			line = line[:len(line)-1] + sc.Text()
		}
		rest := strings.TrimSpace(line)
		if strings.HasPrefix(rest, "[") {
			end := headerEnd(rest)
			if end < 0 {
				return out, fmt.Errorf("line %d: unterminated section header", lineNo)
			}
			var err error
			if section, sub, err = parseHeader(rest[1:end]); err != nil {
				return out, fmt.Errorf("line %d: %w", lineNo, err)
			}
			rest = strings.TrimSpace(rest[end+1:])
		}
		if rest == "" || rest[0] == '#' || rest[0] == ';' {
			continue
		}
		if section == "" {
			return out, fmt.Errorf("line %d: variable outside a section", lineNo)
		}
		name, value, _ := strings.Cut(rest, "=")
		name = strings.ToLower(strings.TrimSpace(name))
		if name == "" {
			return out, fmt.Errorf("line %d: empty variable name", lineNo)
		}
		if strings.ContainsAny(name, " \t") { // `name ; comment` or garbage
			name = strings.Fields(name)[0]
		}
		v := "true"
		if strings.Contains(rest, "=") {
			v = parseValue(value)
		}
		out = append(out, ConfigEntry{Section: section, Subsection: sub, Name: name, Value: v})
	}
	return out, sc.Err()
}

// headerEnd is the index of the ']' closing a section header (outside quotes).
func headerEnd(s string) int {
	quoted := false
	for i := 1; i < len(s); i++ {
		switch {
		case s[i] == '\\' && quoted:
			i++
		case s[i] == '"':
			quoted = !quoted
		case s[i] == ']' && !quoted:
			return i
		}
	}
	return -1
}

func parseHeader(h string) (section, sub string, err error) {
	h = strings.TrimSpace(h)
	if i := strings.IndexAny(h, " \t"); i >= 0 {
		q := strings.TrimSpace(h[i:])
		if len(q) < 2 || q[0] != '"' || q[len(q)-1] != '"' {
			return "", "", fmt.Errorf("bad subsection in [%s]", h)
		}
		var b strings.Builder
		for j := 1; j < len(q)-1; j++ {
			if q[j] == '\\' && j+1 < len(q)-1 {
				j++
			}
			b.WriteByte(q[j])
		}
		return strings.ToLower(h[:i]), b.String(), nil
	}
	if sec, s, ok := strings.Cut(h, "."); ok { // [section.subsection]: both case-insensitive
		return strings.ToLower(sec), strings.ToLower(s), nil
	}
	return strings.ToLower(h), "", nil
}

// parseValue unquotes a value and drops a trailing comment.
func parseValue(v string) string {
	var b strings.Builder
	quoted := false
	v = strings.TrimSpace(v)
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '\\' && i+1 < len(v):
			i++
			switch v[i] {
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'b':
				b.WriteByte('\b')
			default:
				b.WriteByte(v[i])
			}
		case c == '"':
			quoted = !quoted
		case (c == '#' || c == ';') && !quoted:
			return strings.TrimSpace(b.String())
		default:
			b.WriteByte(c)
		}
	}
	return strings.TrimSpace(b.String())
}

// Dangerous reports whether a config variable makes git run a program, load more
// config, or send to or read from somewhere else (git-config(1)).
func Dangerous(e ConfigEntry) bool {
	in := func(names ...string) bool {
		for _, n := range names {
			if e.Name == n {
				return true
			}
		}
		return false
	}
	switch e.Section {
	case "core":
		return in("hookspath", "fsmonitor", "sshcommand", "pager", "editor", "askpass", "gitproxy", "worktree", "attributesfile", "alternaterefscommand")
	case "sequence":
		return in("editor")
	case "diff":
		return (e.Subsection == "" && in("external")) || (e.Subsection != "" && in("textconv", "command"))
	case "merge":
		return e.Subsection != "" && in("driver")
	case "filter":
		return in("clean", "smudge", "process")
	case "include", "includeif":
		return in("path")
	case "credential":
		return in("helper")
	case "gpg":
		// gpg.program, gpg.<format>.program, gpg.ssh.defaultKeyCommand, ...
		return strings.HasSuffix(e.Name, "program") || strings.HasSuffix(e.Name, "command")
	case "interactive":
		return in("difffilter")
	case "trailer":
		return in("command", "cmd")
	case "sendemail":
		return strings.HasSuffix(e.Name, "cmd") || in("smtpserver")
	case "browser", "man":
		return in("cmd", "path")
	case "web":
		return in("browser")
	case "protocol":
		return in("allow")
	case "pager", "url":
		return true
	case "alias":
		return strings.HasPrefix(strings.TrimSpace(e.Value), "!")
	case "difftool", "mergetool":
		return in("cmd")
	case "remote":
		// remote.<name>.vcs runs git-remote-<vcs>, a program of that name on the PATH.
		return in("uploadpack", "receivepack", "proxy", "vcs")
	case "imap":
		return in("tunnel")
	case "guitool":
		return e.Subsection != "" && in("cmd")
	case "uploadpack":
		return in("packobjectshook")
	case "extensions":
		return in("worktreeconfig")
	case "init":
		return in("templatedir")
	case "submodule":
		return in("update") && strings.HasPrefix(strings.TrimSpace(e.Value), "!")
	case "safe":
		return in("directory")
	}
	return false
}
