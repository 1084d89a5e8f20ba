package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/gitgate"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/testutil"
)

var bottleBin string

// TestMain builds the real binary once; the tests run it as a user would.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bottle-cli-test")
	if err != nil {
		panic(err)
	}
	bottleBin = filepath.Join(dir, "bottle")
	// The sidecar binary goes next to bottle's, where `bottle image export` finds it.
	for out, pkg := range map[string]string{bottleBin: ".", filepath.Join(dir, "bottle-sidecar"): "../bottle-sidecar"} {
		build := exec.Command("go", "build", "-o", out, pkg)
		build.Stderr = os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build", pkg+":", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run runs bottle in dir with only the given environment (plus PATH). A bottle that
// hangs is killed after a minute and fails the test.
func run(t *testing.T, dir string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bottleBin, args...)
	cmd.Dir = dir
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("bottle %v did not finish within a minute", args)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func repo(t *testing.T, rel string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("../..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHelpListsCommands(t *testing.T) {
	out, _, code := run(t, t.TempDir(), nil, "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, c := range []string{"plan", "manifest", "version", "export", "k8s"} {
		if !strings.Contains(out, "\n   "+c) {
			t.Errorf("--help does not list %q:\n%s", c, out)
		}
	}
}

func TestPlanJSONRedactsToken(t *testing.T) {
	const token = "sk-test-123"
	out, errOut, code := run(t, t.TempDir(), []string{"CLAUDE_CODE_OAUTH_TOKEN=" + token},
		"plan", "--manifest", repo(t, "examples/claude.toml"), "claude", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if strings.Contains(out+errOut, token) {
		t.Fatal("token in plan output")
	}
	var p struct {
		Containers []struct {
			Role string          `json:"role"`
			Spec json.RawMessage `json:"spec"`
		} `json:"containers"`
	}
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("plan is not JSON: %v", err)
	}
	roles := map[string]bool{}
	for _, c := range p.Containers {
		if len(c.Spec) < 100 || !bytes.Contains(c.Spec, []byte(`"ociVersion"`)) {
			t.Errorf("%s: no OCI spec", c.Role)
		}
		roles[c.Role] = true
	}
	if !roles["agent"] || !roles["filter"] || !roles["egress-proxy"] || len(p.Containers) != 3 {
		t.Errorf("containers %v, want agent, filter, egress-proxy", roles)
	}
	if !strings.Contains(out, "CLAUDE_CODE_OAUTH_TOKEN=<redacted>") {
		t.Error("egress-proxy credential not shown as <redacted>")
	}
}

// TestPlanTakesStartsFlags: plan reads --pool, $BOTTLE_POOL and the sidecars' settings
// as start does, and says when it cannot ask containerd which images are present.
func TestPlanTakesStartsFlags(t *testing.T) {
	dir := t.TempDir()
	noContainerd := []string{"--address", filepath.Join(dir, "no-containerd.sock")}
	subnets := func(env []string, args ...string) string {
		t.Helper()
		out, errOut, code := run(t, dir, env, append(append(noContainerd, "plan"), args...)...)
		if code != 0 {
			t.Fatalf("plan %v: exit %d: %s", args, code, errOut)
		}
		var nets []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "network ") {
				nets = append(nets, strings.Fields(l)[2])
			}
		}
		return strings.Join(nets, " ")
	}
	if got := subnets(nil); got != "10.213.0.0/24 10.213.1.0/24" {
		t.Errorf("default pool: subnets %q", got)
	}
	if got := subnets(nil, "--pool", "10.99.0.0/16"); got != "10.99.0.0/24 10.99.1.0/24" {
		t.Errorf("--pool 10.99.0.0/16: subnets %q", got)
	}
	if got := subnets([]string{"BOTTLE_POOL=10.98.0.0/16"}); got != "10.98.0.0/24 10.98.1.0/24" {
		t.Errorf("BOTTLE_POOL=10.98.0.0/16: subnets %q", got)
	}
	if _, errOut, code := run(t, dir, nil, append(noContainerd, "plan", "--pool", "10.99.0.0/24")...); code != 2 || !strings.Contains(errOut, "--pool") {
		t.Errorf("plan --pool of one slot: exit %d: %s", code, errOut)
	}

	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 192.0.2.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := run(t, dir, nil, append(noContainerd, "plan", "--json", "--detach", "--rm", "--cwd",
		"--add-host", "git.test:192.0.2.7", "--resolv-conf", resolv, "--filter", "pipelock", "--pipelock-image", "bottle.local/pl:test", "--", "/bin/true")...)
	if code != 0 {
		t.Fatalf("plan with start's flags: exit %d: %s", code, errOut)
	}
	for _, want := range []string{`192.0.2.7\tgit.test`, "nameserver 192.0.2.53", `"image": "bottle.local/pl:test"`, `"filter": "pipelock"`, `"copy": true`, `"/bin/true"`} {
		if !strings.Contains(out, want) {
			t.Errorf("plan --json does not show %s:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "containerd not reachable") || !strings.Contains(errOut, "pipelock image is assumed absent") {
		t.Errorf("plan without containerd does not say so: %q", errOut)
	}
	if _, errOut, code := run(t, dir, nil, append(noContainerd, "plan", "--add-host", "nocolon")...); code != 2 || !strings.Contains(errOut, "--add-host") {
		t.Errorf("plan --add-host nocolon: exit %d: %s", code, errOut)
	}
}

func TestPlanUsesEmbeddedDefault(t *testing.T) {
	out, errOut, code := run(t, t.TempDir(), nil, "plan")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "manifest <embedded default>") || !strings.Contains(out, "agent claude") {
		t.Errorf("plan without a manifest around does not use the embedded default:\n%s", out)
	}
}

func TestManifestPrintsDefault(t *testing.T) {
	dir := t.TempDir()
	out, _, code := run(t, dir, nil, "manifest")
	if code != 0 || !strings.Contains(out, "[agents.claude]") {
		t.Fatalf("exit %d, output:\n%s", code, out)
	}
	// The printed file is a valid starting manifest.
	if err := os.WriteFile(filepath.Join(dir, "bottle.toml"), []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := run(t, dir, nil, "plan")
	if code != 0 || !strings.Contains(out, "manifest bottle.toml") {
		t.Fatalf("plan with the printed manifest: exit %d %s\n%s", code, errOut, out)
	}
}

func TestInvalidManifestsExit2(t *testing.T) {
	files, _ := filepath.Glob(repo(t, "testdata/invalid/*.toml"))
	if len(files) < 15 {
		t.Fatalf("found %d invalid manifests, want >= 15", len(files))
	}
	for _, f := range files {
		data, _ := os.ReadFile(f)
		var path string
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "# path: "); ok {
				path = v
			}
		}
		t.Run(filepath.Base(f), func(t *testing.T) {
			out, errOut, code := run(t, t.TempDir(), nil, "plan", "--manifest", f)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if out != "" {
				t.Errorf("printed a plan for an invalid manifest:\n%s", out)
			}
			if !strings.Contains(errOut, f) || !strings.Contains(errOut, path) {
				t.Errorf("error does not name file %s and field %s:\n%s", f, path, errOut)
			}
		})
	}
}

