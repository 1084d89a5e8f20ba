package supervise

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/gitgate"
	"github.com/bottle-dev/bottle/internal/state"
)

// Capabilities are what the agent may use now: the host writes them at every start and
// after every approval; current_capabilities shows them. They hold no secret: routes
// name their host and header only.
type Capabilities struct {
	// Filter is the filter backend (the builtin one re-reads approved allowlist
	// changes; pipelock is restarted with them).
	Filter     string `json:"filter"`
	AgentImage string `json:"agent_image"`
	Dockerfile string `json:"dockerfile"`
	// Allowlist is the configured allowlist; Changes are the approved changes to it.
	Allowlist []string                `json:"allowlist"`
	Changes   egress.AllowlistChanges `json:"changes"`
	Routes    []RouteInfo             `json:"routes,omitempty"`
	// ApprovedRoutes are the routes approved besides the manifest's; a resume plans
	// them as the manifest's, with their credentials from the resuming process's env.
	ApprovedRoutes []RouteChange `json:"approved_routes,omitempty"`
	// Git are the configured remotes; GitChanges the approved push rules.
	Git        []GitInfo               `json:"git,omitempty"`
	GitChanges gitgate.PushRuleChanges `json:"git_changes"`
}

// GitInForce is every remote with its push rules in force (configured and approved).
func (c *Capabilities) GitInForce() []GitInfo {
	out := make([]GitInfo, 0, len(c.Git))
	for _, g := range c.Git {
		g.Push = slices.Clone(g.Push)
		for _, r := range c.GitChanges.Remotes[g.Name] {
			g.Push = append(g.Push, GitRuleChange{Remote: g.Name, Ref: r.Ref, Force: r.Force, Delete: r.Delete})
		}
		out = append(out, g)
	}
	return out
}

// RouteInfo is a credential route without its credential.
type RouteInfo struct {
	Host   string `json:"host"`
	Header string `json:"header"`
}

// GitInfo is a git remote the agent reaches through git-gate and where it may push.
type GitInfo struct {
	Name string          `json:"name"`
	Push []GitRuleChange `json:"push,omitempty"`
}

// Effective is the allowlist in force at now: the configured entries minus the removed
// ones, plus the grants that have not expired.
func (c *Capabilities) Effective(now time.Time) []string {
	out := slices.DeleteFunc(slices.Clone(c.Allowlist), func(e string) bool { return slices.Contains(c.Changes.Remove, e) })
	for _, g := range c.Changes.Add {
		if (g.Until.IsZero() || now.Before(g.Until)) && !slices.Contains(out, g.Pattern) {
			out = append(out, g.Pattern)
		}
	}
	return out
}

// Decision is the person's answer to a proposal (or the default-deny of a timeout).
type Decision struct {
	N        int    `json:"n"`
	Decision string `json:"decision"` // DecisionApproved or DecisionDenied
	Reason   string `json:"reason,omitempty"`
	// Until is when an approved grant given --for ends.
	Until   time.Time `json:"until,omitzero"`
	Decided time.Time `json:"decided"`
}

// Decision values.
const (
	DecisionApproved = "approved"
	DecisionDenied   = "denied"
)

// Dirs is a bottle's supervise directory on the host (the bottle's state dir). Its
// subdirectories are mounted into the sidecars: Proposals writable for the supervise
// sidecar, Host read-only for it, Changes read-only for the builtin filter and git-gate.
type Dirs struct{ Root string }

// Paths inside Dirs, and where the sidecars see them.
const (
	ProposalsSubdir = "proposals"
	HostSubdir      = "host"
	ChangesSubdir   = "changes"
	// CapabilitiesFile, DecisionsSubdir and PinnedSubdir are in HostSubdir.
	CapabilitiesFile = "capabilities.json"
	DecisionsSubdir  = "decisions"
	// PinnedSubdir holds each proposal as the host first read it: the sidecar owns the
	// proposals dir and could rewrite a proposal after a person saw it.
	PinnedSubdir = "pinned"
	// ApplyingSuffix names the marker (decisions/N.applying) the host keeps while it
	// applies an approval (an image build takes minutes): the sidecar waits past the
	// deadline for it, so the agent is not told "denied" of a change that then applies.
	ApplyingSuffix = ".applying"
	// FilterChangesFile (the builtin filter's ChangesFile) and GitRulesFile (git-gate's
	// RulesFile) are in ChangesSubdir.
	FilterChangesFile = "allowlist.json"
	GitRulesFile      = "git-rules.json"
)

