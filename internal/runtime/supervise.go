package runtime

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/gitgate"
	"github.com/bottle-dev/bottle/internal/hostenv"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/state"
	"github.com/bottle-dev/bottle/internal/supervise"
)

// prepareSupervise makes a supervised bottle's supervise directories and writes its
// capabilities from the plan, keeping the changes approved before (a resume).
func (e *Engine) prepareSupervise(p *plan.Plan) error {
	if p.Container(names.RoleSupervise) == nil {
		return nil
	}
	dirs := plan.SuperviseDirs(e.opts.StateDir, p.Identity)
	if err := dirs.Prepare(plan.SidecarUID); err != nil {
		return err
	}
	agent := p.Container(names.RoleAgent)
	caps := &supervise.Capabilities{
		Filter:     p.Filter,
		AgentImage: agent.Image,
		Dockerfile: supervise.BaseDockerfile(agent.Image),
		Allowlist:  p.Allowlist,
	}
	prev, err := dirs.ReadCapabilities()
	if err == nil {
		caps.Changes = prev.Changes
		caps.ApprovedRoutes = prev.ApprovedRoutes // the plan has them already (withApprovedRoutes)
		if prev.AgentImage != "" && prev.Dockerfile != supervise.BaseDockerfile(prev.AgentImage) {
			// An approved Dockerfile: the agent now runs on the image built from it, but a
			// new proposal is again a whole file FROM the base image it names.
			caps.AgentImage, caps.Dockerfile = prev.AgentImage, prev.Dockerfile
		}
	}
	for _, r := range p.Routes {
		caps.Routes = append(caps.Routes, supervise.RouteInfo{Host: r.Host, Header: r.Header})
	}
	for _, f := range p.StageFiles {
		if f.Name != "git-gate/config.json" {
			continue
		}
		var cfg gitgate.Config
		if err := json.Unmarshal([]byte(f.Content), &cfg); err != nil {
			return fmt.Errorf("git-gate config of %s: %w", p.Identity, err)
		}
		for _, r := range cfg.Remotes {
			g := supervise.GitInfo{Name: r.Name}
			for _, pr := range r.Push {
				g.Push = append(g.Push, supervise.GitRuleChange{Remote: r.Name, Ref: pr.Ref, Force: pr.Force, Delete: pr.Delete})
			}
			caps.Git = append(caps.Git, g)
		}
	}
	if prev != nil {
		// Approved push rules of remotes the manifest still declares (git-gate refuses
		// rules for others).
		for name, rules := range prev.GitChanges.Remotes {
			if slices.ContainsFunc(caps.Git, func(g supervise.GitInfo) bool { return g.Name == name }) {
				if caps.GitChanges.Remotes == nil {
					caps.GitChanges.Remotes = map[string][]gitgate.PushRule{}
				}
				caps.GitChanges.Remotes[name] = rules
			}
		}
	}
	if p.Filter == plan.FilterPipelock && prev != nil {
		// pipelock reads approved changes only from its config, rendered now.
		cfg := plan.PipelockConfig(caps.Effective(time.Now()), egress.DefaultInternal)
		if err := state.WriteFile(filepath.Join(p.StageDir, pipelockStageFile), []byte(cfg), 0o644); err != nil {
			return fmt.Errorf("pipelock config of %s: %w", p.Identity, err)
		}
	}
	return dirs.WriteCapabilities(caps)
}

// superviseDirs is bottle id's supervise directory, after checking the bottle exists
// and is supervised. It needs no containerd.
func superviseDirs(opts Options, id names.Identity) (supervise.Dirs, error) {
	e := newEngine(opts.withDefaults(), nil, nil)
	if _, err := e.store.Load(id); err != nil {
		return supervise.Dirs{}, err
	}
	dirs := plan.SuperviseDirs(e.opts.StateDir, id)
	if _, err := os.Stat(dirs.Root); err != nil {
		return dirs, fmt.Errorf("bottle %s is not supervised (its bottle sets no supervise = true)", id)
	}
	return dirs, nil
}

