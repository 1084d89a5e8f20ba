// Package manifest decodes and validates bottle manifests (TOML).
//
// A manifest names agents and the bottles they run in. Decoding is strict: an unknown key
// is an error naming the key. Validation collects every problem with the file and the field
// path (e.g. `bottles.dev.egress_proxy.routes[1].role`) and a hint on how to fix it.
package manifest

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2"

	"github.com/bottle-dev/bottle/internal/hostfile"
)

// Manifest is the decoded manifest file.
type Manifest struct {
	Agents  map[string]*Agent  `toml:"agents" json:"agents"`
	Bottles map[string]*Bottle `toml:"bottles" json:"bottles"`
}

// Agent is one runnable agent.
type Agent struct {
	// Bottle names the bottle (sandbox policy) this agent runs in.
	Bottle string `toml:"bottle" json:"bottle"`
	// Image is the agent's image reference.
	Image string `toml:"image" json:"image"`
	// Command is the agent's default command (argv); empty means the image's default.
	Command []string `toml:"command" json:"command,omitempty"`
	// Prompt is written to a stage file the agent can read at /run/bottle/prompt.txt.
	Prompt string `toml:"prompt" json:"prompt,omitempty"`
	// Env holds literal values written in the manifest.
	Env map[string]string `toml:"env" json:"env,omitempty"`
	// ForwardEnv names host environment variables whose values are read at start.
	ForwardEnv []string `toml:"forward_env" json:"forward_env,omitempty"`
	// OptionalEnv is like ForwardEnv but an unset name is skipped instead of an error.
	OptionalEnv []string `toml:"optional_env" json:"optional_env,omitempty"`
	// User is "uid:gid" for the agent process; default 1000:1000.
	User string `toml:"user" json:"user,omitempty"`
}

// Bottle is the sandbox policy an agent runs in.
type Bottle struct {
	// Allowlist holds host names (or `*.suffix`) the agent may reach through the filter.
	Allowlist []string `toml:"allowlist" json:"allowlist,omitempty"`
	// EgressProxy holds credential-injection routes.
	EgressProxy EgressProxy `toml:"egress_proxy" json:"egress_proxy"`
	// Git holds the remotes served by git-gate.
	Git []*GitRemote `toml:"git" json:"git,omitempty"`
	// Supervise enables the supervise sidecar.
	Supervise bool `toml:"supervise" json:"supervise"`
	// SuperviseTimeout is how long a proposal waits for a person before it is denied
	// (a Go duration such as "10m"; default 10m).
	SuperviseTimeout string `toml:"supervise_timeout" json:"supervise_timeout,omitempty"`
	// Runtime is auto | runsc | runsc-runc | runc.
	Runtime string `toml:"runtime" json:"runtime,omitempty"`
	// Filter is auto | pipelock | builtin.
	Filter string `toml:"filter" json:"filter,omitempty"`
	// PipelockImage overrides the pinned pipelock image.
	PipelockImage string `toml:"pipelock_image" json:"pipelock_image,omitempty"`
	// Resources limits the agent container.
	Resources Resources `toml:"resources" json:"resources"`
	// Protect lists workspace paths the agent gets read-only besides the default
	// (.git/hooks, .git/config); unset is the default, an empty list turns it off.
	Protect *[]string `toml:"protect" json:"protect,omitempty"`
}

// EgressProxy is the egress-proxy section of a bottle.
type EgressProxy struct {
	Routes []*Route `toml:"routes" json:"routes,omitempty"`
}

// Route is one egress-proxy credential-injection route.
type Route struct {
	// Host is the upstream host name.
	Host string `toml:"host" json:"host"`
	// TokenRef names the host environment variable that holds the real credential.
	TokenRef string `toml:"token_ref" json:"token_ref"`
	// Role is a string or a list of strings (see KnownRoles); decoded by Roles().
	Role any `toml:"role" json:"role,omitempty"`
	// Header is the header the credential is injected into (default Authorization).
	Header string `toml:"header" json:"header,omitempty"`
	// Scheme prefixes the credential (default "Bearer"; "none" injects the raw value).
	Scheme string `toml:"scheme" json:"scheme,omitempty"`
}

