package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/gitgate"
	"github.com/bottle-dev/bottle/internal/testutil"
	"github.com/bottle-dev/bottle/internal/testutil/gitserver"
)

// gitHost is the forge's name; the sidecars resolve it to the test's upstream address.
const gitHost = "git.upstream.test"

var (
	gitHTTPSAddr = netip.AddrPortFrom(upstreamAddr.Addr(), 8443)
	gitSSHAddr   = netip.AddrPortFrom(upstreamAddr.Addr(), 2222)
	gitHTTPSURL  = fmt.Sprintf("https://%s:%d/repo.git", gitHost, gitHTTPSAddr.Port())
	gitSSHURL    = fmt.Sprintf("ssh://git@%s:%d/repo.git", gitHost, gitSSHAddr.Port())
)

// gitForge is the test's git forge on the fake internet: the same seeded repositories
// (repo.git, the declared one, and other.git, never declared) served over HTTPS with
// a token and over SSH with a key, each from its own root.
type gitForge struct {
	t          *testing.T
	git        string
	env        []string // the host's git environment
	httpsRoot  string
	sshRoot    string
	caFile     string // the fake internet's CA and the forge's
	token      string
	keyPEM     string
	keyFile    string // 0600, outside the workspace
	knownHosts string // pins the SSH server's host key for [git.upstream.test]:2222
	sshSrv     *gitserver.SSHServer
}

