package gitgate

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/bottle-dev/bottle/internal/testutil/gitserver"
)

const testToken = "ghp_testTOKENvalue0123456789abcdef"

// upstreamFixture is one gate in front of one upstream kind.
type upstreamFixture struct {
	h        *gitHarness
	bare     string // the upstream repository
	gateURL  string // http://127.0.0.1:PORT
	logs     *syncBuffer
	secrets  []string // must never show up in logs or answers
	sshSrv   *gitserver.SSHServer
	cfg      Config
	env      map[string]string
	startNew func(cfg Config) (string, *syncBuffer)
}

func newHTTPSFixture(t *testing.T, rules []PushRule) *upstreamFixture {
	h := newGitHarness(t)
	root := t.TempDir()
	bare := h.newUpstream(root, "repo.git")
	srv := httpsUpstreamServer(t, h, root, testToken)
	env := map[string]string{"GIT_TOKEN": testToken}
	cfg := Config{
		CAFile:  writeCA(t, srv),
		Remotes: []Remote{{Name: "origin", URL: srv.URL + "/repo.git", TokenEnv: "GIT_TOKEN", Push: rules}},
	}
	f := &upstreamFixture{h: h, bare: bare, cfg: cfg, env: env,
		secrets: []string{testToken, base64.StdEncoding.EncodeToString([]byte(DefaultTokenUser + ":" + testToken))}}
	f.startNew = func(cfg Config) (string, *syncBuffer) { return startGate(t, cfg, env) }
	f.gateURL, f.logs = f.startNew(cfg)
	return f
}

func newSSHFixture(t *testing.T, rules []PushRule) *upstreamFixture {
	h := newGitHarness(t)
	root := t.TempDir()
	bare := h.newUpstream(root, "repo.git")
	keyPEM, signer := sshKeyPair(t)
	srv := startSSHGitServer(t, h, root, signer.PublicKey())
	env := map[string]string{"GIT_SSH_KEY": keyPEM}
	cfg := Config{
		Remotes: []Remote{{
			Name: "origin", URL: "ssh://git@" + srv.Addr() + "/repo.git", Kind: "ssh",
			SSHKeyEnv: "GIT_SSH_KEY", KnownHosts: srv.KnownHosts("127.0.0.1"), Push: rules,
		}},
	}
	keyBody := strings.Join(strings.Split(keyPEM, "\n")[1:3], "")
	f := &upstreamFixture{h: h, bare: bare, cfg: cfg, env: env, sshSrv: srv, secrets: []string{keyBody}}
	f.startNew = func(cfg Config) (string, *syncBuffer) { return startGate(t, cfg, env) }
	f.gateURL, f.logs = f.startNew(cfg)
	return f
}

// clone clones origin through the gate into a fresh work tree.
func (f *upstreamFixture) clone(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "work")
	f.h.run("", "clone", "-q", f.gateURL+"/origin.git", dir)
	return dir
}

// assertNoSecrets scans text for every credential the fixture holds.
func (f *upstreamFixture) assertNoSecrets(t *testing.T, what, text string) {
	t.Helper()
	for _, s := range f.secrets {
		if s != "" && strings.Contains(text, s) {
			t.Fatalf("%s holds a credential", what)
		}
	}
}

// pushLogs returns the gate's "git-gate push" log records.
func pushLogs(t *testing.T, logs string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		if rec["msg"] == "git-gate push" {
			out = append(out, rec)
		}
	}
	return out
}

func TestGateHTTPS(t *testing.T) { exerciseGate(t, newHTTPSFixture) }

func TestGateSSH(t *testing.T) { exerciseGate(t, newSSHFixture) }

