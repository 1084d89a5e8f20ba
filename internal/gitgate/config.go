package gitgate

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/envname"
	"github.com/bottle-dev/bottle/internal/hostfile"
)

// Config configures a git-gate. It decodes from JSON; Dial is a test hook only.
type Config struct {
	// Listen is the TCP address the sidecar serves the agent on (the caller binds it;
	// port 80, so remotes read http://git-gate/<name>.git).
	Listen string `json:"listen,omitempty"`
	// Remotes are the only repositories the agent can reach, as http://git-gate/<name>.git.
	Remotes []Remote `json:"remotes"`
	// CAFile is a PEM file of extra CAs trusted for HTTPS upstreams, besides the
	// system roots (tests, private forges).
	CAFile string `json:"ca_file,omitempty"`
	// MaxPushBytes caps one push request body (default DefaultMaxPushBytes).
	MaxPushBytes int64 `json:"max_push_bytes,omitempty"`
	// SpoolDir holds each push body while it is checked (default: the system temp
	// directory). Under gVisor a directory in the root filesystem costs memory.
	SpoolDir string `json:"spool_dir,omitempty"`
	// RulesFile holds approved PushRuleChanges; git-gate re-reads it while it serves.
	// Empty: the push rules are fixed.
	RulesFile string `json:"rules_file,omitempty"`
	// Dial, when set, replaces the TCP dialer for every upstream connection (tests
	// point upstream host names at loopback servers with it). The address keeps the
	// configured host name, so TLS and known_hosts are still checked against it.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error) `json:"-"`
	// Recorder receives one audit record per push decision (nil: none).
	Recorder audit.Recorder `json:"-"`
}

// Remote is one declared upstream repository.
type Remote struct {
	// Name is what the agent uses: http://git-gate/<Name>.git.
	Name string `json:"name"`
	// URL is the upstream: ssh://user@host[:port]/path, user@host:path (scp-like) or
	// https://host[:port]/path. It never holds a credential.
	URL string `json:"url"`
	// Kind is "ssh" or "https"; empty means "derive it from URL".
	Kind string `json:"kind,omitempty"`
	// TokenEnv names the gate's environment variable holding the HTTPS token.
	TokenEnv string `json:"token_env,omitempty"`
	// TokenUser is the basic-auth user sent with the token (default DefaultTokenUser).
	TokenUser string `json:"token_user,omitempty"`
	// SSHKeyEnv names the gate's environment variable holding the PEM private key.
	SSHKeyEnv string `json:"ssh_key_env,omitempty"`
	// KnownHosts holds the known_hosts line(s) pinning the SSH host key. Required for
	// SSH; a host key that matches no line is refused (no trust on first use).
	KnownHosts string `json:"known_hosts,omitempty"`
	// Push lists the refs the agent may push. Empty means DefaultPushRules.
	Push []PushRule `json:"push,omitempty"`
	// ReadOnly refuses every push to this remote (Push must then be empty).
	ReadOnly bool `json:"read_only,omitempty"`
	// PushOptions are the only push options (git push -o) passed to the upstream, each
	// matched exactly; empty refuses them all and hides the capability from the agent.
	PushOptions []string `json:"push_options,omitempty"`
}

// PushRule allows pushes to the refs matching Ref.
type PushRule struct {
	// Ref is a full ref name or a glob starting with "refs/"; '*' matches any run of
	// characters including '/', e.g. "refs/heads/bottle/*".
	Ref string `json:"ref"`
	// Force allows non-fast-forward updates.
	Force bool `json:"force,omitempty"`
	// Delete allows deleting matching refs.
	Delete bool `json:"delete,omitempty"`
}

const (
	// DefaultTokenUser is the basic-auth user name sent with HTTPS tokens (GitHub's
	// convention; most forges ignore the user for token auth).
	DefaultTokenUser = "x-access-token"
	// DefaultMaxPushBytes caps one push (commands and pack).
	DefaultMaxPushBytes int64 = 2 << 30
)