// GitRemote is one remote served to the agent by git-gate.
type GitRemote struct {
	Name string `toml:"name" json:"name"`
	URL  string `toml:"url" json:"url"`
	// SSHKey is the path of an SSH private key file on the host (ssh remotes).
	SSHKey string `toml:"ssh_key" json:"ssh_key,omitempty"`
	// TokenRef names a host env var holding an HTTPS token (https remotes).
	TokenRef string `toml:"token_ref" json:"token_ref,omitempty"`
	// KnownHosts is the known_hosts line(s) pinning the SSH host key.
	KnownHosts string `toml:"known_hosts" json:"known_hosts,omitempty"`
	// Push lists ref patterns the agent may push; default refs/heads/bottle/*.
	Push []*PushRule `toml:"push" json:"push,omitempty"`
	// PushOptions are the only `git push -o` options passed upstream (exact strings).
	PushOptions []string `toml:"push_options" json:"push_options,omitempty"`
}

// PushRule allows pushes to refs matching Ref.
type PushRule struct {
	Ref    string `toml:"ref" json:"ref"`
	Force  bool   `toml:"force" json:"force,omitempty"`
	Delete bool   `toml:"delete" json:"delete,omitempty"`
}

// Resources are limits of the agent container; zero means the default.
type Resources struct {
	MemoryMB int64   `toml:"memory_mb" json:"memory_mb,omitempty"`
	CPUs     float64 `toml:"cpus" json:"cpus,omitempty"`
	Pids     int64   `toml:"pids" json:"pids,omitempty"`
}

// Role markers a route can carry.
const (
	// RoleClaudeCodeOAuth marks the route that carries Claude Code's OAuth credential:
	// the agent gets a placeholder token and the egress-proxy injects the real one.
	RoleClaudeCodeOAuth = "claude_code_oauth"
)

// KnownRoles lists every accepted role; SingletonRoles may appear on one route per bottle.
var (
	KnownRoles     = []string{RoleClaudeCodeOAuth}
	SingletonRoles = []string{RoleClaudeCodeOAuth}
)

// Roles returns the route's roles. Call it only on a validated manifest.
func (r *Route) Roles() []string {
	roles, _ := rolesOf(r.Role)
	return roles
}

// HasRole reports whether the route carries role.
func (r *Route) HasRole(role string) bool { return slices.Contains(r.Roles(), role) }

// HeaderName returns the header the credential goes into.
func (r *Route) HeaderName() string {
	if r.Header == "" {
		return "Authorization"
	}
	return r.Header
}

// SchemeName returns the scheme prefix of the credential ("" for a raw value).
func (r *Route) SchemeName() string {
	switch r.Scheme {
	case "":
		return "Bearer"
	case "none":
		return ""
	}
	return r.Scheme
}

// PushRules returns the remote's push rules, with the default when none are given.
func (g *GitRemote) PushRules() []*PushRule {
	if len(g.Push) == 0 {
		return []*PushRule{{Ref: "refs/heads/bottle/*"}}
	}
	return g.Push
}

//go:embed default.toml
var defaultManifest []byte

// Default returns the embedded default manifest text.
func Default() []byte { return bytes.Clone(defaultManifest) }

// DefaultName is how the embedded default is named in messages.
const DefaultName = "<embedded default>"

// Source says where a manifest came from.
type Source struct {
	Path string // file path, or DefaultName
	Why  string // "--manifest", "$BOTTLE_MANIFEST", "./bottle.toml", "default"
}

// Locate finds the manifest: flag, then $BOTTLE_MANIFEST, then ./bottle.toml, then the
// embedded default. It returns the source and its bytes.
func Locate(flagPath string, getenv func(string) string) (Source, []byte, error) {
	read := func(path, why string) (Source, []byte, error) {
		data, err := hostfile.Read(path, hostfile.MaxManifest)
		if err != nil {
			return Source{}, nil, fmt.Errorf("read manifest %s (from %s): %w", path, why, err)
		}
		return Source{Path: path, Why: why}, data, nil
	}
	if flagPath != "" {
		return read(flagPath, "--manifest")
	}
	if p := getenv("BOTTLE_MANIFEST"); p != "" {
		return read(p, "$BOTTLE_MANIFEST")
	}
	if _, err := os.Stat("bottle.toml"); err == nil {
		return read("bottle.toml", "./bottle.toml")
	}
	return Source{Path: DefaultName, Why: "default"}, Default(), nil
}