func (d Dirs) Proposals() string     { return filepath.Join(d.Root, ProposalsSubdir) }
func (d Dirs) Host() string          { return filepath.Join(d.Root, HostSubdir) }
func (d Dirs) Changes() string       { return filepath.Join(d.Root, ChangesSubdir) }
func (d Dirs) decision(n int) string { return decisionPath(d.Host(), n) }
func (d Dirs) applying(n int) string { return applyingPath(d.Host(), n) }

// decisionPath and applyingPath are proposal n's decision and marker in the host dir
// (the host's Dirs.Host(), the sidecar's read-only mount of it).
func decisionPath(hostDir string, n int) string {
	return filepath.Join(hostDir, DecisionsSubdir, strconv.Itoa(n)+".json")
}
func applyingPath(hostDir string, n int) string {
	return filepath.Join(hostDir, DecisionsSubdir, strconv.Itoa(n)+ApplyingSuffix)
}
func (d Dirs) pinned(n int) string {
	return filepath.Join(d.Host(), PinnedSubdir, strconv.Itoa(n)+".json")
}

// MarkApplying tells the sidecar that proposal n is being applied (see ApplyingSuffix);
// done removes the marker.
func (d Dirs) MarkApplying(n int) (done func(), err error) {
	path := d.applying(n)
	if err := state.WriteFile(path, nil, 0o644); err != nil {
		return nil, fmt.Errorf("proposal %d: %w", n, err)
	}
	return func() { _ = os.Remove(path) }, nil
}

// Prepare makes the directories; proposals belongs to the sidecar's user (uid), the
// rest to the host.
func (d Dirs) Prepare(uid int) error {
	for _, dir := range []string{d.Root, d.Host(), filepath.Join(d.Host(), DecisionsSubdir), filepath.Join(d.Host(), PinnedSubdir), d.Changes()} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("supervise dir %s: %w", dir, err)
		}
	}
	if err := os.MkdirAll(d.Proposals(), 0o700); err != nil {
		return fmt.Errorf("supervise dir %s: %w", d.Proposals(), err)
	}
	if err := os.Chown(d.Proposals(), uid, uid); err != nil {
		return fmt.Errorf("supervise dir %s: %w", d.Proposals(), err)
	}
	return nil
}

// ReadCapabilities reads the host's capabilities file (written by the host only).
func (d Dirs) ReadCapabilities() (*Capabilities, error) {
	return readCapabilities(filepath.Join(d.Host(), CapabilitiesFile))
}

func readCapabilities(path string) (*Capabilities, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("capabilities: %w", err)
	}
	var c Capabilities
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("capabilities %s: %w", path, err)
	}
	return &c, nil
}

// WriteCapabilities puts c in force: the changes files of the filter and git-gate
// (which re-read them by themselves) and the capabilities file the sidecar shows, each
// atomically.
func (d Dirs) WriteCapabilities(c *Capabilities) error {
	for name, v := range map[string]any{FilterChangesFile: c.Changes, GitRulesFile: c.GitChanges} {
		data, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		if err := state.WriteFile(filepath.Join(d.Changes(), name), append(data, '\n'), 0o644); err != nil {
			return fmt.Errorf("changes file %s: %w", name, err)
		}
	}
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := state.WriteFile(filepath.Join(d.Host(), CapabilitiesFile), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("capabilities: %w", err)
	}
	return nil
}

// Entry is one proposal file as the host sees it: the proposal, or why it was refused,
// and the decision if there is one.
type Entry struct {
	N        int       `json:"n"`
	Proposal *Proposal `json:"proposal,omitempty"`
	// Refused says why the file is not a valid proposal (already Clean).
	Refused  string    `json:"refused,omitempty"`
	Decision *Decision `json:"decision,omitempty"`
}