// Proposals lists bottle id's proposals, oldest first.
func Proposals(opts Options, id names.Identity) ([]supervise.Entry, error) {
	dirs, err := superviseDirs(opts, id)
	if err != nil {
		return nil, err
	}
	return dirs.Entries()
}

// ProposalView is a proposal as a person reads it: every string of the agent's is
// Clean, and the change is shown as before and after (a Dockerfile as a unified diff).
func ProposalView(opts Options, id names.Identity, en supervise.Entry, now time.Time) string {
	var b strings.Builder
	status := "pending"
	switch {
	case en.Refused != "":
		status = "refused"
	case en.Decision != nil:
		status = en.Decision.Decision
	case !en.Pending(now):
		status = "timed out (denied)"
	}
	if en.Proposal == nil {
		fmt.Fprintf(&b, "#%d %s: not a valid proposal: %s\n", en.N, status, supervise.Clean(en.Refused))
		return b.String()
	}
	p := en.Proposal
	fmt.Fprintf(&b, "#%d %s %s (%s)\n", en.N, p.Kind, status, p.Created.Local().Format(time.DateTime))
	for _, line := range strings.Split(supervise.Clean(p.Justification), "\n") {
		fmt.Fprintf(&b, "  why: %s\n", line)
	}
	if en.Decision != nil && en.Decision.Reason != "" {
		fmt.Fprintf(&b, "  reason: %s\n", supervise.Clean(en.Decision.Reason))
	}
	var caps *supervise.Capabilities
	if dirs, err := superviseDirs(opts, id); err == nil {
		caps, _ = dirs.ReadCapabilities()
	}
	if caps == nil {
		caps = &supervise.Capabilities{}
	}
	indent := func(s string) {
		for _, line := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
			fmt.Fprintf(&b, "  %s\n", line)
		}
	}
	switch {
	case p.Allowlist != nil:
		before := caps.Effective(now)
		indent(supervise.ListDiff("allowlist", before, applyAllowlist(before, p.Allowlist)))
	case p.Route != nil:
		var before, after []string
		for _, r := range caps.Routes {
			before = append(before, r.Host+" ("+r.Header+")")
		}
		after = append(slices.Clone(before), fmt.Sprintf("%s (%s, credential from $%s)", p.Route.Host, cmpOr(p.Route.Header, "Authorization"), p.Route.TokenRef))
		indent(supervise.ListDiff("routes", before, after))
	case p.GitRule != nil:
		var before []string
		for _, g := range caps.GitInForce() {
			if g.Name == p.GitRule.Remote {
				for _, r := range g.Push {
					before = append(before, pushRule(r))
				}
			}
		}
		indent(supervise.ListDiff("push rules of "+p.GitRule.Remote, before, append(slices.Clone(before), pushRule(*p.GitRule))))
	case p.Dockerfile != nil:
		indent(supervise.Clean(supervise.UnifiedDiff("Dockerfile (now)", "Dockerfile (proposed)", caps.Dockerfile, p.Dockerfile.Content)))
	}
	return b.String()
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func pushRule(r supervise.GitRuleChange) string {
	s := r.Ref
	if r.Force {
		s += " +force"
	}
	if r.Delete {
		s += " +delete"
	}
	return s
}