// DefaultPushRules apply to a remote that declares no push rules: the agent may create
// and fast-forward branches under bottle/, nothing else.
var DefaultPushRules = []PushRule{{Ref: "refs/heads/bottle/*"}}

const (
	kindSSH   = "ssh"
	kindHTTPS = "https"
)

var remoteNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// CheckRemoteName validates a remote's name, the NAME of http://git-gate/NAME.git (the
// manifest applies it too).
func CheckRemoteName(name string) error {
	if !remoteNameRE.MatchString(name) || strings.HasSuffix(name, ".git") {
		return fmt.Errorf("remote name %q: use 1-64 of A-Z a-z 0-9 . _ - (starting with a letter or digit, not ending in .git)", name)
	}
	return nil
}

// remoteAddr is a parsed upstream URL.
type remoteAddr struct {
	kind string
	// ssh
	user, host, port, path string
	// https
	base *url.URL
}

// display is the upstream as written in config, for messages (it holds no secret).
func (a remoteAddr) display() string {
	if a.kind == kindHTTPS {
		return a.base.String()
	}
	return fmt.Sprintf("ssh://%s@%s/%s", a.user, net.JoinHostPort(a.host, a.port), strings.TrimPrefix(a.path, "/"))
}

var scpLikeRE = regexp.MustCompile(`^([A-Za-z0-9._-]+)@([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):([^/].*|/.+)$`)

// SplitSCPLike splits an scp-like git URL, user@host:path, as git-gate reads it (the
// manifest applies it too); an IPv6 host is written in brackets, returned without them.
func SplitSCPLike(raw string) (user, host, path string, ok bool) {
	m := scpLikeRE.FindStringSubmatch(raw)
	if m == nil {
		return "", "", "", false
	}
	return m[1], strings.Trim(m[2], "[]"), m[3], true
}

// parseRemoteURL accepts ssh://user@host[:port]/path, user@host:path and
// https://host[:port]/path.
func parseRemoteURL(raw string) (remoteAddr, error) {
	if strings.ContainsFunc(raw, func(r rune) bool { return r < 0x20 || r == 0x7f || r == ' ' }) {
		return remoteAddr{}, fmt.Errorf("url holds spaces or control characters")
	}
	if strings.HasPrefix(raw, "ssh://") {
		u, err := url.Parse(raw)
		if err != nil {
			return remoteAddr{}, fmt.Errorf("url: %w", err)
		}
		if u.User == nil || u.User.Username() == "" {
			return remoteAddr{}, fmt.Errorf("url %q names no user; write ssh://git@host/path", raw)
		}
		if _, hasPass := u.User.Password(); hasPass {
			return remoteAddr{}, fmt.Errorf("url holds a password; put the key in ssh_key_env instead")
		}
		if u.Hostname() == "" || u.Path == "" || u.Path == "/" || u.RawQuery != "" || u.Fragment != "" {
			return remoteAddr{}, fmt.Errorf("url %q: write it as ssh://user@host[:port]/path", raw)
		}
		port := u.Port()
		if port == "" {
			port = "22"
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return remoteAddr{}, fmt.Errorf("url %q: bad port", raw)
		}
		path := u.Path
		// git sends ssh://host/~user/repo as "~user/repo" (home-relative).
		if strings.HasPrefix(path, "/~") {
			path = path[1:]
		}
		return remoteAddr{kind: kindSSH, user: u.User.Username(), host: u.Hostname(), port: port, path: path}, nil
	}
	if strings.HasPrefix(raw, "https://") {
		u, err := url.Parse(raw)
		if err != nil {
			return remoteAddr{}, fmt.Errorf("url: %w", err)
		}
		if u.User != nil {
			return remoteAddr{}, fmt.Errorf("url holds user information; put the token in token_env instead")
		}
		if u.Hostname() == "" || u.Path == "" || u.Path == "/" || u.RawQuery != "" || u.Fragment != "" {
			return remoteAddr{}, fmt.Errorf("url %q: write it as https://host[:port]/path", raw)
		}
		u.Path = strings.TrimSuffix(u.Path, "/")
		u.RawPath = ""
		return remoteAddr{kind: kindHTTPS, base: u}, nil
	}
	if strings.Contains(raw, "://") {
		return remoteAddr{}, fmt.Errorf("url %q: unsupported scheme; use ssh://, user@host:path or https://", raw)
	}
	user, host, path, ok := SplitSCPLike(raw)
	if !ok {
		return remoteAddr{}, fmt.Errorf("url %q: write it as user@host:path, ssh://user@host[:port]/path or https://host/path", raw)
	}
	return remoteAddr{kind: kindSSH, user: user, host: host, port: "22", path: path}, nil
}