func exerciseGate(t *testing.T, newFixture func(*testing.T, []PushRule) *upstreamFixture) {
	f := newFixture(t, nil) // default rules: refs/heads/bottle/*, no force, no delete
	h := f.h
	mainBefore := h.revParse(f.bare, "refs/heads/main")
	existingBefore := h.revParse(f.bare, "refs/heads/bottle/existing")
	var allOutput strings.Builder

	work := f.clone(t)
	if got := h.run(work, "rev-parse", "HEAD"); got != mainBefore {
		t.Fatalf("clone HEAD = %s, upstream main = %s", got, mainBefore)
	}

	t.Run("fetch", func(t *testing.T) {
		other := f.clone(t)
		c := h.commit(other, "b.txt", "b\n")
		h.run(other, "push", "-q", "origin", "HEAD:refs/heads/bottle/fetchme")
		out := h.run(work, "fetch", "origin")
		allOutput.WriteString(out)
		if got := h.run(work, "rev-parse", "origin/bottle/fetchme"); got != c {
			t.Fatalf("fetched bottle/fetchme = %s, want %s", got, c)
		}
	})

	t.Run("push allowed branch", func(t *testing.T) {
		c1 := h.commit(work, "x.txt", "x1\n")
		out := h.run(work, "push", "origin", "HEAD:refs/heads/bottle/x")
		allOutput.WriteString(out)
		if got := h.revParse(f.bare, "refs/heads/bottle/x"); got != c1 {
			t.Fatalf("upstream bottle/x = %q, want %s", got, c1)
		}
		// A fast-forward of the now existing branch, including a merge commit.
		h.run(work, "checkout", "-q", "-b", "side", "HEAD~1")
		h.commit(work, "side.txt", "side\n")
		h.run(work, "checkout", "-q", "-")
		h.run(work, "merge", "-q", "--no-edit", "side")
		c2 := h.commit(work, "x.txt", "x2\n")
		allOutput.WriteString(h.run(work, "push", "origin", "HEAD:refs/heads/bottle/x"))
		if got := h.revParse(f.bare, "refs/heads/bottle/x"); got != c2 {
			t.Fatalf("upstream bottle/x after fast-forward = %q, want %s", got, c2)
		}
		// Fast-forward of a branch that existed before the clone.
		h.run(work, "checkout", "-q", "-b", "ex", "origin/bottle/existing")
		c3 := h.commit(work, "ex.txt", "ex\n")
		allOutput.WriteString(h.run(work, "push", "origin", "HEAD:refs/heads/bottle/existing"))
		if got := h.revParse(f.bare, "refs/heads/bottle/existing"); got != c3 {
			t.Fatalf("upstream bottle/existing = %q, want %s", got, c3)
		}
		existingBefore = c3
	})

	t.Run("push to main refused", func(t *testing.T) {
		h.commit(work, "main.txt", "m\n")
		out, err := h.try(work, "push", "origin", "HEAD:refs/heads/main")
		allOutput.WriteString(out)
		if err == nil {
			t.Fatalf("push to main succeeded:\n%s", out)
		}
		for _, want := range []string{"[remote rejected]", "git-gate", "not pushable", "refs/heads/bottle/*"} {
			if !strings.Contains(out, want) {
				t.Errorf("git output lacks %q:\n%s", want, out)
			}
		}
		if got := h.revParse(f.bare, "refs/heads/main"); got != mainBefore {
			t.Fatalf("upstream main changed to %s", got)
		}
	})

	t.Run("force push refused", func(t *testing.T) {
		h.run(work, "checkout", "-q", "-b", "rewrite", "origin/bottle/existing")
		h.run(work, "reset", "-q", "--hard", "HEAD~1")
		h.commit(work, "rewrite.txt", "r\n")
		out, err := h.try(work, "push", "--force", "origin", "HEAD:refs/heads/bottle/existing")
		allOutput.WriteString(out)
		if err == nil {
			t.Fatalf("force push succeeded:\n%s", out)
		}
		if !strings.Contains(out, "not a fast-forward") || !strings.Contains(out, "git-gate") {
			t.Errorf("git output does not explain the refusal:\n%s", out)
		}
		if got := h.revParse(f.bare, "refs/heads/bottle/existing"); got != existingBefore {
			t.Fatalf("upstream bottle/existing changed to %s", got)
		}
		// A rewind to an older commit (no new objects at all) is a force push too.
		out, err = h.try(work, "push", "--force", "origin", "origin/bottle/existing~1:refs/heads/bottle/existing")
		allOutput.WriteString(out)
		if err == nil || !strings.Contains(out, "not a fast-forward") {
			t.Fatalf("rewind push: err=%v\n%s", err, out)
		}
		if got := h.revParse(f.bare, "refs/heads/bottle/existing"); got != existingBefore {
			t.Fatalf("upstream bottle/existing changed to %s", got)
		}
	})

	t.Run("delete refused", func(t *testing.T) {
		out, err := h.try(work, "push", "origin", ":refs/heads/bottle/x")
		allOutput.WriteString(out)
		if err == nil {
			t.Fatalf("delete succeeded:\n%s", out)
		}
		if !strings.Contains(out, "deleting this ref is not allowed") {
			t.Errorf("git output does not explain the refusal:\n%s", out)
		}
		if h.revParse(f.bare, "refs/heads/bottle/x") == "" {
			t.Fatal("upstream bottle/x was deleted")
		}
	})

	t.Run("mixed push refused as a whole", func(t *testing.T) {
		c := h.commit(work, "mixed.txt", "mixed\n")
		out, err := h.try(work, "push", "origin", "HEAD:refs/heads/bottle/mixed", "HEAD:refs/heads/main")
		allOutput.WriteString(out)
		if err == nil {
			t.Fatalf("mixed push succeeded:\n%s", out)
		}
		if h.revParse(f.bare, "refs/heads/bottle/mixed") != "" {
			t.Fatalf("allowed half of a refused push landed (%s)", c)
		}
		if !strings.Contains(out, "another ref in this push was refused") {
			t.Errorf("git output does not explain the refusal:\n%s", out)
		}
	})

	t.Run("unknown remote", func(t *testing.T) {
		out, err := h.try("", "ls-remote", f.gateURL+"/nope.git")
		allOutput.WriteString(out)
		if err == nil || !strings.Contains(out, "not found") {
			t.Fatalf("ls-remote of an unknown remote: err=%v\n%s", err, out)
		}
		resp, err := http.Get(f.gateURL + "/nope.git/info/refs?service=git-upload-pack")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "origin") {
			t.Fatalf("unknown remote: HTTP %d %q", resp.StatusCode, body)
		}
		allOutput.Write(body)
	})

	t.Run("logs", func(t *testing.T) {
		logs := f.logs.String()
		t.Logf("git output:\n%s\ngate log:\n%s", allOutput.String(), logs)
		f.assertNoSecrets(t, "gate log", logs)
		f.assertNoSecrets(t, "git output", allOutput.String())
		recs := pushLogs(t, logs)
		var allowed, refused int
		for _, r := range recs {
			if r["remote"] != "origin" {
				t.Errorf("push log without remote: %v", r)
			}
			switch r["verdict"] {
			case "allowed":
				allowed++
				if ups, _ := r["upstream_refs"].([]any); len(ups) == 0 || !strings.HasSuffix(ups[0].(string), ": ok") {
					t.Errorf("allowed push log without the upstream's ok: %v", r)
				}
			case "refused":
				refused++
			}
			refs, _ := r["refs"].([]any)
			if len(refs) == 0 {
				t.Errorf("push log without refs: %v", r)
			}
			for _, x := range refs {
				m, _ := x.(map[string]any)
				if m["ref"] == "" || len(m["old"].(string)) != 40 || len(m["new"].(string)) != 40 {
					t.Errorf("push log ref entry incomplete: %v", m)
				}
			}
		}
		if allowed < 4 || refused < 5 {
			t.Errorf("push logs: %d allowed, %d refused; want >= 4 and >= 5\n%s", allowed, refused, logs)
		}
		if !strings.Contains(logs, `"op":"fetch"`) {
			t.Errorf("no fetch log line:\n%s", logs)
		}
	})
}

