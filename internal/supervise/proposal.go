// Package supervise is the supervise sidecar and its host side: the agent proposes
// changes to its capabilities (allowlist, routes, git push rules, its image's Dockerfile),
// a person approves or denies them, and the host applies the approved ones.
//
// The sidecar and the host share two directories of the bottle's state: the sidecar
// writes one JSON file per proposal into the proposals directory (the only place it may
// write), and reads the host's decisions and the bottle's current capabilities from the
// host directory (read-only for it). Everything in a proposal file is untrusted: the host
// reads it through ReadProposal, which bounds its size, decodes it strictly and refuses
// control characters and malformed names, so nothing from the agent reaches a terminal or
// a config unchecked.
package supervise

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/bottle-dev/bottle/internal/envname"
	"github.com/bottle-dev/bottle/internal/names"
)

// Proposal kinds: one per propose_* tool.
const (
	KindAllowlist  = "allowlist"
	KindRoute      = "route"
	KindGitRule    = "git_rule"
	KindDockerfile = "dockerfile"
)

// Limits on what the agent may send.
const (
	// MaxProposalBytes bounds one proposal file (a Dockerfile is the largest part).
	MaxProposalBytes = 128 << 10
	// MaxDockerfileBytes bounds a proposed Dockerfile.
	MaxDockerfileBytes = 64 << 10
	// MaxJustification bounds the agent's reason.
	MaxJustification = 2000
	// MaxEntries bounds the hosts one allowlist proposal adds or removes.
	MaxEntries = 32
	// MaxProposals bounds the proposals of one bottle the host reads.
	MaxProposals = 1000
)

// Proposal is one change the agent asks for. Exactly one of the change fields is set,
// the one its Kind names.
type Proposal struct {
	// N numbers the bottle's proposals from 1 (it is also the file's name).
	N             int       `json:"n"`
	Kind          string    `json:"kind"`
	Justification string    `json:"justification"`
	Created       time.Time `json:"created"`
	// Deadline is when the sidecar stops waiting and answers "denied" (default-deny);
	// the host refuses to approve after it.
	Deadline   time.Time         `json:"deadline"`
	Allowlist  *AllowlistChange  `json:"allowlist,omitempty"`
	Route      *RouteChange      `json:"route,omitempty"`
	GitRule    *GitRuleChange    `json:"git_rule,omitempty"`
	Dockerfile *DockerfileChange `json:"dockerfile,omitempty"`
}

// AllowlistChange adds and removes allowlist entries (host names or *.suffix).
type AllowlistChange struct {
	Add    []string `json:"add,omitempty" jsonschema:"host names or *.suffix patterns to allow"`
	Remove []string `json:"remove,omitempty" jsonschema:"allowlist entries to remove"`
}

// RouteChange asks for a credential-injection route to Host. The credential's value is
// never part of it: TokenRef names the host variable the person provides.
type RouteChange struct {
	Host     string `json:"host" jsonschema:"the upstream host name"`
	TokenRef string `json:"token_ref" jsonschema:"name of the host environment variable holding the credential"`
	Header   string `json:"header,omitempty" jsonschema:"header the credential goes into (default Authorization)"`
	Scheme   string `json:"scheme,omitempty" jsonschema:"prefix of the credential (default Bearer; none for the raw value)"`
}

// GitRuleChange asks for a push rule on a declared git remote.
type GitRuleChange struct {
	Remote string `json:"remote" jsonschema:"name of the git remote (as in current_capabilities)"`
	Ref    string `json:"ref" jsonschema:"ref pattern starting with refs/, e.g. refs/heads/feature/*"`
	Force  bool   `json:"force,omitempty" jsonschema:"allow non-fast-forward pushes"`
	Delete bool   `json:"delete,omitempty" jsonschema:"allow deleting matching refs"`
}

// DockerfileChange is the whole new Dockerfile of the agent's image.
type DockerfileChange struct {
	Content string `json:"content" jsonschema:"the whole new Dockerfile; it must build FROM the current agent image"`
}

