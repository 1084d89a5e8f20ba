package egress

import (
	"fmt"
	"strings"
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
		name = normalizeHost(name)
		if err := checkHostName(name); err != nil {
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
	h := normalizeHost(host)
	if checkHostName(h) != nil {
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

// normalizeHost lower-cases ASCII letters and drops one trailing dot. Non-ASCII bytes
// are kept and later rejected by checkHostName (names must be in punycode).
func normalizeHost(h string) string {
	h = strings.TrimSuffix(h, ".")
	for i := 0; i < len(h); i++ {
		if c := h[i]; 'A' <= c && c <= 'Z' {
			b := []byte(h)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return h
}

// checkHostName accepts lower-case DNS names: dot-separated labels of 1..63 letters,
// digits, '-' and '_' (used by some service names), not starting or ending with '-',
// 253 bytes at most, whose last label starts with a letter. No top-level domain starts
// with a digit, and the rule refuses every IPv4 spelling a resolver might still accept
// ("127.1", "2130706433", "0x7f000001").
func checkHostName(h string) error {
	if h == "" {
		return fmt.Errorf("empty host name")
	}
	if len(h) > 253 {
		return fmt.Errorf("host name longer than 253 bytes")
	}
	if top := h[strings.LastIndexByte(h, '.')+1:]; top != "" && !('a' <= top[0] && top[0] <= 'z') {
		return fmt.Errorf("last label does not start with a letter (IP address literals are not allowed)")
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" {
			return fmt.Errorf("empty label in host name")
		}
		if len(label) > 63 {
			return fmt.Errorf("label longer than 63 bytes")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label starts or ends with '-'")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("invalid character %q in host name", c)
			}
		}
	}
	return nil
}