// Pending reports whether the entry still waits for a person at now.
func (e *Entry) Pending(now time.Time) bool {
	return e.Decision == nil && e.Proposal != nil && now.Before(e.Proposal.Deadline)
}

// Entries reads every proposal file, in order. Files not named N.json are skipped (the
// sidecar's temporary files); a file that is not a valid proposal is an entry with
// Refused set.
func (d Dirs) Entries() ([]Entry, error) {
	des, err := os.ReadDir(d.Proposals())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("proposals: %w", err)
	}
	var out []Entry
	for _, de := range des {
		n, ok := proposalNumber(de.Name())
		if !ok {
			continue
		}
		if len(out) == MaxProposals {
			break
		}
		e := Entry{N: n}
		if p, err := d.readProposal(filepath.Join(d.Proposals(), de.Name())); err != nil {
			e.Refused = Clean(err.Error())
		} else if p.N != n {
			e.Refused = fmt.Sprintf("file %d.json holds proposal %d", n, p.N)
		} else if err := d.pin(p); err != nil {
			e.Refused = Clean(err.Error())
		} else {
			e.Proposal = p
		}
		if dec, err := d.readDecision(n); err == nil {
			e.Decision = dec
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].N < out[j].N })
	return out, nil
}

// pin keeps p as the host first read it, or refuses it when it differs from that: a
// person approves what they were shown, never what a sidecar wrote afterwards.
func (d Dirs) pin(p *Proposal) error {
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	path := d.pinned(p.N)
	pinned, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return fmt.Errorf("proposal %d: %w", p.N, err)
		}
		// Created, never replaced: when two host readers race, the first pin stands
		// and the other compares with it.
		if err := state.CreateFile(path, data, 0o644); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("proposal %d: %w", p.N, err)
		}
		pinned, err = os.ReadFile(path)
	}
	if err != nil {
		return fmt.Errorf("proposal %d: %w", p.N, err)
	}
	if !bytes.Equal(pinned, data) {
		return fmt.Errorf("proposal %d changed after bottle first read it (only a misbehaving supervise sidecar rewrites a proposal): deny it", p.N)
	}
	return nil
}

// Entry reads proposal n.
func (d Dirs) Entry(n int) (*Entry, error) {
	es, err := d.Entries()
	if err != nil {
		return nil, err
	}
	for i := range es {
		if es[i].N == n {
			return &es[i], nil
		}
	}
	return nil, fmt.Errorf("no proposal %d", n)
}

func (d Dirs) readProposal(path string) (*Proposal, error) {
	// The directory is the sidecar's: O_NOFOLLOW keeps a symlink there from making the
	// host read one of its own files, O_NONBLOCK a FIFO from making it wait forever.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open proposal: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("proposal is not a regular file")
	}
	return ReadProposal(f)
}

func (d Dirs) readDecision(n int) (*Decision, error) {
	data, err := os.ReadFile(d.decision(n))
	if err != nil {
		return nil, err
	}
	var dec Decision
	if err := json.Unmarshal(data, &dec); err != nil {
		return nil, fmt.Errorf("decision %d: %w", n, err)
	}
	return &dec, nil
}

// Decide records the decision on proposal dec.N; a proposal is decided once.
func (d Dirs) Decide(dec Decision) error {
	if _, err := os.Stat(d.decision(dec.N)); err == nil {
		return fmt.Errorf("proposal %d is already decided", dec.N)
	}
	data, err := json.Marshal(dec)
	if err != nil {
		return err
	}
	if err := state.WriteFile(d.decision(dec.N), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("decision %d: %w", dec.N, err)
	}
	return nil
}

// proposalNumber parses "N.json" with N a plain positive decimal.
func proposalNumber(name string) (int, bool) {
	s, ok := strings.CutSuffix(name, ".json")
	if !ok || s == "" || len(s) > 6 || s[0] == '0' {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || strconv.Itoa(n) != s {
		return 0, false
	}
	return n, true
}