func TestBadInvocationsExit2(t *testing.T) {
	for _, args := range [][]string{
		{"plan", "nosuch"},
		{"plan", "--manifest", "/nonexistent/bottle.toml"},
		{"plan", "--runtime", "docker"},
		{"--manifest", "../../examples/team.toml", "plan"}, // two agents: must name one
	} {
		_, errOut, code := run(t, ".", nil, args...)
		if code != 2 || !strings.HasPrefix(errOut, "bottle: ") {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 with a one-line error", args, code, errOut)
		}
	}
}

// sshManifest is a valid manifest whose one ssh remote reads its key from keyPath.
func sshManifest(keyPath string) string {
	return fmt.Sprintf(`[agents.a]
bottle = "b"
image = "img"
[bottles.b]
[[bottles.b.git]]
name = "origin"
url = "git@github.com:me/repo.git"
ssh_key = %q
known_hosts = "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
`, keyPath)
}

// TestHostFilesRefused: a manifest, ssh_key, CA or resolver file that is a FIFO, a device,
// a directory or too large is refused at once with exit 2 and its path, and start
// refuses it before it creates anything (or even connects to containerd).
func TestHostFilesRefused(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.toml")
	if err := os.WriteFile(big, bytes.Repeat([]byte("# padding\n"), 200<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	manifestWithKey := func(key string) string {
		p := filepath.Join(dir, filepath.Base(key)+"-key.toml")
		if err := os.WriteFile(p, []byte(sshManifest(key)), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	valid := manifestWithKey(filepath.Join(dir, "missing"))
	stateDir := filepath.Join(dir, "state")
	start := func(extra ...string) []string {
		return append([]string{"--address", filepath.Join(dir, "no-containerd.sock"), "--state-dir", stateDir, "start", "--manifest"}, extra...)
	}
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want []string
	}{
		{"--manifest FIFO", nil, []string{"plan", "--manifest", fifo}, []string{fifo, "named pipe"}},
		{"--manifest /dev/zero", nil, []string{"plan", "--manifest", "/dev/zero"}, []string{"/dev/zero", "character device"}},
		{"--manifest directory", nil, []string{"plan", "--manifest", dir}, []string{dir, "directory"}},
		{"--manifest too large", nil, []string{"plan", "--manifest", big}, []string{big, "larger than 1 MiB"}},
		{"$BOTTLE_MANIFEST FIFO", []string{"BOTTLE_MANIFEST=" + fifo}, []string{"plan"}, []string{fifo, "$BOTTLE_MANIFEST"}},
		{"ssh_key FIFO", nil, []string{"plan", "--manifest", manifestWithKey(fifo)}, []string{fifo, "bottles.b.git[0].ssh_key", "named pipe"}},
		{"ssh_key /dev/zero", nil, []string{"plan", "--manifest", manifestWithKey("/dev/zero")}, []string{"/dev/zero", "bottles.b.git[0].ssh_key", "character device"}},
		{"start ssh_key FIFO", nil, start(manifestWithKey(fifo)), []string{fifo, "bottles.b.git[0].ssh_key"}},
		{"start --ca-file FIFO", nil, start(valid, "--ca-file", fifo), []string{"--ca-file", fifo}},
		{"start --resolv-conf /dev/zero", nil, start(valid, "--resolv-conf", "/dev/zero"), []string{"--resolv-conf", "/dev/zero"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if strings.HasPrefix(tc.name, "start --") {
				// The key is read first; give it one so that the flag's file is reached.
				key := filepath.Join(dir, "missing")
				if err := os.WriteFile(key, []byte("key"), 0o600); err != nil {
					t.Fatal(err)
				}
				defer os.Remove(key)
			}
			out, errOut, code := run(t, dir, tc.env, tc.args...)
			if code != 2 || out != "" {
				t.Errorf("exit %d, stdout %q; want exit 2 and no plan", code, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("error does not say %q:\n%s", w, errOut)
				}
			}
		})
	}
	if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
		t.Errorf("a refused start left %s (%v)", stateDir, err)
	}
	// ./bottle.toml is found by name: a FIFO there is refused too.
	cwd := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(cwd, "bottle.toml"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := run(t, cwd, nil, "plan"); code != 2 || !strings.Contains(errOut, "bottle.toml") {
		t.Errorf("./bottle.toml FIFO: exit %d: %s", code, errOut)
	}
}

// TestSidecarsAcceptWhatTheManifestAccepts plans manifests that pass validation, edge
// cases included, and loads the sidecar configs of each plan with the sidecars' own
// constructors and process env: whatever the manifest accepts must not fail a sidecar
// at start. It also checks that every environment name bottle generates is one a
// token_ref cannot take (manifest.GeneratedEnv).
func TestSidecarsAcceptWhatTheManifestAccepts(t *testing.T) {
	_, hostKey, _ := ed25519.GenerateKey(rand.Reader)
	hostPub, err := ssh.NewPublicKey(hostKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	keyLine := func(hosts ...string) string { return knownhosts.Line(hosts, hostPub) }
	_, caKey, _ := ed25519.GenerateKey(rand.Reader)
	caPub, err := ssh.NewPublicKey(caKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	otherKey := strings.SplitN(knownhosts.Line([]string{"x"}, caPub), " ", 2)[1] // "TYPE BASE64"
	_, clientKey, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(clientKey, "")
	if err != nil {
		t.Fatal(err)
	}
	privPEM := pem.EncodeToMemory(block)
	edge := fmt.Sprintf(`[agents.edge]
bottle = "edge"
image = "img"
env = { NOTE = "x" }
forward_env = ["FWD"]
user = "2147483646:2147483646"
[bottles.edge]
allowlist = ["Example.COM.", "*.example.co.uk", "*.githubusercontent.example", "a-b.example"]
resources = { memory_mb = 1048576, cpus = 1024.0, pids = 16 }
[[bottles.edge.egress_proxy.routes]]
host = "API.Example.COM."
token_ref = "CLAUDE_CODE_OAUTH_TOKEN"
role = "claude_code_oauth"
[[bottles.edge.egress_proxy.routes]]
host = "raw.example.org"
token_ref = "RAW_KEY"
header = "x-api-key"
scheme = "none"
[[bottles.edge.egress_proxy.routes]]
host = "localhost"
token_ref = "LOCAL"
scheme = "token"
[[bottles.edge.git]]
name = "origin.repo_1"
url = "git@github.com:me/repo.git"
ssh_key = "k"
known_hosts = %q
push = [{ ref = "refs/heads/bottle/*" }, { ref = "refs/tags/v*", force = true, delete = true }]
[[bottles.edge.git]]
name = "port"
url = "ssh://git@git.example.com:2222/~me/repo"
ssh_key = "/k"
known_hosts = %q
[[bottles.edge.git]]
name = "v6"
url = "ssh://git@[::1]:2222/r.git"
ssh_key = "/k"
known_hosts = %q
[[bottles.edge.git]]
name = "https"
url = "https://git.example.com:8443/a/b"
token_ref = "GIT_TOKEN"
`, "# pinned\n@revoked * "+otherKey+"\n@cert-authority *.example "+otherKey+"\n"+keyLine(knownhosts.HashHostname("github.com")),
		keyLine("*.example.com:2222", "!other.example.com")+"\r\n",
		keyLine("[::1]:2222"))
	sources := map[string][]byte{"edge.toml": []byte(edge), manifest.DefaultName: manifest.Default()}
	files, _ := filepath.Glob(repo(t, "examples/*.toml"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sources[f] = data
	}
	for name, data := range sources {
		m, err := manifest.Load(name, data)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, agent := range m.AgentNames() {
			p, err := plan.Build(plan.Input{
				Manifest: m, ManifestPath: "/m/" + filepath.Base(name), AgentName: agent,
				LookupEnv: func(k string) (string, bool) { return "value-of-" + k, true },
				NewSuffix: func() (string, error) { return "abc123", nil },
				Workspace: "/w", StateDir: "/s", SidecarImage: "img",
				Internal: netip.MustParsePrefix("10.213.4.0/24"), Egress: netip.MustParsePrefix("10.213.5.0/24"),
				ReadFile: func(string) ([]byte, error) { return privPEM, nil },
				Strict:   true,
			})
			if err != nil {
				t.Fatalf("%s %s: %v", name, agent, err)
			}
			checkSidecarConfigs(t, name+" "+agent, m, agent, p)
		}
	}
}

func checkSidecarConfigs(t *testing.T, what string, m *manifest.Manifest, agent string, p *plan.Plan) {
	t.Helper()
	own := map[string]bool{} // names the manifest gives
	a := m.Agents[agent]
	for k := range a.Env {
		own[k] = true
	}
	for _, n := range append(a.ForwardEnv, a.OptionalEnv...) {
		own[n] = true
	}
	for _, r := range m.Bottles[a.Bottle].EgressProxy.Routes {
		own[r.TokenRef] = true
	}
	for _, g := range m.Bottles[a.Bottle].Git {
		own[g.TokenRef] = true
	}
	stage := map[string][]byte{}
	for _, f := range p.StageFiles {
		stage[f.Name] = []byte(f.Content)
	}
	decode := func(name string, v any) {
		dec := json.NewDecoder(bytes.NewReader(stage[name]))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			t.Fatalf("%s: %s: %v", what, name, err)
		}
	}
	for _, c := range p.Containers {
		env := map[string]string{}
		for _, kv := range c.Spec.Process.Env {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
			if !own[k] && k != "CLAUDE_CODE_OAUTH_TOKEN" && !manifest.GeneratedEnv(k) {
				t.Errorf("%s: %s gets %s, which manifest.GeneratedEnv does not know: a token_ref could take it", what, c.Role, k)
			}
		}
		getenv := func(k string) string { return env[k] }
		var err error
		switch c.Role {
		case names.RoleFilter:
			if p.Filter == plan.FilterBuiltin {
				var cfg egress.FilterConfig
				decode("filter/filter.json", &cfg)
				_, err = egress.NewFilter(cfg, nil)
			}
		case names.RoleEgressProxy:
			var cfg egress.ProxyConfig
			decode("egress-proxy/routes.json", &cfg)
			_, err = egress.NewEgressProxy(cfg, getenv, nil)
		case names.RoleGitGate:
			var cfg gitgate.Config
			decode("git-gate/config.json", &cfg)
			cfg.SpoolDir = "" // made by the sidecar in its container
			_, err = gitgate.New(cfg, getenv, nil)
		}
		if err != nil {
			t.Errorf("%s: the %s refuses what the manifest accepts: %v", what, c.Role, err)
		}
	}
}

// TestFlagHelpHasNoStrayPlaceholders renders every flag of every command as --help shows
// it: urfave/cli turns a back-quoted word of a flag's usage into the flag's value
// placeholder, so prose like "see `bottle logs`" would print as "--detach bottle logs".
// A placeholder must be one upper-case word, and only on flags that take a value.
func TestFlagHelpHasNoStrayPlaceholders(t *testing.T) {
	placeholder := regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)
	var walk func(path string, cmds []*cli.Command)
	check := func(path string, flags []cli.Flag) {
		for _, f := range flags {
			df, ok := f.(cli.DocGenerationFlag)
			if !ok {
				continue
			}
			// As urfave/cli reads it: the first back-quoted word is the placeholder.
			usage := df.GetUsage()
			_, rest, ok := strings.Cut(usage, "`")
			name, _, closed := strings.Cut(rest, "`")
			if !ok || !closed {
				continue
			}
			if !df.TakesValue() || !placeholder.MatchString(name) {
				t.Errorf("%s --%s: usage %q makes %q its placeholder; quote prose with '...' instead of back quotes", path, f.Names()[0], usage, name)
			}
		}
	}
	walk = func(path string, cmds []*cli.Command) {
		for _, c := range cmds {
			p := path + " " + c.Name
			check(p, c.Flags)
			walk(p, c.Subcommands)
		}
	}
	app := newApp()
	check("bottle", app.Flags)
	walk("bottle", app.Commands)
}

// doctorLine runs `bottle doctor ARGS` (no containerd) and returns its check line named
// check.
func doctorLine(t *testing.T, cmd, env []string, check string, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	c := exec.Command(cmd[0], append(append(cmd[1:], "--address", filepath.Join(dir, "no-containerd.sock"), "doctor"), args...)...)
	c.Dir = "/"
	c.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	out, _ := c.Output() // exit 1: containerd fails
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[1] == check {
			return l
		}
	}
	t.Fatalf("doctor printed no %s line:\n%s", check, out)
	return ""
}

// TestDoctorTakesPool: doctor checks the pool a start would use (--pool, $BOTTLE_POOL).
func TestDoctorTakesPool(t *testing.T) {
	testutil.RequireRoot(t) // the slot directory is readable only by root
	if l := doctorLine(t, []string{bottleBin}, []string{"BOTTLE_POOL=10.97.0.0/16"}, "subnet"); !strings.Contains(l, "from pool 10.97.0.0/16") {
		t.Errorf("BOTTLE_POOL: %s", l)
	}
	if l := doctorLine(t, []string{bottleBin}, nil, "subnet", "--pool", "10.96.0.0/16"); !strings.Contains(l, "from pool 10.96.0.0/16") {
		t.Errorf("doctor --pool: %s", l)
	}
}

// TestDoctorNotRootSaysRunAsRoot runs doctor as an unprivileged user: checks that fail
// for want of root say to run as root, not to install something.
func TestDoctorNotRootSaysRunAsRoot(t *testing.T) {
	testutil.RequireRoot(t) // to run bottle as nobody
	setpriv := testutil.RequireBinary(t, "setpriv")
	dir, err := os.MkdirTemp("", "bottle-nobody")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "bottle")
	data, err := os.ReadFile(bottleBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil || os.Chmod(dir, 0o755) != nil {
		t.Fatal(err)
	}
	nobody := []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", bin}
	for _, check := range []string{"iptables", "subnet"} {
		l := doctorLine(t, nobody, nil, check)
		if !strings.HasPrefix(l, "fail") || !strings.Contains(l, "fix: run as root") || strings.Contains(l, "install") {
			t.Errorf("doctor as nobody: %s", l)
		}
	}
}
