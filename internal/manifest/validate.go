package manifest

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/publicsuffix"

	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/envname"
	"github.com/bottle-dev/bottle/internal/gitgate"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/protect"
)

var (
	// nameRE is a bottle's name (an agent's is names.CheckAgentName).
	nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,23}$`)
)

// Limits of the agent's resources and user.
const (
	MaxMemoryMB = 1 << 20 // 1 TiB
	MinCPUs     = 0.01    // a CFS quota below 1 ms per 100 ms period is refused by the kernel
	MaxCPUs     = 1024
	// MaxID is the largest UID or GID: IDs from 2^31-1 up are the kernel's "no ID" (-1)
	// or overflow IDs that tools mishandle.
	MaxID = math.MaxInt32 - 1
)

// SSHKeyEnvPrefix, plus the remote's index, names the git-gate variable holding a remote's
// SSH private key.
const SSHKeyEnvPrefix = "BOTTLE_GIT_SSH_KEY_"

// generatedEnv are the environment names bottle sets itself in a bottle's containers
// (internal/plan) and names the sidecars' Go runtime reads; generatedEnvPrefixes the
// numbered ones. A credential's token_ref may not be one of them: the credential would
// replace bottle's value or be replaced by it. CLAUDE_CODE_OAUTH_TOKEN is not among them:
// the agent holds a placeholder under that name, the egress-proxy the real credential.
var (
	generatedEnv = []string{
		"HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NO_PROXY", "no_proxy",
		"BOTTLE_IDENTITY", "BOTTLE_SUPERVISE_URL", "ANTHROPIC_BASE_URL", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
		"DISABLE_ERROR_REPORTING", "GIT_CONFIG_COUNT",
		"GODEBUG", "GOGC", "GOMAXPROCS", "GOMEMLIMIT", "GOTRACEBACK", "SSL_CERT_FILE", "SSL_CERT_DIR",
	}
	generatedEnvPrefixes = []string{"GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_", SSHKeyEnvPrefix}
)

// GeneratedEnv reports whether bottle sets or reads the environment variable name itself.
func GeneratedEnv(name string) bool {
	return slices.Contains(generatedEnv, name) || slices.ContainsFunc(generatedEnvPrefixes, func(p string) bool { return strings.HasPrefix(name, p) })
}

// checkTokenRef checks the name of the host variable holding a credential.
func checkTokenRef(bad reporter, path, name string) {
	switch {
	case !envname.Valid(name):
		bad(path, fmt.Sprintf("invalid environment variable name %q", name), "use letters, digits and '_', not starting with a digit")
	case GeneratedEnv(name):
		bad(path, fmt.Sprintf("%q is a name bottle sets or reads itself in the containers", name), "keep the credential in a variable of your own, e.g. MY_API_TOKEN")
	}
}

// Runtime and filter choices accepted in a manifest (and by the matching flags).
var (
	RuntimeChoices = []string{"auto", "runsc", "runsc-runc", "runc"}
	FilterChoices  = []string{"auto", "pipelock", "builtin"}
)

// Validate checks the manifest and returns *Errors listing every problem, or nil.
func (m *Manifest) Validate(file string) error {
	errs := &Errors{}
	bad := func(path, problem, fix string) {
		errs.add(&FieldError{File: file, Path: path, Problem: problem, Fix: fix})
	}
	if len(m.Agents) == 0 {
		bad("agents", "no agent defined", "add an [agents.NAME] table (see `bottle manifest` for a starting file)")
	}
	for _, name := range sortedKeys(m.Bottles) {
		validateBottle(bad, name, m.Bottles[name])
	}
	for _, name := range sortedKeys(m.Agents) {
		validateAgent(bad, m, name, m.Agents[name])
	}
	return errs.orNil()
}

type reporter func(path, problem, fix string)

func validateAgent(bad reporter, m *Manifest, name string, a *Agent) {
	p := "agents." + name
	if err := names.CheckAgentName(name); err != nil {
		bad(p, err.Error(), "use 1-24 characters: lowercase letters, digits and '-', starting with a letter, with no '-' segment of 6 hex digits (bottle identities end in one)")
	}
	if a == nil {
		bad(p, "empty agent", "give it at least `bottle` and `image`")
		return
	}
	var bottle *Bottle
	switch {
	case a.Bottle == "":
		bad(p+".bottle", "agent has no bottle", "set `bottle = \"NAME\"` to one of the [bottles.NAME] tables")
	case m.Bottles[a.Bottle] == nil:
		bad(p+".bottle", fmt.Sprintf("unknown bottle %q", a.Bottle)+DidYouMean(a.Bottle, sortedKeys(m.Bottles)), "define [bottles."+a.Bottle+"] or use one of: "+strings.Join(sortedKeys(m.Bottles), ", "))
	default:
		bottle = m.Bottles[a.Bottle]
	}
	if strings.TrimSpace(a.Image) == "" {
		bad(p+".image", "agent has no image", "set `image = \"REFERENCE\"`")
	}
	for i, arg := range a.Command {
		if strings.ContainsRune(arg, 0) {
			bad(fmt.Sprintf("%s.command[%d]", p, i), "argument contains a NUL byte", "remove it")
		}
	}
	if strings.ContainsRune(a.Prompt, 0) {
		bad(p+".prompt", "prompt contains a NUL byte", "remove it")
	}
	for _, k := range sortedKeys(a.Env) {
		kp := p + ".env." + k
		if !envname.Valid(k) {
			bad(kp, fmt.Sprintf("invalid environment variable name %q", k), "use letters, digits and '_', not starting with a digit")
		}
		if strings.ContainsAny(a.Env[k], "\n\r\x00") {
			bad(kp, "value contains a newline or NUL byte", "environment values must be one line; put long text in the prompt or a file in the workspace")
		}
	}
	routed := map[string]string{}
	if bottle != nil {
		for i, r := range bottle.EgressProxy.Routes {
			if r != nil && r.TokenRef != "" {
				routed[r.TokenRef] = fmt.Sprintf("bottles.%s.egress_proxy.routes[%d].token_ref", a.Bottle, i)
			}
		}
		for i, g := range bottle.Git {
			if g != nil && g.TokenRef != "" {
				routed[g.TokenRef] = fmt.Sprintf("bottles.%s.git[%d].token_ref", a.Bottle, i)
			}
		}
	}
	seen := map[string]bool{}
	for _, list := range []struct {
		key   string
		names []string
	}{{"forward_env", a.ForwardEnv}, {"optional_env", a.OptionalEnv}} {
		for i, n := range list.names {
			np := fmt.Sprintf("%s.%s[%d]", p, list.key, i)
			switch {
			case !envname.Valid(n):
				bad(np, fmt.Sprintf("invalid environment variable name %q", n), "use letters, digits and '_', not starting with a digit")
			case seen[n]:
				bad(np, fmt.Sprintf("%q is forwarded twice", n), "list each name once, in forward_env or optional_env")
			case routed[n] != "":
				bad(np, fmt.Sprintf("%q is the credential of %s; a routed credential never enters the agent", n, routed[n]), "remove it from the agent's env: the sidecar injects it")
			}
			if _, lit := a.Env[n]; lit {
				bad(np, fmt.Sprintf("%q is both a literal and forwarded", n), "keep one of them")
			}
			seen[n] = true
		}
	}
	if a.User != "" {
		if _, _, err := ParseUser(a.User); err != nil {
			bad(p+".user", err.Error(), "use numeric \"UID:GID\" of a real user, e.g. \"1000:1000\"")
		}
	}
}