// ReadProposal reads one untrusted proposal: at most MaxProposalBytes, strict JSON (no
// unknown fields, nothing after it), then Validate.
func ReadProposal(r io.Reader) (*Proposal, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxProposalBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read proposal: %w", err)
	}
	if len(data) > MaxProposalBytes {
		return nil, fmt.Errorf("proposal is larger than %d bytes", MaxProposalBytes)
	}
	var p Proposal
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("malformed proposal: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("malformed proposal: data after the JSON object")
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Validate checks a proposal's shape and every string in it. The Dockerfile's base image
// is checked against the bottle's by CheckDockerfile, which needs the current image.
func (p *Proposal) Validate() error {
	if p.N < 1 {
		return fmt.Errorf("proposal number %d must be 1 or more", p.N)
	}
	if err := checkText("justification", p.Justification, MaxJustification, false); err != nil {
		return err
	}
	if strings.TrimSpace(p.Justification) == "" {
		return fmt.Errorf("a justification is required")
	}
	set := 0
	for _, isSet := range []bool{p.Allowlist != nil, p.Route != nil, p.GitRule != nil, p.Dockerfile != nil} {
		if isSet {
			set++
		}
	}
	if set != 1 {
		return fmt.Errorf("exactly one change must be given, found %d", set)
	}
	var err error
	switch {
	case p.Kind == KindAllowlist && p.Allowlist != nil:
		err = p.Allowlist.validate()
	case p.Kind == KindRoute && p.Route != nil:
		err = p.Route.validate()
	case p.Kind == KindGitRule && p.GitRule != nil:
		err = p.GitRule.validate()
	case p.Kind == KindDockerfile && p.Dockerfile != nil:
		err = checkText("dockerfile", p.Dockerfile.Content, MaxDockerfileBytes, true)
	default:
		err = fmt.Errorf("kind %q does not match the change given", Clean(p.Kind))
	}
	return err
}

func (c *AllowlistChange) validate() error {
	if len(c.Add)+len(c.Remove) == 0 {
		return fmt.Errorf("an allowlist change adds or removes at least one entry")
	}
	if len(c.Add)+len(c.Remove) > MaxEntries {
		return fmt.Errorf("an allowlist change holds at most %d entries", MaxEntries)
	}
	for _, list := range [][]string{c.Add, c.Remove} {
		for i, e := range list {
			if err := CheckPattern(e); err != nil {
				return err
			}
			list[i] = normalizePattern(e)
		}
	}
	return nil
}

// CheckPattern checks an allowlist entry: a host name or "*." and a host name.
func CheckPattern(e string) error {
	name, _ := strings.CutPrefix(e, "*.")
	if err := names.CheckHostName(names.NormalizeHost(name)); err != nil {
		return fmt.Errorf("allowlist entry %q: %w", Clean(e), err)
	}
	return nil
}

func normalizePattern(e string) string {
	if name, ok := strings.CutPrefix(e, "*."); ok {
		return "*." + names.NormalizeHost(name)
	}
	return names.NormalizeHost(e)
}

func (c *RouteChange) validate() error {
	if err := names.CheckHostName(names.NormalizeHost(c.Host)); err != nil {
		return fmt.Errorf("route host %q: %w", Clean(c.Host), err)
	}
	c.Host = names.NormalizeHost(c.Host)
	if !envname.Valid(c.TokenRef) {
		return fmt.Errorf("route token_ref %q: not an environment variable name", Clean(c.TokenRef))
	}
	if c.Header != "" && !isToken(c.Header) {
		return fmt.Errorf("route header %q: not an HTTP header name", Clean(c.Header))
	}
	if c.Scheme != "" && !isToken(c.Scheme) {
		return fmt.Errorf("route scheme %q: letters, digits and -._ only", Clean(c.Scheme))
	}
	return nil
}

func (c *GitRuleChange) validate() error {
	if c.Remote == "" || !isToken(c.Remote) || len(c.Remote) > 64 {
		return fmt.Errorf("git remote %q: a remote name from current_capabilities", Clean(c.Remote))
	}
	if !strings.HasPrefix(c.Ref, "refs/") || len(c.Ref) > 200 {
		return fmt.Errorf("git ref %q: must start with refs/", Clean(c.Ref))
	}
	for _, r := range c.Ref {
		if r <= ' ' || r > '~' || strings.ContainsRune("~^:?[\\", r) {
			return fmt.Errorf("git ref %q: not a valid ref pattern", Clean(c.Ref))
		}
	}
	if _, err := url.PathUnescape(c.Ref); err != nil || strings.Contains(c.Ref, "..") {
		return fmt.Errorf("git ref %q: not a valid ref pattern", Clean(c.Ref))
	}
	return nil
}

// isToken reports whether s is a plain name: letters, digits and -._ only.
func isToken(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if !(r < utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("-._", r))) {
			return false
		}
	}
	return true
}

// checkText refuses invalid UTF-8 and control characters (escape sequences among them);
// multiline text may hold newlines and tabs.
func checkText(what, s string, max int, multiline bool) error {
	if len(s) > max {
		return fmt.Errorf("%s is longer than %d bytes", what, max)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s is not valid UTF-8", what)
	}
	for _, r := range s {
		if multiline && (r == '\n' || r == '\t') {
			continue
		}
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return fmt.Errorf("%s holds the control character %U", what, r)
		}
	}
	return nil
}

// Clean makes s safe to print on a terminal: control and format characters (escape
// sequences, bidi overrides) become \u escapes, invalid UTF-8 becomes U+FFFD. Every
// string of agent origin goes through it before it is printed, even validated ones.
func Clean(s string) string {
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(s, "\uFFFD") {
		if r != '\n' && r != '\t' && (unicode.IsControl(r) || unicode.Is(unicode.Cf, r)) {
			fmt.Fprintf(&b, "\\u%04x", r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}