// CheckPushOption validates one push option a remote allows (the manifest applies it too).
func CheckPushOption(o string) error {
	if o == "" || strings.ContainsFunc(o, func(r rune) bool { return r < ' ' || r > '~' }) {
		return fmt.Errorf("push option %q is empty or not printable ASCII", o)
	}
	return nil
}

// CheckRefPattern validates a push rule's ref glob (the manifest applies it too).
func CheckRefPattern(p string) error {
	if !strings.HasPrefix(p, "refs/") {
		return fmt.Errorf("ref %q must start with refs/, e.g. refs/heads/bottle/*", p)
	}
	if err := checkRefName(strings.ReplaceAll(p, "*", "x")); err != nil {
		return fmt.Errorf("ref %q: %w", p, err)
	}
	return nil
}

// checkRefName applies git's check-ref-format rules, and takes printable ASCII only
// (stricter than git, which also takes other bytes >= 0x80: a name must read the same
// to the gate, the upstream and the user), so a name that only looks allowed
// (refs/heads/bottle/../main, refs/heads/bottle/x<U+00A0>) never passes.
func checkRefName(name string) error {
	if !strings.HasPrefix(name, "refs/") || len(name) > 1024 {
		return fmt.Errorf("not a full ref name (refs/...)")
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c > '~' || strings.IndexByte("~^:?*[\\", c) >= 0 {
			return fmt.Errorf("byte 0x%02x at offset %d: use printable ASCII without spaces or any of ~^:?*[\\", c, i)
		}
	}
	if strings.Contains(name, "..") || strings.Contains(name, "@{") || strings.HasSuffix(name, ".") {
		return fmt.Errorf(`holds ".." or "@{", or ends with "."`)
	}
	for _, c := range strings.Split(name, "/") {
		if c == "" || strings.HasPrefix(c, ".") || strings.HasSuffix(c, ".lock") {
			return fmt.Errorf(`a component is empty, starts with "." or ends with ".lock"`)
		}
	}
	return nil
}

// globMatch matches name against pattern where '*' matches any run of characters,
// '/' included.
func globMatch(pattern, name string) bool {
	i := strings.IndexByte(pattern, '*')
	if i < 0 {
		return pattern == name
	}
	if !strings.HasPrefix(name, pattern[:i]) {
		return false
	}
	tail, name := pattern[i+1:], name[i:]
	for j := 0; j <= len(name); j++ {
		if globMatch(tail, name[j:]) {
			return true
		}
	}
	return false
}

// readSecret reads one credential through getenv, naming only the variable on error.
func readSecret(getenv func(string) string, field, name string) (string, error) {
	if !envname.Valid(name) {
		return "", fmt.Errorf("%s %q is not an environment variable name", field, name)
	}
	v := getenv(name)
	if v == "" {
		return "", fmt.Errorf("environment variable %s (%s) is unset or empty; export it on the host before starting the bottle", name, field)
	}
	return v, nil
}

func basicAuth(user, token string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+token))
}

func tlsConfig(caFile string) (*tls.Config, error) {
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if caFile != "" {
		pem, err := hostfile.ReadPEM(caFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s holds no PEM certificate", caFile)
		}
	}
	return &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, nil
}