// TestGateForceAndDeleteRules: rules that allow force and delete let them through.
func TestGateForceAndDeleteRules(t *testing.T) {
	for name, newFixture := range map[string]func(*testing.T, []PushRule) *upstreamFixture{"https": newHTTPSFixture, "ssh": newSSHFixture} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, []PushRule{{Ref: "refs/heads/bottle/*", Force: true, Delete: true}})
			h := f.h
			work := f.clone(t)
			h.run(work, "checkout", "-q", "-b", "rewrite", "origin/bottle/existing")
			h.run(work, "reset", "-q", "--hard", "HEAD~1")
			c := h.commit(work, "rewrite.txt", "r\n")
			h.run(work, "push", "--force", "origin", "HEAD:refs/heads/bottle/existing")
			if got := h.revParse(f.bare, "refs/heads/bottle/existing"); got != c {
				t.Fatalf("forced bottle/existing = %q, want %s", got, c)
			}
			h.run(work, "push", "origin", ":refs/heads/bottle/existing")
			if got := h.revParse(f.bare, "refs/heads/bottle/existing"); got != "" {
				t.Fatalf("bottle/existing still exists at %s", got)
			}
			h.run(work, "checkout", "-q", "-b", "m", "origin/main")
			h.commit(work, "m.txt", "m\n")
			out, err := h.try(work, "push", "origin", "HEAD:refs/heads/main")
			if err == nil || !strings.Contains(out, "not pushable") {
				t.Fatalf("push to main: err=%v\n%s", err, out)
			}
		})
	}
}