// applyAllowlist is list after change c.
func applyAllowlist(list []string, c *supervise.AllowlistChange) []string {
	out := slices.DeleteFunc(slices.Clone(list), func(e string) bool { return slices.Contains(c.Remove, e) })
	for _, a := range c.Add {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// ApproveOptions are how a person approves.
type ApproveOptions struct {
	// For limits an allowlist grant; zero is for good.
	For time.Duration
	// Reason is passed to the agent.
	Reason string
	// Progress receives an image build's output.
	Progress io.Writer
	// Save also writes an approved allowlist change into the manifest (SaveAllowlist).
	Save bool
}

// Approved is an approval as applied.
type Approved struct {
	supervise.Decision
	// Saved: the change is written into the manifest; else Snippet, when set, is what
	// to paste into it.
	Saved   bool
	Snippet string
}

// Approve applies proposal n of bottle id and tells the agent. Allowlist and push rule
// changes go into the changes files the builtin filter and git-gate re-read by
// themselves (a grant with For expires in the filter, with no bottle process running);
// a Dockerfile change is built and the agent restarted on it. The change is recorded in the bottle's supervise state, so
// it survives stop and resume.
func Approve(ctx context.Context, opts Options, id names.Identity, n int, ao ApproveOptions) (*Approved, error) {
	dirs, err := superviseDirs(opts, id)
	if err != nil {
		return nil, err
	}
	unlock, err := lockDecisions(dirs)
	if err != nil {
		return nil, err
	}
	defer unlock()
	en, err := dirs.Entry(n)
	if err != nil {
		return nil, fmt.Errorf("bottle %s: %w", id, err)
	}
	switch {
	case en.Proposal == nil:
		return nil, fmt.Errorf("proposal %d of %s is not valid and cannot be approved: %s", n, id, en.Refused)
	case en.Decision != nil:
		return nil, fmt.Errorf("proposal %d of %s is already %s", n, id, en.Decision.Decision)
	}
	// The marker comes before the deadline check: a sidecar that reaches the deadline
	// after the check sees it and waits for this approval instead of denying.
	applied, err := dirs.MarkApplying(n)
	if err != nil {
		return nil, err
	}
	defer applied()
	now := time.Now().UTC()
	if !en.Pending(now) {
		return nil, fmt.Errorf("proposal %d of %s timed out (the agent was told it is denied); ask the agent to propose again", n, id)
	}
	p := en.Proposal
	if ao.For != 0 && p.Allowlist == nil {
		return nil, fmt.Errorf("--for applies to allowlist proposals; proposal %d is a %s change", n, p.Kind)
	}
	if ao.Save && (p.Allowlist == nil || ao.For != 0) {
		return nil, fmt.Errorf("--save applies to allowlist changes approved for good (without --for)")
	}
	if ao.For < 0 {
		return nil, fmt.Errorf("--for %v: must be positive", ao.For)
	}
	caps, err := dirs.ReadCapabilities()
	if err != nil {
		return nil, err
	}
	dec := supervise.Decision{N: n, Decision: supervise.DecisionApproved, Reason: ao.Reason, Decided: now}
	switch {
	case p.Allowlist != nil:
		if err := allowlistApplies(id, caps.Filter, ao.For); err != nil {
			return nil, err
		}
		if ao.For > 0 {
			dec.Until = now.Add(ao.For)
		}
		applyAllowlistChange(caps, p.Allowlist, dec.Until)
		if caps.Filter == plan.FilterPipelock {
			e, err := Open(ctx, opts)
			if err != nil {
				return nil, err
			}
			defer e.Close()
			if err := e.applyPipelock(ctx, id, caps, now); err != nil {
				return nil, fmt.Errorf("proposal %d of %s: %w", n, id, err)
			}
		}
		if err := dirs.WriteCapabilities(caps); err != nil {
			return nil, err
		}
	case p.Route != nil:
		e, err := Open(ctx, opts)
		if err != nil {
			return nil, err
		}
		defer e.Close()
		if err := e.approveRoute(ctx, id, p.Route, caps); err != nil {
			return nil, fmt.Errorf("proposal %d of %s: %w", n, id, err)
		}
		if err := dirs.WriteCapabilities(caps); err != nil {
			return nil, err
		}
	case p.Dockerfile != nil:
		if err := supervise.CheckDockerfile(p.Dockerfile.Content, caps.AgentImage); err != nil {
			return nil, fmt.Errorf("proposal %d: %w", n, err)
		}
		e, err := Open(ctx, opts)
		if err != nil {
			return nil, err
		}
		defer e.Close()
		ref, err := e.ApplyAgentDockerfile(ctx, id, p.Dockerfile.Content, ao.Progress)
		if err != nil {
			return nil, fmt.Errorf("proposal %d of %s: %w", n, id, err)
		}
		// The next Dockerfile builds on this image: show it as the base, with what
		// made it.
		caps.AgentImage = ref
		caps.Dockerfile = builtFrom(ref, p.Dockerfile.Content)
		if err := dirs.WriteCapabilities(caps); err != nil {
			return nil, err
		}
		dec.Reason = strings.TrimSpace(dec.Reason + " (image " + ref + ")")
	case p.GitRule != nil:
		r := p.GitRule
		if !slices.ContainsFunc(caps.Git, func(g supervise.GitInfo) bool { return g.Name == r.Remote }) {
			return nil, fmt.Errorf("proposal %d: bottle %s has no git remote %q", n, id, r.Remote)
		}
		if caps.GitChanges.Remotes == nil {
			caps.GitChanges.Remotes = map[string][]gitgate.PushRule{}
		}
		caps.GitChanges.Remotes[r.Remote] = append(caps.GitChanges.Remotes[r.Remote], gitgate.PushRule{Ref: r.Ref, Force: r.Force, Delete: r.Delete})
		if err := dirs.WriteCapabilities(caps); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("proposal %d is a %s change, which this version of bottle cannot apply: deny it", n, p.Kind)
	}
	if err := dirs.Decide(dec); err != nil {
		return nil, err
	}
	recordDecision(opts, id, p, dec)
	out := &Approved{Decision: dec}
	if ao.Save {
		if out.Saved, out.Snippet, err = SaveAllowlist(opts, id, p.Allowlist.Add, p.Allowlist.Remove); err != nil {
			return out, fmt.Errorf("proposal %d is approved and in force, but saving it in the manifest failed: %w", n, err)
		}
	}
	return out, nil
}

// allowlistApplies says whether an allowlist change can be applied with filter: the
// builtin filter re-reads its changes (and ends a grant by itself); pipelock is restarted
// with them, so a grant --for, which would need another restart when it ends, is refused.
func allowlistApplies(id names.Identity, filter string, grantFor time.Duration) error {
	switch {
	case filter == plan.FilterBuiltin:
		return nil
	case filter != plan.FilterPipelock:
		return fmt.Errorf("bottle %s uses the %s filter; allowlist changes are applied by the builtin filter and pipelock only", id, filter)
	case grantFor > 0:
		return refusePipelockFor(id)
	}
	return nil
}

// applyAllowlistChange records an approved change: added entries become grants (until
// the given time, or for good), removed ones are removed from the configured list
// and from the grants.
func applyAllowlistChange(caps *supervise.Capabilities, c *supervise.AllowlistChange, until time.Time) {
	ch := &caps.Changes
	for _, r := range c.Remove {
		ch.Add = slices.DeleteFunc(ch.Add, func(g egress.AllowlistGrant) bool { return g.Pattern == r })
		if slices.Contains(caps.Allowlist, r) && !slices.Contains(ch.Remove, r) {
			ch.Remove = append(ch.Remove, r)
		}
	}
	for _, a := range c.Add {
		ch.Remove = slices.DeleteFunc(ch.Remove, func(r string) bool { return r == a })
		ch.Add = slices.DeleteFunc(ch.Add, func(g egress.AllowlistGrant) bool { return g.Pattern == a })
		ch.Add = append(ch.Add, egress.AllowlistGrant{Pattern: a, Until: until})
	}
}

// Deny refuses proposal n of bottle id with reason (passed to the agent).
func Deny(opts Options, id names.Identity, n int, reason string) (*supervise.Decision, error) {
	dirs, err := superviseDirs(opts, id)
	if err != nil {
		return nil, err
	}
	unlock, err := lockDecisions(dirs)
	if err != nil {
		return nil, err
	}
	defer unlock()
	en, err := dirs.Entry(n)
	if err != nil {
		return nil, fmt.Errorf("bottle %s: %w", id, err)
	}
	if en.Decision != nil {
		return nil, fmt.Errorf("proposal %d of %s is already %s", n, id, en.Decision.Decision)
	}
	dec := supervise.Decision{N: n, Decision: supervise.DecisionDenied, Reason: reason, Decided: time.Now().UTC()}
	if err := dirs.Decide(dec); err != nil {
		return nil, err
	}
	recordDecision(opts, id, en.Proposal, dec)
	return &dec, nil
}

// lockDecisions serializes the decisions of one bottle: an approval checks, applies
// (which may build an image for minutes) and records its decision under the lock, so a
// deny meanwhile waits and then finds the proposal decided, and two approvals never
// write the capabilities over each other.
func lockDecisions(dirs supervise.Dirs) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dirs.Root, "decide.lock"), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("supervise lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("supervise lock: %w", err)
	}
	return func() { f.Close() }, nil
}