// ParseUser parses "uid:gid".
func ParseUser(s string) (uid, gid uint32, err error) {
	u, g, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, fmt.Errorf("user %q is not UID:GID", s)
	}
	uid64, err1 := strconv.ParseUint(u, 10, 32)
	gid64, err2 := strconv.ParseUint(g, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("user %q is not numeric UID:GID", s)
	}
	if uid64 > MaxID || gid64 > MaxID {
		return 0, 0, fmt.Errorf("user %q: UID and GID must be at most %d", s, MaxID)
	}
	return uint32(uid64), uint32(gid64), nil
}

func validateBottle(bad reporter, name string, b *Bottle) {
	p := "bottles." + name
	if !nameRE.MatchString(name) {
		bad(p, fmt.Sprintf("invalid bottle name %q", name), "use 1-24 characters: lowercase letters, digits and '-', starting with a letter")
	}
	if b == nil {
		return
	}
	for i, h := range b.Allowlist {
		if err := checkAllowlistEntry(h); err != nil {
			bad(fmt.Sprintf("%s.allowlist[%d]", p, i), err.Error(), "use a host name like \"api.github.com\", or a suffix pattern like \"*.github.com\" under a domain of one owner")
		}
	}
	if b.Runtime != "" && !slices.Contains(RuntimeChoices, b.Runtime) {
		bad(p+".runtime", fmt.Sprintf("unknown runtime %q", b.Runtime)+DidYouMean(b.Runtime, RuntimeChoices), "use one of: "+strings.Join(RuntimeChoices, ", "))
	}
	if b.SuperviseTimeout != "" {
		if d, err := time.ParseDuration(b.SuperviseTimeout); err != nil || d <= 0 {
			bad(p+".supervise_timeout", fmt.Sprintf("invalid duration %q", b.SuperviseTimeout), `write a positive Go duration such as "10m" or "90s"`)
		}
	}
	if b.Filter != "" && !slices.Contains(FilterChoices, b.Filter) {
		bad(p+".filter", fmt.Sprintf("unknown filter %q", b.Filter)+DidYouMean(b.Filter, FilterChoices), "use one of: "+strings.Join(FilterChoices, ", "))
	}
	switch mem := b.Resources.MemoryMB; {
	case mem < 0 || (mem > 0 && mem < 64):
		bad(p+".resources.memory_mb", fmt.Sprintf("memory_mb %d is too small", mem), "use at least 64, or leave it out for the default")
	case mem > MaxMemoryMB:
		bad(p+".resources.memory_mb", fmt.Sprintf("memory_mb %d is more than 1 TiB", mem), fmt.Sprintf("use at most %d, or leave it out for the default", MaxMemoryMB))
	}
	if cpus := b.Resources.CPUs; cpus != 0 && !(cpus >= MinCPUs && cpus <= MaxCPUs) { // NaN fails both
		bad(p+".resources.cpus", fmt.Sprintf("cpus %v is not a number of CPUs from %v to %d", cpus, MinCPUs, MaxCPUs), "use a number of CPUs such as 2 or 0.5, or leave it out for no limit")
	}
	if b.Resources.Pids < 0 || (b.Resources.Pids > 0 && b.Resources.Pids < 16) {
		bad(p+".resources.pids", fmt.Sprintf("pids %d is too small", b.Resources.Pids), "use at least 16, or leave it out for the default")
	}
	validateRoutes(bad, p+".egress_proxy.routes", b.EgressProxy.Routes)
	validateGit(bad, p+".git", b.Git)
	if b.Protect != nil {
		for i, path := range *b.Protect {
			if err := protect.CheckPath(path); err != nil {
				bad(fmt.Sprintf("%s.protect[%d]", p, i), err.Error(), "use a path relative to the workspace, like \".github/workflows\" (no \"..\", not absolute)")
			}
		}
	}
}

