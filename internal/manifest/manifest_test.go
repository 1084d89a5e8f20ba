package manifest

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// header reads the "# path:" and "# want:" lines an invalid test manifest starts with.
func header(t *testing.T, data []byte) (path, want string) {
	t.Helper()
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "# path: "); ok {
			path = v
		}
		if v, ok := strings.CutPrefix(line, "# want: "); ok {
			want = v
		}
	}
	if path == "" || want == "" {
		t.Fatalf("test manifest lacks # path: / # want: header")
	}
	return path, want
}

func TestInvalidManifests(t *testing.T) {
	files, err := filepath.Glob("../../testdata/invalid/*.toml")
	if err != nil || len(files) < 15 {
		t.Fatalf("want at least 15 invalid manifests, found %d (%v)", len(files), err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			path, want := header(t, data)
			_, err = Load(f, data)
			var errs *Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Load: want *Errors, got %T %v", err, err)
			}
			for _, fe := range errs.List {
				if fe.Path == path && strings.Contains(fe.Error(), want) {
					if !strings.HasPrefix(fe.Error(), f) {
						t.Errorf("error does not name the file: %s", fe)
					}
					if fe.Fix == "" {
						t.Errorf("error says nothing about the fix: %s", fe)
					}
					return
				}
			}
			t.Fatalf("no error at %s containing %q; got:\n%v", path, want, err)
		})
	}
}

