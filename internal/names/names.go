// Package names owns every name bottle gives or reads: the bottle identity, the roles of
// its containers, the names of its containers and host objects, and the grammar of the
// host names a manifest, a flag or an agent's request may carry. Every other package asks
// here instead of keeping its own pattern, so the rules cannot drift apart.
package names

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// Prefix starts the name of every container, CNI network and netns file bottle makes.
const Prefix = "bottle-"

// Roles of a bottle's containers. Every container name ends in its role.
const (
	RoleAgent       = "agent"
	RoleFilter      = "filter"
	RoleEgressProxy = "egress-proxy"
	RoleGitGate     = "git-gate"
	RoleSupervise   = "supervise"
)

// Roles lists every role, the agent first.
var Roles = []string{RoleAgent, RoleFilter, RoleEgressProxy, RoleGitGate, RoleSupervise}

// Label keys put on every container (never secrets). LabelPrefix starts bottle's own;
// LabelName is the one nerdctl shows as the container's name.
const (
	LabelPrefix   = "bottle."
	LabelIdentity = LabelPrefix + "identity"
	LabelRole     = LabelPrefix + "role"
	LabelAgent    = LabelPrefix + "agent"
	LabelName     = "nerdctl/name"
)

// The two networks of a bottle.
const (
	NetInternal = "internal"
	NetEgress   = "egress"
)

const (
	agentPattern  = `[a-z][a-z0-9-]{0,23}`
	suffixPattern = `[0-9a-f]{6}`
)

var (
	agentRE    = regexp.MustCompile(`^` + agentPattern + `$`)
	suffixRE   = regexp.MustCompile(`^` + suffixPattern + `$`)
	identityRE = regexp.MustCompile(`^(` + agentPattern + `)-(` + suffixPattern + `)$`)
	// identitySegmentRE finds a "-xxxxxx" hex segment like the suffix of an identity.
	identitySegmentRE = regexp.MustCompile(`-` + suffixPattern + `(-|$)`)
	containerRE       = regexp.MustCompile(`^` + Prefix + `(` + agentPattern + `-` + suffixPattern + `)(?:-(` + strings.Join(Roles, "|") + `))?$`)
)

// CheckAgentName accepts an agent name: a lower-case letter, then up to 23 lower-case
// letters, digits and '-', with no segment that looks like an identity's suffix (an
// agent "a-123456" would make identities that read as another agent's).
func CheckAgentName(name string) error {
	if !agentRE.MatchString(name) {
		return fmt.Errorf("agent name %q: want a lower-case letter, then up to 23 lower-case letters, digits or '-'", name)
	}
	if identitySegmentRE.MatchString(name) {
		return fmt.Errorf("agent name %q has a segment of 6 hex digits, which reads like a bottle identity's suffix", name)
	}
	return nil
}

// Identity names one bottle: its agent's name, '-', and 6 lower-case hex digits.
type Identity string

// ParseIdentity checks an identity and returns it typed, or says why it is not one.
func ParseIdentity(s string) (Identity, error) {
	if !identityRE.MatchString(s) {
		return "", fmt.Errorf("%q is not a bottle identity (AGENT-xxxxxx); list bottles with `bottle ps`", s)
	}
	return Identity(s), nil
}

// NewIdentity joins an agent name and a suffix of 6 lower-case hex digits.
func NewIdentity(agent, suffix string) (Identity, error) {
	if err := CheckAgentName(agent); err != nil {
		return "", err
	}
	if !suffixRE.MatchString(suffix) {
		return "", fmt.Errorf("identity suffix %q is not 6 lower-case hex digits", suffix)
	}
	return Identity(agent + "-" + suffix), nil
}

// Agent is the agent name part of the identity.
func (id Identity) Agent() string { return string(id[:max(0, len(id)-len("-xxxxxx"))]) }

// String is the identity as written.
func (id Identity) String() string { return string(id) }

// Container is the containerd name of the bottle's container with role. Every name ends
// in a role because runsc also finds containers by ID prefix: no name may be a prefix of
// another.
func (id Identity) Container(role string) string { return Prefix + string(id) + "-" + role }

// IdentityOfContainer returns the identity in a container name Prefix<identity>[-<role>].
func IdentityOfContainer(name string) (Identity, bool) {
	m := containerRE.FindStringSubmatch(name)
	if m == nil {
		return "", false
	}
	return Identity(m[1]), true
}

// Attachment puts a container on one of its bottle's networks with a static address.
type Attachment struct {
	Network string     `json:"network"` // NetInternal or NetEgress
	IfName  string     `json:"ifname"`
	Address netip.Addr `json:"address"`
}

// HostEntry is one /etc/hosts line.
type HostEntry struct {
	Name string     `json:"name"`
	Addr netip.Addr `json:"addr"`
}

// ParseHostEntry reads NAME:IP, as --add-host takes it (a host name has no ':', so an
// IPv6 address may follow the first one).
func ParseHostEntry(s string) (HostEntry, error) {
	name, ip, ok := strings.Cut(s, ":")
	if !ok {
		return HostEntry{}, fmt.Errorf("hosts entry %q: want NAME:IP", s)
	}
	if err := CheckHostName(NormalizeHost(name)); err != nil {
		return HostEntry{}, fmt.Errorf("hosts entry %q: %w", s, err)
	}
	addr, err := netip.ParseAddr(strings.Trim(ip, "[]"))
	if err != nil {
		return HostEntry{}, fmt.Errorf("hosts entry %q: %w", s, err)
	}
	return HostEntry{Name: NormalizeHost(name), Addr: addr.Unmap()}, nil
}

// NormalizeHost is a host name as bottle compares it: ASCII letters in lower case, without
// one trailing dot. Other bytes are kept (CheckHostName refuses them: names are written
// in punycode).
func NormalizeHost(h string) string {
	h = strings.TrimSuffix(h, ".")
	b := []byte(h)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// CheckHostName accepts a normalized DNS host name (see NormalizeHost): dot-separated
// labels of 1..63 lower-case letters, digits, '-' and '_' (some service names use it),
// not starting or ending with '-', 253 bytes at most, whose last label starts with a
// letter. No top-level domain starts with a digit, and that rule refuses every IPv4
// spelling a resolver might still accept ("127.1", "2130706433", "0x7f000001"). IP
// literals, ports, wildcards and schemes are not host names.
func CheckHostName(h string) error {
	if h == "" {
		return fmt.Errorf("empty host name")
	}
	if len(h) > 253 {
		return fmt.Errorf("host name longer than 253 bytes")
	}
	if top := h[strings.LastIndexByte(h, '.')+1:]; top != "" && !('a' <= top[0] && top[0] <= 'z') {
		return fmt.Errorf("%q: its last label does not start with a letter (name hosts, not IP addresses)", h)
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" {
			return fmt.Errorf("%q: empty label", h)
		}
		if len(label) > 63 {
			return fmt.Errorf("%q: label longer than 63 bytes", h)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%q: label starts or ends with '-'", h)
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("%q: character %q is not allowed in a host name", h, c)
			}
		}
	}
	return nil
}
