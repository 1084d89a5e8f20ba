package gitgate

import (
	"context"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/bottle-dev/bottle/internal/testutil"
	"github.com/bottle-dev/bottle/internal/testutil/gitserver"
)

// gitHarness runs the real git client with a private, reproducible environment.
type gitHarness struct {
	t    *testing.T
	git  string
	home string
	env  []string
}

func newGitHarness(t *testing.T) *gitHarness {
	t.Helper()
	git := testutil.RequireBinary(t, "git")
	home := t.TempDir()
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + home,
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_TERMINAL_PROMPT=0",
		"GIT_AUTHOR_NAME=Bottle Test", "GIT_AUTHOR_EMAIL=test@bottle.invalid",
		"GIT_COMMITTER_NAME=Bottle Test", "GIT_COMMITTER_EMAIL=test@bottle.invalid",
		"LANG=C", "LC_ALL=C",
	}
	h := &gitHarness{t: t, git: git, home: home, env: env}
	h.run("", "config", "--global", "init.defaultBranch", "main")
	h.run("", "config", "--global", "protocol.version", "2")
	return h
}

// try runs git and returns its combined output and error.
func (h *gitHarness) try(dir string, args ...string) (string, error) {
	h.t.Helper()
	cmd := exec.Command(h.git, args...)
	cmd.Dir = dir
	if dir == "" {
		cmd.Dir = h.home
	}
	cmd.Env = h.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// run runs git and fails the test on error.
func (h *gitHarness) run(dir string, args ...string) string {
	h.t.Helper()
	out, err := h.try(dir, args...)
	if err != nil {
		h.t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(out)
}

// commit writes a file and commits it in the work tree dir.
func (h *gitHarness) commit(dir, file, content string) string {
	h.t.Helper()
	if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
	h.run(dir, "add", file)
	h.run(dir, "commit", "-q", "-m", "change "+file)
	return h.run(dir, "rev-parse", "HEAD")
}

// newUpstream creates a bare repository with main and bottle/existing branches.
func (h *gitHarness) newUpstream(root, name string) string {
	h.t.Helper()
	bare := filepath.Join(root, name)
	h.run("", "init", "-q", "--bare", bare)
	h.run(bare, "config", "http.receivepack", "true")
	seed := filepath.Join(h.t.TempDir(), "seed")
	h.run("", "init", "-q", seed)
	h.commit(seed, "README", "hello\n")
	h.commit(seed, "a.txt", "a\n")
	h.run(seed, "push", "-q", bare, "main", "main:refs/heads/bottle/existing")
	return bare
}

// revParse reads a ref of a bare repository; "" when it does not exist.
func (h *gitHarness) revParse(bare, ref string) string {
	h.t.Helper()
	out, err := h.try(bare, "rev-parse", "--verify", "-q", ref)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// httpsUpstreamServer serves root through git http-backend over TLS and demands
// basic auth with token.
func httpsUpstreamServer(t *testing.T, h *gitHarness, root, token string) *httptest.Server {
	t.Helper()
	return gitserver.StartHTTPS(t, gitserver.HTTPSConfig{
		Git:   h.git,
		Root:  root,
		Env:   []string{"GIT_CONFIG_NOSYSTEM=1", "HOME=" + h.home},
		User:  DefaultTokenUser,
		Token: token,
	})
}

// writeCA writes the test server's certificate as a PEM CA file.
func writeCA(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, gitserver.CertPEM(srv), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// sshKeyPair returns a fresh ed25519 key as an OpenSSH PEM private key and signer.
func sshKeyPair(t *testing.T) (string, ssh.Signer) { return gitserver.KeyPair(t) }

// startSSHGitServer runs a git SSH server on loopback accepting only clientKey.
func startSSHGitServer(t *testing.T, h *gitHarness, root string, clientKey ssh.PublicKey) *gitserver.SSHServer {
	t.Helper()
	return gitserver.StartSSH(t, gitserver.SSHConfig{Git: h.git, Root: root, Env: h.env, ClientKey: clientKey})
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer = testutil.SyncBuffer

// startGate runs a gate on loopback and returns its base URL and log.
func startGate(t *testing.T, cfg Config, env map[string]string) (string, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	g, err := New(cfg, func(k string) string { return env[k] }, logger)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return "http://" + ln.Addr().String(), logs
}