// reservedRouteHost is the egress-proxy's own path (GET /healthz), never a route.
const reservedRouteHost = "healthz"

func validateRoutes(bad reporter, p string, routes []*Route) {
	hosts := map[string]int{}
	singleton := map[string]int{}
	for i, r := range routes {
		rp := fmt.Sprintf("%s[%d]", p, i)
		if r == nil {
			continue
		}
		host := names.NormalizeHost(r.Host)
		if err := names.CheckHostName(host); err != nil {
			bad(rp+".host", err.Error(), "use the upstream's host name, e.g. \"api.anthropic.com\"")
		} else if host == reservedRouteHost {
			bad(rp+".host", fmt.Sprintf("%q is the egress-proxy's health check path, not a host", r.Host), "use the upstream's full host name")
		} else if j, dup := hosts[host]; dup {
			bad(rp+".host", fmt.Sprintf("duplicate route host %q (also %s[%d])", r.Host, p, j), "keep one route per host")
		} else {
			hosts[host] = i
		}
		if r.TokenRef == "" {
			bad(rp+".token_ref", "empty token_ref", "name the host environment variable that holds the credential, e.g. token_ref = \"MY_API_TOKEN\"")
		} else {
			checkTokenRef(bad, rp+".token_ref", r.TokenRef)
		}
		roles, err := rolesOf(r.Role)
		if err != nil {
			bad(rp+".role", err.Error(), "use a string or a list of strings from: "+strings.Join(KnownRoles, ", "))
		}
		for _, role := range roles {
			if !slices.Contains(KnownRoles, role) {
				bad(rp+".role", fmt.Sprintf("unknown role %q", role)+DidYouMean(role, KnownRoles), "use one of: "+strings.Join(KnownRoles, ", "))
				continue
			}
			if slices.Contains(SingletonRoles, role) {
				if j, dup := singleton[role]; dup {
					bad(rp+".role", fmt.Sprintf("role %q is already on %s[%d]; at most one route per bottle may carry it", role, p, j), "remove the role from one of the routes")
				} else {
					singleton[role] = i
				}
			}
		}
		if r.Header != "" {
			if err := egress.CheckCredentialHeader(r.Header); err != nil {
				bad(rp+".header", err.Error(), "use Authorization or the upstream's API key header, e.g. \"x-api-key\"")
			}
		}
		if err := egress.CheckCredentialScheme(r.Scheme); err != nil {
			bad(rp+".scheme", err.Error(), "use one word such as \"Bearer\", or \"none\" for a raw value")
		}
	}
}