// TestGateReadOnly refuses every push.
func TestGateReadOnly(t *testing.T) {
	f := newHTTPSFixture(t, nil)
	cfg := f.cfg
	cfg.Remotes = append([]Remote(nil), cfg.Remotes...)
	cfg.Remotes[0].ReadOnly = true
	url, _ := f.startNew(cfg)
	dir := filepath.Join(t.TempDir(), "ro")
	f.h.run("", "clone", "-q", url+"/origin.git", dir)
	f.h.commit(dir, "n.txt", "n\n")
	out, err := f.h.try(dir, "push", "origin", "HEAD:refs/heads/bottle/n")
	if err == nil || !strings.Contains(out, "read-only") {
		t.Fatalf("push to a read-only remote: err=%v\n%s", err, out)
	}
}

// TestGateProtocolV0OverHTTPS: an old-protocol client still fetches through an HTTPS
// upstream (the requests pass through).
func TestGateProtocolV0OverHTTPS(t *testing.T) {
	f := newHTTPSFixture(t, nil)
	dir := filepath.Join(t.TempDir(), "v0")
	f.h.run("", "-c", "protocol.version=0", "clone", "-q", f.gateURL+"/origin.git", dir)
	if got, want := f.h.run(dir, "rev-parse", "HEAD"), f.h.revParse(f.bare, "refs/heads/main"); got != want {
		t.Fatalf("v0 clone HEAD = %s, want %s", got, want)
	}
}

func TestGateHTTPSWrongToken(t *testing.T) {
	f := newHTTPSFixture(t, nil)
	wrong := "ghp_wrongTOKEN9876543210"
	f.secrets = append(f.secrets, wrong)
	url, logs := startGate(t, f.cfg, map[string]string{"GIT_TOKEN": wrong})
	out, err := f.h.try("", "ls-remote", url+"/origin.git")
	if err == nil || !strings.Contains(out, "refused the token from GIT_TOKEN") || !strings.Contains(out, "remote origin") {
		t.Fatalf("ls-remote with a wrong token: err=%v\n%s", err, out)
	}
	f.assertNoSecrets(t, "git output", out)
	f.assertNoSecrets(t, "gate log", logs.String())
}

// TestGateAgentCredentialDropped: whatever Authorization the agent sends is replaced.
func TestGateAgentCredentialDropped(t *testing.T) {
	f := newHTTPSFixture(t, nil)
	req, _ := http.NewRequest(http.MethodGet, f.gateURL+"/origin.git/info/refs?service=git-upload-pack", nil)
	req.SetBasicAuth(DefaultTokenUser, "agent-guess")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "refs/heads/main") {
		t.Fatalf("info/refs with an agent credential: HTTP %d %q", resp.StatusCode, body)
	}
}