// builtFrom is the Dockerfile the agent sees for an image bottle built: FROM that image,
// after the approved Dockerfile it was built from as comments.
func builtFrom(ref, dockerfile string) string {
	var b strings.Builder
	b.WriteString("# " + ref + " was built from this approved Dockerfile:\n")
	for _, l := range strings.Split(strings.TrimRight(dockerfile, "\n"), "\n") {
		b.WriteString("#   " + l + "\n")
	}
	b.WriteString(supervise.BaseDockerfile(ref))
	return b.String()
}

// recordDecision adds the decision, with who made it, to the bottle's audit trail (best
// effort: the decision itself is already in force). The proposal's own record, with the
// answer the agent got, comes from the supervise sidecar.
func recordDecision(opts Options, id names.Identity, p *supervise.Proposal, dec supervise.Decision) {
	lookup := opts.LookupEnv
	if lookup == nil {
		lookup = os.LookupEnv
	}
	fields := map[string]any{"n": dec.N, "decision": dec.Decision, "reason": dec.Reason, "user": hostenv.HostUser(lookup)}
	if p != nil {
		fields["change"] = p.Kind
	}
	if !dec.Until.IsZero() {
		fields["until"] = dec.Until
	}
	_ = audit.Open(audit.Dir(opts.withDefaults().StateDir, id)).Append(audit.SourceHost, "decision", fields)
}