// Load decodes and validates a manifest. Errors are *Errors naming the file; they are user
// errors (exit status 2). Unknown keys and invalid values are reported together, in one
// list; only a syntax error or a value of the wrong type stops decoding, and then that is
// the one error.
func Load(name string, data []byte) (*Manifest, error) {
	m, unknown, err := decode(name, data)
	if err != nil {
		return nil, err
	}
	if verr := m.Validate(name); verr != nil {
		unknown.List = append(unknown.List, verr.(*Errors).List...)
	}
	if err := unknown.orNil(); err != nil {
		return nil, err
	}
	return m, nil
}

// decode parses TOML strictly. go-toml decodes the whole document before it reports the
// unknown keys, so with only those wrong m is complete and can be validated as well.
func decode(name string, data []byte) (m *Manifest, unknown *Errors, err error) {
	m = &Manifest{}
	unknown = &Errors{}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err = dec.Decode(m)
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		for _, e := range strict.Errors {
			row, col := e.Position()
			key := e.Key()
			unknown.add(&FieldError{
				File: name, Line: row, Col: col,
				Path:    strings.Join(key, "."),
				Problem: "unknown key" + DidYouMean(key[len(key)-1], knownKeys(key)),
				Fix:     "remove it or check its spelling against the manifest reference in README.md",
			})
		}
		return m, unknown, nil
	}
	if err != nil {
		return nil, nil, decodeError(name, err)
	}
	return m, unknown, nil
}

func decodeError(name string, err error) error {
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		return &Errors{List: []*FieldError{{
			File: name, Line: row, Col: col,
			Path:    strings.Join(de.Key(), "."),
			Problem: de.Error(),
			Fix:     "fix the TOML syntax or the value's type",
		}}}
	}
	return &Errors{List: []*FieldError{{File: name, Path: "", Problem: err.Error(), Fix: "fix the TOML syntax or the value's type"}}}
}

// knownKeys lists the keys the table holding key path could have: the toml names of the
// struct the path's parent decodes into (maps and lists are stepped through).
func knownKeys(path []string) []string {
	t := reflect.TypeFor[Manifest]()
	for _, k := range path[:len(path)-1] {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		switch t.Kind() {
		case reflect.Map:
			t = t.Elem() // k is the map's key: NAME of [agents.NAME]
		case reflect.Struct:
			f, ok := fieldByKey(t, k)
			if !ok {
				return nil
			}
			t = f.Type
		default:
			return nil
		}
	}
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	var keys []string
	for f := range t.Fields() {
		if k := tomlKey(f); k != "" {
			keys = append(keys, k)
		}
	}
	return keys
}

func fieldByKey(t reflect.Type, key string) (reflect.StructField, bool) {
	for f := range t.Fields() {
		if tomlKey(f) == key {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func tomlKey(f reflect.StructField) string {
	k, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	return k
}

// FieldError is one problem in a manifest.
type FieldError struct {
	File      string
	Line, Col int
	Path      string
	Problem   string
	Fix       string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", e.Line, e.Col)
	}
	if e.Path != "" {
		b.WriteString(": ")
		b.WriteString(e.Path)
	}
	b.WriteString(": ")
	b.WriteString(e.Problem)
	if e.Fix != "" {
		b.WriteString(" (fix: ")
		b.WriteString(e.Fix)
		b.WriteString(")")
	}
	// One problem, one line: a multi-line detail is joined.
	return strings.NewReplacer("\r\n", "; ", "\n", "; ", "\r", "; ").Replace(b.String())
}

// Errors collects every problem found in one manifest.
type Errors struct{ List []*FieldError }

func (e *Errors) add(fe *FieldError) { e.List = append(e.List, fe) }

func (e *Errors) Error() string {
	lines := make([]string, len(e.List))
	for i, fe := range e.List {
		lines[i] = fe.Error()
	}
	return strings.Join(lines, "\n")
}

func (e *Errors) orNil() error {
	if len(e.List) == 0 {
		return nil
	}
	return e
}

// AgentNames returns the agents' names, sorted.
func (m *Manifest) AgentNames() []string { return sortedKeys(m.Agents) }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