func newGitForge(t *testing.T, up *upstream) *gitForge {
	t.Helper()
	git := testutil.RequireBinary(t, "git")
	home := t.TempDir()
	f := &gitForge{t: t, git: git, httpsRoot: t.TempDir(), sshRoot: t.TempDir(),
		env: []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "GIT_CONFIG_NOSYSTEM=1", "LANG=C", "LC_ALL=C",
			"GIT_AUTHOR_NAME=Forge", "GIT_AUTHOR_EMAIL=forge@bottle.invalid",
			"GIT_COMMITTER_NAME=Forge", "GIT_COMMITTER_EMAIL=forge@bottle.invalid"},
		token: fmt.Sprintf("ghs_e2eGitGateToken%d%d", time.Now().UnixNano(), os.Getpid()),
	}
	f.run("", "config", "--global", "init.defaultBranch", "main")
	seed := filepath.Join(t.TempDir(), "seed")
	f.run("", "init", "-q", seed)
	f.commit(seed, "README", "hello from the forge\n")
	for _, root := range []string{f.httpsRoot, f.sshRoot} {
		for _, name := range []string{"repo.git", "other.git"} {
			bare := filepath.Join(root, name)
			f.run("", "init", "-q", "--bare", bare)
			f.run(bare, "config", "http.receivepack", "true")
			f.run(seed, "push", "-q", bare, "main")
		}
	}

	// TLS for git.upstream.test from a CA of its own, trusted next to the fake
	// internet's through one --ca-file.
	caPEM, cert := testCA(t, gitHost)
	upCA, err := os.ReadFile(up.caFile)
	if err != nil {
		t.Fatal(err)
	}
	f.caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(f.caFile, append(append(upCA, '\n'), caPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	gitserver.StartHTTPS(t, gitserver.HTTPSConfig{
		Git: git, Root: f.httpsRoot, Env: []string{"GIT_CONFIG_NOSYSTEM=1", "HOME=" + home},
		User: gitgate.DefaultTokenUser, Token: f.token, Addr: gitHTTPSAddr.String(), Cert: &cert,
	})

	keyPEM, signer := gitserver.KeyPair(t)
	f.keyPEM = keyPEM
	f.keyFile = filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(f.keyFile, []byte(keyPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	f.sshSrv = gitserver.StartSSH(t, gitserver.SSHConfig{Git: git, Root: f.sshRoot, Env: f.env, ClientKey: signer.PublicKey(), Addr: gitSSHAddr.String()})
	f.knownHosts = f.sshSrv.KnownHosts(gitHost)
	return f
}

func (f *gitForge) run(dir string, args ...string) string {
	f.t.Helper()
	cmd := exec.Command(f.git, args...)
	cmd.Dir = dir
	cmd.Env = f.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		f.t.Fatalf("host git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func (f *gitForge) commit(dir, file, content string) string {
	f.t.Helper()
	if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
	f.run(dir, "add", file)
	f.run(dir, "commit", "-q", "-m", "change "+file)
	return f.run(dir, "rev-parse", "HEAD")
}

// refs lists every ref of an upstream bare repository with its id.
func (f *gitForge) refs(bare string) string {
	f.t.Helper()
	return f.run("", "--git-dir", bare, "for-each-ref", "--format=%(refname) %(objectname)")
}

// ref is one ref of an upstream bare repository; "" when it does not exist.
func (f *gitForge) ref(bare, name string) string {
	f.t.Helper()
	out, err := exec.Command(f.git, "--git-dir", bare, "rev-parse", "--verify", "-q", name).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// advance puts a new commit on main of an upstream repository, as if pushed by someone
// else, and returns its id.
func (f *gitForge) advance(bare string) string {
	f.t.Helper()
	work := filepath.Join(f.t.TempDir(), "w")
	f.run("", "clone", "-q", bare, work)
	id := f.commit(work, "upstream.txt", "pushed upstream at "+time.Now().String()+"\n")
	f.run(work, "push", "-q", "origin", "main")
	return id
}

// keySecrets are the lines of the private key that identify it: its base64 body minus
// the first line, which is the same for every unencrypted ed25519 key.
func (f *gitForge) keySecrets() []string {
	var out []string
	lines := strings.Split(strings.TrimSpace(f.keyPEM), "\n")
	for _, l := range lines[2 : len(lines)-1] {
		if len(l) >= 32 {
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		f.t.Fatal("the test key has no distinctive line")
	}
	return out
}

// gitManifest is the agent image with the two declared remotes; ssh_key, the pinned
// host key and the https url can be replaced to provoke start errors.
func gitManifest(sshKey, knownHosts, httpsURL string) string {
	return fmt.Sprintf(`[agents.gitgate]
bottle = "g"
image = "bottle.local/agent-claude:latest"
command = ["/bin/sleep", "600"]

[bottles.g]
runtime = "runsc-runc"
filter = "builtin"

[[bottles.g.git]]
name = "origin-https"
url = %q
token_ref = "GIT_E2E_TOKEN"

[[bottles.g.git]]
name = "origin-ssh"
url = %q
ssh_key = %q
known_hosts = %q
push = [{ ref = "refs/heads/bottle/*" }]
`, httpsURL, gitSSHURL, sshKey, knownHosts)
}

// newForgeEnv is an env for the agent image with the fake internet and the git forge on
// it: the sidecars' resolver file, and a workspace for the agent.
func newForgeEnv(t *testing.T) (e *env, forge *gitForge, resolv, workspace string) {
	t.Helper()
	e = newEnv(t)
	ensureAgentImage(t, e)
	forge = newGitForge(t, newUpstream(t))
	resolv = filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+dnsAddr.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The agent runs as the workspace's owner; the image's HOME belongs to uid 1000.
	workspace = t.TempDir()
	if err := os.Chown(workspace, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	return e, forge, resolv, workspace
}

// runCmd runs a prepared bottle command and returns stdout, stderr and the exit status.
func runCmd(t *testing.T, cmd *exec.Cmd) (string, string, int) {
	t.Helper()
	var o, er bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &er
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return o.String(), er.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run bottle: %v", err)
	}
	return o.String(), er.String(), 0
}

// TestGitGate runs the agent image with two remotes, one HTTPS (token) and one SSH (key,
// pinned host key), on a real forge on the test's fake internet. The agent clones,
// fetches and pushes by the remotes' usual URLs; git-gate refuses protected, forced (also
// disguised by a crafted commit) and deleting pushes, undeclared repositories are out of
// reach, the credentials never enter the agent or a host command line, and bad remotes
// fail the start cleanly.
func TestGitGate(t *testing.T) {
	e, forge, resolv, workspace := newForgeEnv(t)
	stopTokenWatch := watchCmdlines(forge.token)
	stopKeyWatch := watchCmdlines(forge.keySecrets()[0])
	start := func(manifest string) (string, string, int) {
		t.Helper()
		if err := os.WriteFile(e.manifest, []byte(manifest), 0o644); err != nil {
			t.Fatal(err)
		}
		// The token reaches bottle through its environment only, never its argv.
		cmd := e.command([]string{"GIT_E2E_TOKEN=" + forge.token}, "start", "--detach",
			"--ca-file", forge.caFile, "--resolv-conf", resolv, "--add-host", gitHost+":"+upstreamAddr.Addr().String(), "gitgate")
		cmd.Dir = workspace
		return runCmd(t, cmd)
	}

	t.Run("bad remotes fail the start", func(t *testing.T) {
		nothingCreated := func(what string) {
			t.Helper()
			if ps := e.ps(); len(ps) != 0 {
				t.Errorf("%s: bottles left: %+v", what, ps)
			}
			if entries, _ := os.ReadDir(filepath.Join(e.stateDir, "bottles")); len(entries) != 0 {
				t.Errorf("%s: state left: %v", what, entries)
			}
		}
		// The error is stderr's last line (progress lines may come before it).
		oneLine := func(what, stderr string, code int, want ...string) {
			t.Helper()
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			msg := lines[len(lines)-1]
			if code == 0 || !strings.HasPrefix(msg, "bottle: ") {
				t.Errorf("%s: exit %d, want a non-zero exit and an error line; stderr:\n%s", what, code, stderr)
			}
			for _, w := range want {
				if !strings.Contains(msg, w) {
					t.Errorf("%s: error %q does not say %q", what, msg, w)
				}
			}
			t.Logf("%s: exit %d: %s", what, code, msg)
		}

		missing := filepath.Join(t.TempDir(), "no-such-key")
		_, stderr, code := start(gitManifest(missing, forge.knownHosts, gitHTTPSURL))
		oneLine("missing ssh_key file", stderr, code, "origin-ssh", "ssh_key", missing)
		nothingCreated("missing ssh_key file")

		_, stderr, code = start(gitManifest(forge.keyFile, forge.knownHosts, "ftp://"+gitHost+"/repo.git"))
		oneLine("malformed remote url", stderr, code, "bottles.g.git[0].url", "ftp")
		if code != 2 {
			t.Errorf("malformed remote url: exit %d, want 2 (a manifest error)", code)
		}
		nothingCreated("malformed remote url")

		_, otherHost := gitserver.KeyPair(t)
		pinnedOther := gitserver.KnownHostsLine(gitHost, fmt.Sprint(gitSSHAddr.Port()), otherHost.PublicKey())
		before := len(forge.sshSrv.Commands())
		_, stderr, code = start(gitManifest(forge.keyFile, pinnedOther, gitHTTPSURL))
		oneLine("unknown host key", stderr, code, "git-gate", "origin-ssh", "host key does not match known_hosts")
		if n := len(forge.sshSrv.Commands()); n != before {
			t.Errorf("the gate ran %d commands on an unverified SSH server", n-before)
		}
		if m := regexp.MustCompile(`gitgate-[0-9a-f]{6}`).FindString(stderr); m != "" {
			e.assertNothingLeft(m)
		} else {
			t.Errorf("the host key error names no bottle: %s", stderr)
		}
		nothingCreated("unknown host key")
	})

	out, stderr, code := start(gitManifest(forge.keyFile, forge.knownHosts, gitHTTPSURL))
	if code != 0 {
		t.Fatalf("start: exit %d\nstdout: %s\nstderr: %s", code, out, stderr)
	}
	id := e.identityOf("gitgate")
	// agent runs a bash script in the agent, in $HOME; the exit status is in err.
	agent := func(script string) (string, error) {
		out, err := e.command(nil, "exec", id, "--", "bash", "-c", "set -e; cd \"$HOME\"; "+script).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	mustAgent := func(t *testing.T, script string) string {
		t.Helper()
		out, err := agent(script)
		if err != nil {
			t.Fatalf("in the agent: %s: %v\n%s", script, err, out)
		}
		return out
	}
	mustAgent(t, `git config --global user.name Agent; git config --global user.email agent@bottle.invalid; git config --global init.defaultBranch main`)

	for _, r := range []struct{ name, url, bare string }{
		{"origin-https", gitHTTPSURL, filepath.Join(forge.httpsRoot, "repo.git")},
		{"origin-ssh", gitSSHURL, filepath.Join(forge.sshRoot, "repo.git")},
	} {
		t.Run(r.name, func(t *testing.T) {
			dir := r.name
			// Clone and fetch by the manifest's URL; insteadOf sends them to git-gate.
			got := mustAgent(t, fmt.Sprintf("git clone -q %s %s && cd %s && git rev-parse HEAD && git config remote.origin.url && git remote get-url origin", r.url, dir, dir))
			if want := strings.Join([]string{forge.ref(r.bare, "refs/heads/main"), r.url, "http://git-gate/" + r.name + ".git"}, "\n"); got != want {
				t.Errorf("clone: HEAD, origin's url and where it goes are\n%s\nwant\n%s", got, want)
			}
			moved := forge.advance(r.bare)
			if got := mustAgent(t, fmt.Sprintf("cd %s && git fetch -q origin && git rev-parse origin/main", dir)); got != moved {
				t.Errorf("fetch: origin/main %s, want the upstream's new %s", got, moved)
			}

			// An allowed branch lands upstream.
			pushed := mustAgent(t, fmt.Sprintf("cd %s && git checkout -q -b bottle/x origin/main && echo x > x.txt && git add x.txt && git commit -q -m x && git push -q origin bottle/x && git rev-parse HEAD", dir))
			if got := forge.ref(r.bare, "refs/heads/bottle/x"); got != pushed {
				t.Errorf("push to bottle/x: upstream has %q, want %s", got, pushed)
			}

			// Refused pushes: each says why and changes nothing upstream.
			before := forge.refs(r.bare)
			for _, p := range []struct{ what, script, reason string }{
				{"push to protected main", "git push origin HEAD:main", "ref not pushable"},
				{"force push to bottle/x", "git checkout -q -b y origin/main && echo y > y.txt && git add y.txt && git commit -q -m y && git push -f origin y:bottle/x", "not a fast-forward"},
				{"deletion of bottle/x", "git push origin :bottle/x", "deleting this ref is not allowed"},
				// A rewrite of bottle/x whose commit repeats bottle/x as a late "parent"
				// header: git's parent is main only, so only force could move it.
				{"crafted late parent on bottle/x", `c=$(printf 'tree %s\nparent %s\nauthor A <a@bottle.invalid> 1700000000 +0000\ncommitter A <a@bottle.invalid> 1700000000 +0000\nparent %s\n\nrewrite\n' ` +
					`$(git rev-parse 'origin/main^{tree}') $(git rev-parse origin/main) $(git rev-parse origin/bottle/x) | git hash-object -t commit -w --literally --stdin) && ` +
					`! git merge-base --is-ancestor origin/bottle/x $c && git push -f origin $c:refs/heads/bottle/x`, "malformed commit"},
			} {
				out, err := agent(fmt.Sprintf("cd %s && %s", dir, p.script))
				if err == nil || !strings.Contains(out, "git-gate") || !strings.Contains(out, p.reason) || !strings.Contains(out, "rejected") {
					t.Errorf("%s: err=%v, want a refusal saying %q; git printed:\n%s", p.what, err, p.reason, out)
				}
			}
			if after := forge.refs(r.bare); after != before {
				t.Errorf("refused pushes changed the upstream:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}

	t.Run("undeclared remotes unreachable", func(t *testing.T) {
		before := len(forge.sshSrv.Commands())
		for _, url := range []string{
			fmt.Sprintf("https://%s:%d/other.git", gitHost, gitHTTPSAddr.Port()),
			fmt.Sprintf("ssh://git@%s:%d/other.git", gitHost, gitSSHAddr.Port()),
			gitHTTPSAddr.String(),
			"http://git-gate/other.git",
		} {
			if !strings.Contains(url, "://") {
				url = "https://" + url + "/other.git" // by address, bypassing names
			}
			if out, err := agent("GIT_TERMINAL_PROMPT=0 timeout 60 git ls-remote " + url); err == nil {
				t.Errorf("ls-remote %s from the agent worked:\n%s", url, out)
			} else {
				t.Logf("ls-remote %s: %v: %s", url, err, out)
			}
		}
		for _, c := range forge.sshSrv.Commands()[before:] {
			if strings.Contains(c, "other.git") {
				t.Errorf("the SSH server ran %q for the agent", c)
			}
		}
		// Control: with the same credentials, the forge does serve other.git.
		dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, err := net.SplitHostPort(addr)
			if err != nil || host != gitHost {
				return nil, fmt.Errorf("control dials only %s, not %s", gitHost, addr)
			}
			return (&net.Dialer{}).DialContext(ctx, network, net.JoinHostPort(upstreamAddr.Addr().String(), port))
		}
		g, err := gitgate.New(gitgate.Config{CAFile: forge.caFile, Dial: dial, Remotes: []gitgate.Remote{
			{Name: "other-https", URL: fmt.Sprintf("https://%s:%d/other.git", gitHost, gitHTTPSAddr.Port()), TokenEnv: "T"},
			{Name: "other-ssh", URL: fmt.Sprintf("ssh://git@%s:%d/other.git", gitHost, gitSSHAddr.Port()), SSHKeyEnv: "K", KnownHosts: forge.knownHosts},
		}}, func(k string) string { return map[string]string{"T": forge.token, "K": forge.keyPEM}[k] }, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := g.Probe(ctx); err != nil {
			t.Errorf("control: the forge does not serve other.git to the declared credentials: %v", err)
		}
	})

	t.Run("credentials not in the agent", func(t *testing.T) {
		// One grep over every process's environment and command line and every file
		// outside /proc, /sys and /dev; the patterns come on stdin, as on argv they
		// would be on the host's `bottle exec` command line.
		scan := func(patterns []string) string {
			t.Helper()
			script := `set --; for d in /*; do case "$d" in /proc|/sys|/dev) ;; *) set -- "$@" "$d";; esac; done; ` +
				`grep -rlsF -f /dev/stdin /proc/[0-9]*/environ /proc/[0-9]*/cmdline "$@" || true`
			cmd := e.command(nil, "exec", id, "--", "bash", "-c", script)
			cmd.Stdin = strings.NewReader(strings.Join(patterns, "\n") + "\n")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("scan in the agent: %v\n%s", err, out)
			}
			return strings.TrimSpace(string(out))
		}
		// Control: the SSH remote's URL is in the agent's env (GIT_CONFIG_VALUE_1) and in
		// the clone's config.
		control := scan([]string{gitSSHURL})
		if !regexp.MustCompile(`(?m)^/proc/[0-9]+/environ$`).MatchString(control) || !strings.Contains(control, "/home/agent/origin-ssh/.git/config") {
			t.Fatalf("scanner control: want a process environment and the clone's config, got:\n%s", control)
		}
		if found := scan(append([]string{forge.token}, forge.keySecrets()...)); found != "" {
			t.Errorf("a credential is in the agent:\n%s", found)
		}
	})

	logs := e.must("logs", id, "--role", "git-gate")
	if !strings.Contains(logs, "bottle/x") {
		t.Errorf("git-gate log lacks the pushes:\n%s", logs)
	}
	for _, s := range append([]string{forge.token}, forge.keySecrets()...) {
		if strings.Contains(logs, s) {
			t.Error("a credential is in git-gate's log")
		}
	}
	tokenSeen, keySeen := stopTokenWatch(), stopKeyWatch()
	if tokenSeen || keySeen {
		t.Errorf("a credential appeared on a host process's command line (token %v, key %v)", tokenSeen, keySeen)
	}
	e.must("rm", "--force", id)
	if ps := e.ps(); len(ps) != 0 {
		t.Errorf("bottles left after rm: %+v", ps)
	}
	e.assertNothingLeft(id)
}