// SupervisedBottles are the bottles with a supervise directory, in the store's order.
func SupervisedBottles(opts Options) ([]names.Identity, error) {
	e := newEngine(opts.withDefaults(), nil, nil)
	metas, _, err := e.store.List()
	if err != nil {
		return nil, err
	}
	var ids []names.Identity
	for _, m := range metas {
		if _, err := os.Stat(plan.SuperviseDirs(e.opts.StateDir, m.Identity).Root); err == nil {
			ids = append(ids, m.Identity)
		}
	}
	return ids, nil
}

// announceProposals logs one line for each proposal that arrives while an attached start
// runs, so the person at that terminal knows to look (`bottle proposals ID`).
func (e *Engine) announceProposals(ctx context.Context, id names.Identity) {
	dirs := plan.SuperviseDirs(e.opts.StateDir, id)
	seen := map[int]bool{}
	if es, err := dirs.Entries(); err == nil {
		for _, en := range es {
			seen[en.N] = true
		}
	}
	announce := func() {
		es, err := dirs.Entries()
		if err != nil {
			return
		}
		for _, en := range es {
			if seen[en.N] {
				continue
			}
			seen[en.N] = true
			kind := "invalid"
			if en.Proposal != nil {
				kind = en.Proposal.Kind
			}
			e.log.Info(fmt.Sprintf("the agent proposes a change (#%d, %s): see `bottle proposals %s`, then `bottle approve %s %d` or `bottle deny %s %d`", en.N, kind, id, id, en.N, id, en.N))
		}
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			// A proposal decided within the last tick is still said once.
			announce()
			return
		case <-t.C:
			announce()
		}
	}
}