func TestGateSSHWrongHostKey(t *testing.T) {
	f := newSSHFixture(t, nil)
	_, other := sshKeyPair(t)
	cfg := f.cfg
	cfg.Remotes = append([]Remote(nil), cfg.Remotes...)
	_, port, _ := net.SplitHostPort(f.sshSrv.Addr())
	cfg.Remotes[0].KnownHosts = gitserver.KnownHostsLine("127.0.0.1", port, other.PublicKey())
	url, logs := f.startNew(cfg)
	out, err := f.h.try("", "ls-remote", url+"/origin.git")
	if err == nil || !strings.Contains(out, "remote origin") || !strings.Contains(out, "host key does not match known_hosts") {
		t.Fatalf("ls-remote with a wrong pinned key: err=%v\n%s", err, out)
	}
	t.Logf("git output:\n%s", out)
	n := len(f.sshSrv.Commands())
	if n != 0 {
		t.Fatalf("the gate ran %d commands on an unverified host", n)
	}
	f.assertNoSecrets(t, "gate log", logs.String())
}

// TestGateSSHWithoutV2: an SSH server that ignores GIT_PROTOCOL gets a clear error.
func TestGateSSHWithoutV2(t *testing.T) {
	f := newSSHFixture(t, nil)
	f.sshSrv.IgnoreEnv.Store(true)
	out, err := f.h.try("", "ls-remote", f.gateURL+"/origin.git")
	if err == nil || !strings.Contains(out, "protocol v2") || !strings.Contains(out, "remote origin") {
		t.Fatalf("ls-remote against a v0-only SSH server: err=%v\n%s", err, out)
	}
	t.Logf("git output:\n%s", out)
	// Push does not need v2.
	f.sshSrv.IgnoreEnv.Store(true)
	work := filepath.Join(t.TempDir(), "w")
	f.h.run("", "init", "-q", work)
	c := f.h.commit(work, "new.txt", "n\n")
	f.h.run(work, "push", "-q", f.gateURL+"/origin.git", "HEAD:refs/heads/bottle/fresh")
	if got := f.h.revParse(f.bare, "refs/heads/bottle/fresh"); got != c {
		t.Fatalf("upstream bottle/fresh = %q, want %s", got, c)
	}
}

// TestGateDialOverride: scp-like and https URLs with names that only the dial hook
// resolves (to loopback); TLS and known_hosts are checked against those names.
func TestGateDialOverride(t *testing.T) {
	h := newGitHarness(t)
	root := t.TempDir()
	bare := h.newUpstream(root, "repo.git")
	keyPEM, signer := sshKeyPair(t)
	sshSrv := startSSHGitServer(t, h, root, signer.PublicKey())
	httpsSrv := httpsUpstreamServer(t, h, root, testToken)
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var target string
		switch addr {
		case "git.example.invalid:22":
			target = sshSrv.Addr()
		case "example.com:443": // a name in httptest's certificate
			target = httpsSrv.Listener.Addr().String()
		default:
			t.Errorf("unexpected dial to %s", addr)
			return nil, &net.OpError{Op: "dial", Net: network, Err: io.EOF}
		}
		return (&net.Dialer{}).DialContext(ctx, network, target)
	}
	cfg := Config{
		CAFile: writeCA(t, httpsSrv),
		Dial:   dial,
		Remotes: []Remote{
			{Name: "viassh", URL: "git@git.example.invalid:/repo.git", SSHKeyEnv: "K",
				KnownHosts: "git.example.invalid " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshSrv.HostKey())))},
			{Name: "viahttps", URL: "https://example.com/repo.git", TokenEnv: "T"},
		},
	}
	url, _ := startGate(t, cfg, map[string]string{"K": keyPEM, "T": testToken})
	want := h.revParse(bare, "refs/heads/main")
	for _, name := range []string{"viassh", "viahttps"} {
		out := h.run("", "ls-remote", url+"/"+name+".git", "refs/heads/main")
		if !strings.HasPrefix(out, want) {
			t.Errorf("%s: ls-remote = %q, want %s", name, out, want)
		}
	}
}