// rolesOf decodes a role value: absent, a string, or a list of strings.
func rolesOf(v any) ([]string, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case string:
		return []string{x}, nil
	case []any:
		out := make([]string, 0, len(x))
		for i, e := range x {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("role list item %d is %s, not a string", i, tomlType(e))
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, fmt.Errorf("role is %s, not a string or a list of strings", tomlType(v))
}

func tomlType(v any) string {
	switch v.(type) {
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case map[string]any:
		return "a table"
	case []any:
		return "a list"
	}
	return fmt.Sprintf("a %T", v)
}

func validateGit(bad reporter, p string, remotes []*GitRemote) {
	names := map[string]bool{}
	for i, g := range remotes {
		gp := fmt.Sprintf("%s[%d]", p, i)
		if g == nil {
			continue
		}
		switch {
		case gitgate.CheckRemoteName(g.Name) != nil:
			bad(gp+".name", fmt.Sprintf("invalid remote name %q", g.Name), "use 1-64 letters, digits, '.', '_' and '-', starting with a letter or digit and not ending in .git, e.g. \"origin\"")
		case names[g.Name]:
			bad(gp+".name", fmt.Sprintf("duplicate remote name %q", g.Name), "give each remote its own name")
		}
		names[g.Name] = true
		u, err := parseGitURL(g.URL)
		if err != nil {
			bad(gp+".url", err.Error(), "use ssh://user@host[:port]/path.git, user@host:path.git or https://host[:port]/path.git")
		}
		kind := u.kind
		if kind == "ssh" && g.SSHKey == "" {
			bad(gp+".ssh_key", "ssh remote without ssh_key", "set ssh_key to the path of the private key file on the host")
		}
		const keyscan = "set known_hosts to the upstream's known_hosts line (e.g. from `ssh-keyscan HOST`, checked against the forge's published fingerprints); bottle never trusts a host key on first use"
		switch {
		case strings.ContainsRune(g.KnownHosts, 0):
			bad(gp+".known_hosts", "contains a NUL byte", keyscan)
		case kind == "ssh" && strings.TrimSpace(g.KnownHosts) == "":
			bad(gp+".known_hosts", "ssh remote without a pinned host key", keyscan)
		case kind == "ssh":
			if err := gitgate.CheckKnownHosts(g.KnownHosts, u.host, u.port); err != nil {
				bad(gp+".known_hosts", err.Error(), keyscan)
			}
		case kind == "https" && g.KnownHosts != "":
			bad(gp+".known_hosts", "known_hosts on an https remote", "remove it: TLS checks https upstreams")
		}
		if kind == "https" && g.SSHKey != "" {
			bad(gp+".ssh_key", "ssh_key on an https remote", "use token_ref for https remotes")
		}
		switch {
		case g.TokenRef != "":
			checkTokenRef(bad, gp+".token_ref", g.TokenRef)
		case kind == "https":
			bad(gp+".token_ref", "https remote without token_ref", "set token_ref to the host environment variable holding an HTTPS token for the repository")
		}
		if kind == "ssh" && g.TokenRef != "" {
			bad(gp+".token_ref", "token_ref on an ssh remote", "use ssh_key for ssh remotes")
		}
		for j, r := range g.Push {
			if r == nil {
				bad(fmt.Sprintf("%s.push[%d]", gp, j), "empty push rule", "give it a ref pattern like \"refs/heads/bottle/*\"")
			} else if err := gitgate.CheckRefPattern(r.Ref); err != nil {
				bad(fmt.Sprintf("%s.push[%d].ref", gp, j), err.Error(), "use a pattern like \"refs/heads/bottle/*\": a full ref name where '*' matches any run of characters")
			}
		}
		if len(g.PushOptions) > gitgate.MaxPushOptions {
			bad(gp+".push_options", fmt.Sprintf("%d push options, at most %d", len(g.PushOptions), gitgate.MaxPushOptions), "list only the options the agent needs, e.g. [\"ci.skip\"]")
		}
		for j, o := range g.PushOptions {
			if err := gitgate.CheckPushOption(o); err != nil {
				bad(fmt.Sprintf("%s.push_options[%d]", gp, j), err.Error(), "write the exact string `git push -o` sends, e.g. \"ci.skip\"")
			}
		}
	}
}

// gitURL is a parsed git remote URL: its kind ("ssh" or "https") and where it connects.
type gitURL struct{ kind, host, port string }

// parseGitURL accepts what git-gate accepts (ssh://user@host[:port]/path, user@host:path,
// https://host[:port]/path), and only host names or IP addresses as hosts.
func parseGitURL(raw string) (gitURL, error) {
	shown := redactGitURL(raw)
	if raw == "" {
		return gitURL{}, fmt.Errorf("empty git url")
	}
	if strings.ContainsFunc(raw, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return gitURL{}, fmt.Errorf("git url %q contains whitespace or control characters", shown)
	}
	if !strings.Contains(raw, "://") {
		_, host, _, ok := gitgate.SplitSCPLike(raw)
		if !ok || strings.HasPrefix(raw, "-") {
			return gitURL{}, fmt.Errorf("malformed git url %q", shown)
		}
		if err := checkHostName(host); err != nil {
			return gitURL{}, fmt.Errorf("git url %q: %v", shown, err)
		}
		return gitURL{kind: "ssh", host: host, port: "22"}, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return gitURL{}, fmt.Errorf("malformed git url %q: %v", shown, errors.Unwrap(err))
	}
	g := gitURL{kind: u.Scheme, host: u.Hostname(), port: u.Port()}
	switch u.Scheme {
	case "ssh":
		if u.User == nil || u.User.Username() == "" {
			return gitURL{}, fmt.Errorf("git url %q names no user (ssh://USER@host/path)", shown)
		}
		if _, pw := u.User.Password(); pw {
			return gitURL{}, fmt.Errorf("git url %q carries a password; use ssh_key instead", shown)
		}
		g.port = cmp.Or(g.port, "22")
	case "https":
		if u.User != nil {
			return gitURL{}, fmt.Errorf("git url %q carries credentials; use token_ref instead", shown)
		}
		g.port = cmp.Or(g.port, "443")
	default:
		return gitURL{}, fmt.Errorf("git url %q: scheme %q is not supported", shown, u.Scheme)
	}
	if g.host == "" || u.Path == "" || u.Path == "/" {
		return gitURL{}, fmt.Errorf("git url %q needs a host and a repository path", shown)
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(raw, "#") {
		return gitURL{}, fmt.Errorf("git url %q has a query or fragment, which git-gate cannot pass on", shown)
	}
	if err := checkHostName(g.host); err != nil && !isIPLiteral(g.host) {
		return gitURL{}, fmt.Errorf("git url %q: %v", shown, err)
	}
	if n, err := strconv.Atoi(g.port); err != nil || n < 1 || n > 65535 {
		return gitURL{}, fmt.Errorf("git url %q: port %s is not from 1 to 65535", shown, g.port)
	}
	return g, nil
}

// gitURLSecretRE finds what a git URL may carry as a secret: the user part of a
// scheme://user@ URL (a token as user name, or user:password), a user:password@ before an
// scp-like host, and a query or fragment.
var gitURLSecretRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@|^[^/@]*:[^/@]*@|[?#].*$`)

// redactGitURL is raw as error messages show it: a credential written into the URL is
// refused, and must not be printed with the refusal. An ssh:// user name without a
// password (ssh://git@host) is no secret and stays.
func redactGitURL(raw string) string {
	return gitURLSecretRE.ReplaceAllStringFunc(raw, func(m string) string {
		if m[0] == '?' || m[0] == '#' {
			return m[:1] + "<redacted>"
		}
		scheme, user, ok := strings.Cut(m, "://")
		if !ok {
			return "<redacted>@"
		}
		if strings.EqualFold(scheme, "ssh") && !strings.Contains(user, ":") {
			return m
		}
		return scheme + "://<redacted>@"
	})
}

func isIPLiteral(h string) bool {
	return strings.Count(h, ".") == 3 && strings.Trim(h, "0123456789.") == "" || strings.Contains(h, ":")
}

func checkAllowlistEntry(h string) error {
	if suffix, ok := strings.CutPrefix(h, "*."); ok {
		if err := checkHostName(suffix); err != nil {
			return fmt.Errorf("allowlist entry %q: %v", h, err)
		}
		suffix = names.NormalizeHost(suffix)
		if !strings.Contains(suffix, ".") {
			return fmt.Errorf("allowlist entry %q would allow a whole top-level domain", h)
		}
		if ps, _ := publicsuffix.PublicSuffix(suffix); ps == suffix {
			return fmt.Errorf("allowlist entry %q would allow every site under the public suffix %q, whose subdomains belong to different owners", h, suffix)
		}
		return nil
	}
	if err := checkHostName(h); err != nil {
		return fmt.Errorf("allowlist entry %q: %v", h, err)
	}
	return nil
}

// checkHostName accepts a host name as written in a manifest: any case, one trailing dot.
func checkHostName(h string) error { return names.CheckHostName(names.NormalizeHost(h)) }