func TestExamplesAndDefaultAreValid(t *testing.T) {
	files, _ := filepath.Glob("../../examples/*.toml")
	if len(files) < 3 {
		t.Fatalf("want at least 3 examples, found %d", len(files))
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Load(f, data); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	m, err := Load(DefaultName, Default())
	if err != nil {
		t.Fatalf("embedded default: %v", err)
	}
	r := m.Bottles["claude"].EgressProxy.Routes[0]
	if r.Host != "api.anthropic.com" || r.TokenRef != "CLAUDE_CODE_OAUTH_TOKEN" || !r.HasRole(RoleClaudeCodeOAuth) {
		t.Errorf("default route = %+v, want api.anthropic.com / CLAUDE_CODE_OAUTH_TOKEN / claude_code_oauth", r)
	}
}

func TestRoleForms(t *testing.T) {
	for _, tc := range []struct {
		role string
		want []string
	}{
		{``, nil},
		{`role = "claude_code_oauth"`, []string{"claude_code_oauth"}},
		{`role = ["claude_code_oauth"]`, []string{"claude_code_oauth"}},
		{`role = []`, []string{}},
	} {
		src := "[agents.a]\nbottle = \"b\"\nimage = \"i\"\n[[bottles.b.egress_proxy.routes]]\nhost = \"h.example\"\ntoken_ref = \"T\"\n" + tc.role + "\n"
		m, err := Load("t.toml", []byte(src))
		if err != nil {
			t.Fatalf("%s: %v", tc.role, err)
		}
		got := m.Bottles["b"].EgressProxy.Routes[0].Roles()
		if len(got) != len(tc.want) || (len(got) > 0 && got[0] != tc.want[0]) {
			t.Errorf("%s: roles %v, want %v", tc.role, got, tc.want)
		}
	}
}

func TestRouteDefaults(t *testing.T) {
	r := &Route{}
	if r.HeaderName() != "Authorization" || r.SchemeName() != "Bearer" {
		t.Errorf("defaults: %q %q", r.HeaderName(), r.SchemeName())
	}
	r = &Route{Header: "x-api-key", Scheme: "none"}
	if r.HeaderName() != "x-api-key" || r.SchemeName() != "" {
		t.Errorf("raw: %q %q", r.HeaderName(), r.SchemeName())
	}
}

func TestParseGitURL(t *testing.T) {
	good := map[string]string{
		"ssh://git@github.com/a/b.git":      "ssh",
		"ssh://git@example.com:2222/a.git":  "ssh",
		"git@github.com:a/b.git":            "ssh",
		"ssh://git@10.0.0.1:2222/a.git":     "ssh",
		"https://github.com/a/b.git":        "https",
		"https://git.example.test:8443/x/y": "https",
	}
	for u, want := range good {
		if got, err := parseGitURL(u); err != nil || got.kind != want {
			t.Errorf("%s: got %q, %v; want %q", u, got.kind, err, want)
		}
	}
	for _, u := range []string{"", "http://github.com/a.git", "file:///tmp/x", "https://user:pw@github.com/a.git",
		"ext::sh -c evil", "github.com", "https://github.com", "-oProxyCommand=x:y", "git@bad_host:a.git",
		"github.com:a/b.git", "ssh://github.com/a/b.git", "ssh://git:pw@github.com/a.git", "https://github.com/a.git?x=1",
		"https://github.com/a.git#frag", "https://github.com/a.git?", "https://github.com:99999/a.git", "ssh://git@github.com:0/a.git",
		"git@github.com:a\x01b.git", "https://github.1com/a.git"} {
		if _, err := parseGitURL(u); err == nil {
			t.Errorf("%q: accepted, want error", u)
		}
	}
}

// TestGitURLErrorsHideCredentials: a URL carrying a credential is refused, and the
// refusal does not print it.
func TestGitURLErrorsHideCredentials(t *testing.T) {
	const secret = "s3cr3t-tok"
	for _, u := range []string{
		"https://" + secret + "@github.com/a.git", "https://x:" + secret + "@github.com/a.git",
		"ssh://git:" + secret + "@github.com/a.git", "https://github.com/a.git?token=" + secret,
		"https://github.com/a.git#" + secret, "git:" + secret + "@github.com:a/b.git",
		"https://" + secret + "@github.com:99999/a.git", "ftp://" + secret + "@github.com/a.git",
	} {
		_, err := parseGitURL(u)
		if err == nil {
			t.Errorf("%q: accepted, want error", u)
		} else if strings.Contains(err.Error(), secret) {
			t.Errorf("%q: error shows the credential: %v", u, err)
		}
	}
	// Control: a user name of an ssh:// URL is no secret and is shown.
	if _, err := parseGitURL("ssh://deploy@github.com/a.git?x"); err == nil || !strings.Contains(err.Error(), "ssh://deploy@github.com") {
		t.Errorf("ssh user name hidden or URL accepted: %v", err)
	}
}

func TestLocateOrder(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	src, _, err := Locate("", getenv)
	if err != nil || src.Path != DefaultName {
		t.Fatalf("no manifest around: got %+v %v, want the embedded default", src, err)
	}
	if err := os.WriteFile("bottle.toml", []byte("# cwd\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if src, _, _ = Locate("", getenv); src.Path != "bottle.toml" {
		t.Errorf("with ./bottle.toml: got %s", src.Path)
	}
	envFile := filepath.Join(dir, "env.toml")
	os.WriteFile(envFile, []byte("# env\n"), 0o644)
	env["BOTTLE_MANIFEST"] = envFile
	if src, _, _ = Locate("", getenv); src.Path != envFile {
		t.Errorf("with $BOTTLE_MANIFEST: got %s", src.Path)
	}
	os.WriteFile("flag.toml", []byte("# flag\n"), 0o644)
	if src, _, _ = Locate("flag.toml", getenv); src.Path != "flag.toml" {
		t.Errorf("with --manifest: got %s", src.Path)
	}
	if _, _, err := Locate(filepath.Join(dir, "missing.toml"), getenv); err == nil || !strings.Contains(err.Error(), "missing.toml") {
		t.Errorf("missing --manifest file: err %v", err)
	}
}

func FuzzLoad(f *testing.F) {
	files, _ := filepath.Glob("../../testdata/invalid/*.toml")
	ex, _ := filepath.Glob("../../examples/*.toml")
	for _, p := range append(files, ex...) {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	f.Add(Default())
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Load("fuzz.toml", data)
		if err == nil {
			for _, name := range m.AgentNames() {
				if m.Bottles[m.Agents[name].Bottle] == nil {
					t.Fatalf("valid manifest with agent %q on a missing bottle", name)
				}
			}
		}
	})
}

func TestLimits(t *testing.T) {
	for _, u := range []string{"0:0", "1000:1000", "2147483646:2147483646"} {
		if _, _, err := ParseUser(u); err != nil {
			t.Errorf("ParseUser(%q): %v", u, err)
		}
	}
	for _, u := range []string{"2147483647:0", "0:4294967295", "-1:-1", "4294967296:0", "a:b", "1000"} {
		if _, _, err := ParseUser(u); err == nil {
			t.Errorf("ParseUser(%q) accepted", u)
		}
	}
	for name, want := range map[string]bool{
		"HTTPS_PROXY": true, "GIT_CONFIG_KEY_3": true, "BOTTLE_GIT_SSH_KEY_0": true, "GOMEMLIMIT": true,
		"CLAUDE_CODE_OAUTH_TOKEN": false, "GITHUB_TOKEN": false, "BOTTLE_TOKEN": false,
	} {
		if GeneratedEnv(name) != want {
			t.Errorf("GeneratedEnv(%s) = %v", name, !want)
		}
	}
}

// TestAllErrorsAtOnce: unknown keys and invalid values come in one report, one line
// each, and near misses of a key or of a choice name what was probably meant.
func TestAllErrorsAtOnce(t *testing.T) {
	src := `[agents.a]
bottle = "bb"
image = "img"
imgae = "x"
[bottles.b]
runtime = "runcs"
filter = "biultin"
[[bottles.b.egress_proxy.routes]]
hots = "api.example.com"
token_ref = "T"
role = "claude_code_oath"
[bottles.b.resources]
memroy_mb = 1
`
	_, err := Load("t.toml", []byte(src))
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("want *Errors, got %T %v", err, err)
	}
	want := map[string]string{
		"agents.a.imgae":                        `t.toml:4:1: agents.a.imgae: unknown key; did you mean "image"?`,
		"bottles.b.egress_proxy.routes.hots":    `unknown key; did you mean "host"?`,
		"bottles.b.resources.memroy_mb":         `unknown key; did you mean "memory_mb"?`,
		"agents.a.bottle":                       `unknown bottle "bb"; did you mean "b"?`,
		"bottles.b.runtime":                     `unknown runtime "runcs"; did you mean "runsc"?`,
		"bottles.b.filter":                      `unknown filter "biultin"; did you mean "builtin"?`,
		"bottles.b.egress_proxy.routes[0].role": `unknown role "claude_code_oath"; did you mean "claude_code_oauth"?`,
		"bottles.b.egress_proxy.routes[0].host": `empty`, // the misspelt key left it empty
	}
	got := map[string]string{}
	for _, fe := range errs.List {
		got[fe.Path] = fe.Error()
	}
	for path, w := range want {
		if !strings.Contains(got[path], w) {
			t.Errorf("%s: got %q, want it to contain %q", path, got[path], w)
		}
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(errs.List) {
		t.Errorf("%d errors in %d lines:\n%s", len(errs.List), len(lines), err)
	}
}

func TestSuggest(t *testing.T) {
	for _, tc := range []struct {
		got   string
		known []string
		want  string
	}{
		{"hots", []string{"host", "token_ref", "role"}, "host"},
		{"Runsc", RuntimeChoices, "runsc"},
		{"runcs", RuntimeChoices, "runsc"},
		{"pipelok", FilterChoices, "pipelock"},
		{"x", RuntimeChoices, ""},     // far from everything
		{"ab", []string{"auto"}, ""},  // too short to guess
		{"zzzzzz", FilterChoices, ""}, // nothing near
		{"token-ref", []string{"token_ref"}, "token_ref"},
	} {
		if got := suggest(tc.got, tc.known); got != tc.want {
			t.Errorf("suggest(%q, %v) = %q, want %q", tc.got, tc.known, got, tc.want)
		}
	}
}

// TestProtectField: unset is the default (nil), `protect = []` is set and empty (turns
// the default off), paths are kept as written.
func TestProtectField(t *testing.T) {
	base := "[agents.a]\nbottle = \"b\"\nimage = \"i\"\ncommand = [\"sh\"]\n\n[bottles.b]\n"
	for _, tc := range []struct {
		line string
		want []string // nil: unset
	}{
		{"", nil},
		{"protect = []\n", []string{}},
		{"protect = [\".github/workflows\", \"Makefile\"]\n", []string{".github/workflows", "Makefile"}},
	} {
		m, err := Load("t.toml", []byte(base+tc.line))
		if err != nil {
			t.Fatalf("%q: %v", tc.line, err)
		}
		got := m.Bottles["b"].Protect
		switch {
		case tc.want == nil && got != nil:
			t.Errorf("%q: protect %v, want unset", tc.line, *got)
		case tc.want != nil && (got == nil || strings.Join(*got, ",") != strings.Join(tc.want, ",")):
			t.Errorf("%q: protect %v, want %v", tc.line, got, tc.want)
		}
	}
}