// TestGatePushOptions: allowed push options sit between the commands and the pack;
// the gate must find the pack after them.
func TestGatePushOptions(t *testing.T) {
	for name, newFixture := range map[string]func(*testing.T, []PushRule) *upstreamFixture{"https": newHTTPSFixture, "ssh": newSSHFixture} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, nil)
			f.h.run(f.bare, "config", "receive.advertisePushOptions", "true")
			cfg := f.cfg
			cfg.Remotes = append([]Remote(nil), cfg.Remotes...)
			cfg.Remotes[0].PushOptions = []string{"ci.skip", "note=x"}
			f.gateURL, f.logs = f.startNew(cfg)
			work := f.clone(t)
			f.h.run(work, "checkout", "-q", "-b", "o", "origin/bottle/existing")
			c := f.h.commit(work, "o.txt", "o\n")
			f.h.run(work, "push", "-q", "-o", "ci.skip", "-o", "note=x", "origin", "HEAD:refs/heads/bottle/existing")
			if got := f.h.revParse(f.bare, "refs/heads/bottle/existing"); got != c {
				t.Fatalf("upstream bottle/existing = %q, want %s", got, c)
			}
		})
	}
}

// TestGateSSHMissingRepository: the upstream's own error reaches the agent.
func TestGateSSHMissingRepository(t *testing.T) {
	f := newSSHFixture(t, nil)
	cfg := f.cfg
	cfg.Remotes = append([]Remote(nil), cfg.Remotes...)
	cfg.Remotes[0].URL = strings.Replace(cfg.Remotes[0].URL, "/repo.git", "/missing.git", 1)
	url, _ := f.startNew(cfg)
	out, err := f.h.try("", "ls-remote", url+"/origin.git")
	if err == nil || !strings.Contains(out, "remote origin") || !strings.Contains(out, "missing.git") {
		t.Fatalf("ls-remote of a missing upstream repository: err=%v\n%s", err, out)
	}
	work := filepath.Join(t.TempDir(), "w")
	f.h.run("", "init", "-q", work)
	f.h.commit(work, "n.txt", "n\n")
	out, err = f.h.try(work, "push", url+"/origin.git", "HEAD:refs/heads/bottle/x")
	if err == nil || !strings.Contains(out, "remote origin") {
		t.Fatalf("push to a missing upstream repository: err=%v\n%s", err, out)
	}
	t.Logf("git output:\n%s", out)
}

// TestGateLargePush: a multi-megabyte push (chunked request body, big pack) is spooled,
// checked and forwarded whole; the spool file is removed afterwards.
func TestGateLargePush(t *testing.T) {
	for name, newFixture := range map[string]func(*testing.T, []PushRule) *upstreamFixture{"https": newHTTPSFixture, "ssh": newSSHFixture} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, nil)
			spool := t.TempDir()
			cfg := f.cfg
			cfg.SpoolDir = spool
			url, _ := f.startNew(cfg)
			work := filepath.Join(t.TempDir(), "big")
			f.h.run("", "clone", "-q", url+"/origin.git", work)
			f.h.run(work, "checkout", "-q", "-b", "big", "origin/bottle/existing")
			blob := make([]byte, 6<<20)
			_, _ = rand.Read(blob)
			c := f.h.commit(work, "big.bin", string(blob))
			f.h.run(work, "push", "-q", "origin", "HEAD:refs/heads/bottle/existing")
			if got := f.h.revParse(f.bare, "refs/heads/bottle/existing"); got != c {
				t.Fatalf("upstream bottle/existing = %q, want %s", got, c)
			}
			if left, _ := os.ReadDir(spool); len(left) != 0 {
				t.Fatalf("spool files left behind: %v", left)
			}
			// Too large for a small cap: refused with a clear message, upstream unchanged.
			cfg.MaxPushBytes = 1 << 20
			small, _ := f.startNew(cfg)
			f.h.run(work, "remote", "add", "small", small+"/origin.git")
			f.h.commit(work, "big2.bin", string(blob[1:]))
			out, err := f.h.try(work, "push", "small", "HEAD:refs/heads/bottle/existing")
			t.Logf("git output:\n%s", out)
			if err == nil || !strings.Contains(out, "max_push_bytes") {
				t.Fatalf("oversized push: err=%v\n%s", err, out)
			}
			if got := f.h.revParse(f.bare, "refs/heads/bottle/existing"); got != c {
				t.Fatalf("oversized push moved bottle/existing to %s", got)
			}
		})
	}
}
