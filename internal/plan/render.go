package plan

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
)

// EffectiveAllowlist is the bottle's allowlist plus every egress-proxy route host,
// lower-cased, without trailing dots, deduplicated and sorted.
func EffectiveAllowlist(b *manifest.Bottle) []string {
	set := map[string]bool{}
	for _, h := range b.Allowlist {
		set[names.NormalizeHost(h)] = true
	}
	for _, r := range b.EgressProxy.Routes {
		set[names.NormalizeHost(r.Host)] = true
	}
	out := make([]string, 0, len(set))
	for h := range set {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

// AllowlistSummary is a one-line summary of an allowlist for the start banner.
func AllowlistSummary(allow []string) string {
	const shown = 4
	switch {
	case len(allow) == 0:
		return "allowlist: empty (no outside host is reachable)"
	case len(allow) <= shown:
		return fmt.Sprintf("allowlist: %d host(s): %s", len(allow), strings.Join(allow, ", "))
	}
	return fmt.Sprintf("allowlist: %d hosts: %s, ... (+%d more; `bottle plan` lists all)", len(allow), strings.Join(allow[:shown], ", "), len(allow)-shown)
}

// Redacted returns a deep copy of the plan with every secret env value replaced by
// "<redacted>". Always print this, never the plan itself.
func (p *Plan) Redacted() *Plan {
	data, err := json.Marshal(p)
	if err != nil {
		panic(fmt.Sprintf("plan: marshal: %v", err)) // a Plan always marshals
	}
	var c Plan
	if err := json.Unmarshal(data, &c); err != nil {
		panic(fmt.Sprintf("plan: unmarshal: %v", err))
	}
	for _, ct := range c.Containers {
		secret := map[string]bool{}
		for _, n := range ct.SecretEnv {
			secret[n] = true
		}
		for i, kv := range ct.Spec.Process.Env {
			if k, _, ok := strings.Cut(kv, "="); ok && secret[k] {
				ct.Spec.Process.Env[i] = k + "=" + Redacted
			}
		}
	}
	return &c
}

// Container returns the plan's container with role, or nil.
func (p *Plan) Container(role string) *Container {
	for _, c := range p.Containers {
		if c.Role == role {
			return c
		}
	}
	return nil
}

// Summary is the human-readable plan (no env values at all).
func (p *Plan) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "bottle %s (agent %s, bottle %s, manifest %s)\n", p.Identity, p.Agent, p.Bottle, p.Manifest)
	fmt.Fprintf(&b, "runtime: %s   filter: %s\n", p.Runtime, p.Filter)
	ws := p.Workspace.Host
	if p.Workspace.Copy {
		ws += " (copied to " + p.Workspace.Source + ")"
	}
	fmt.Fprintf(&b, "workspace: %s -> /workspace\n", ws)
	for _, n := range p.Networks {
		fmt.Fprintf(&b, "network %s: %s", n.Kind, n.Subnet)
		if n.Gateway.IsValid() {
			fmt.Fprintf(&b, " via %s", n.Gateway)
		} else {
			b.WriteString(" (no gateway, no route out)")
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "allowlist (%d): %s\n", len(p.Allowlist), strings.Join(p.Allowlist, " "))
	for _, r := range p.Routes {
		fmt.Fprintf(&b, "route %s: credential from $%s into %s", r.Host, r.TokenRef, r.Header)
		if len(r.Roles) > 0 {
			fmt.Fprintf(&b, " (roles: %s)", strings.Join(r.Roles, ", "))
		}
		b.WriteString("\n")
	}
	b.WriteString("containers:\n")
	for _, c := range p.Containers {
		var addrs []string
		for _, a := range c.Attachments {
			addrs = append(addrs, a.Network+"="+a.Address.String())
		}
		envNames := make([]string, 0, len(c.Spec.Process.Env))
		for _, kv := range c.Spec.Process.Env {
			k, _, _ := strings.Cut(kv, "=")
			envNames = append(envNames, k)
		}
		fmt.Fprintf(&b, "  %-13s %s\n    image %s\n    net   %s\n    user  %d:%d\n    args  %s\n    env   %s\n", c.Role, c.Name, c.Image,
			strings.Join(addrs, " "), c.Spec.Process.User.UID, c.Spec.Process.User.GID, quoteArgs(c.Spec.Process.Args), strings.Join(envNames, " "))
	}
	if len(p.Unresolved) > 0 {
		fmt.Fprintf(&b, "warning: not set on this host (start would fail): %s\n", strings.Join(p.Unresolved, ", "))
	}
	for _, w := range p.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", w)
	}
	return b.String()
}

func quoteArgs(args []string) string {
	if len(args) == 0 {
		return "(image default)"
	}
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = strconv.Quote(a)
	}
	return strings.Join(q, " ")
}

// JSON renders the redacted plan as indented JSON (without HTML escaping, so redacted
// values read `<redacted>`).
func (p *Plan) JSON() ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(p.Redacted()); err != nil {
		return nil, fmt.Errorf("render plan: %w", err)
	}
	return buf.Bytes(), nil
}
