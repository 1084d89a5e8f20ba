package egress

import (
	"fmt"
	"strings"

	"github.com/bottle-dev/bottle/internal/names"
)

// Allowlist matches host names against exact names and "*.suffix" patterns.
// "*.x.com" matches x.com itself and any subdomain of it. Matching is ASCII
// case-insensitive and ignores one trailing dot on both patterns and hosts.
// The zero value matches nothing.
type Allowlist struct {
	exact    map[string]struct{}
	suffixes map[string]struct{} // "x.com" for pattern "*.x.com"
}

// NewAllowlist compiles patterns. A pattern is a DNS name, or "*." followed by a DNS
// name. Anything else ("*", "a.*.com", IP literals, ports, URLs) is an error: an
// allowlist that silently allows more than written would fail open.
func NewAllowlist(patterns []string) (*Allowlist, error) {
	a := &Allowlist{exact: map[string]struct{}{}, suffixes: map[string]struct{}{}}
	for _, p := range patterns {
		name, wildcard := strings.CutPrefix(p, "*.")
		name = names.NormalizeHost(name)
		if err := names.CheckHostName(name); err != nil {
			return nil, fmt.Errorf("allowlist entry %q: %w; write a host name (api.example.com) or a suffix pattern (*.example.com)", p, err)
		}
		if wildcard {
			a.suffixes[name] = struct{}{}
		} else {
			a.exact[name] = struct{}{}
		}
	}
	return a, nil
}

// Match reports whether host (a name without port) is allowed.
func (a *Allowlist) Match(host string) bool {
	if a == nil {
		return false
	}
	h := names.NormalizeHost(host)
	if names.CheckHostName(h) != nil {
		return false
	}
	if _, ok := a.exact[h]; ok {
		return true
	}
	// Walk the suffixes of h at label boundaries: a.b.x.com, b.x.com, x.com, com.
	for s := h; ; {
		if _, ok := a.suffixes[s]; ok {
			return true
		}
		i := strings.IndexByte(s, '.')
		if i < 0 {
			return false
		}
		s = s[i+1:]
	}
}
