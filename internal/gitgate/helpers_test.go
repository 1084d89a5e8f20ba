package gitgate

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/bottle-dev/bottle/internal/testutil"
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
	backend := &cgi.Handler{
		Path: h.git,
		Args: []string{"http-backend"},
		Dir:  root,
		Env: []string{
			"GIT_PROJECT_ROOT=" + root,
			"GIT_HTTP_EXPORT_ALL=1",
			"GIT_CONFIG_NOSYSTEM=1",
			"HOME=" + h.home,
		},
		InheritEnv: []string{"PATH"},
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		if !ok || user != DefaultTokenUser || pass != token {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "bad credentials", http.StatusUnauthorized)
			return
		}
		backend.ServeHTTP(w, r)
	}))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// writeCA writes the test server's certificate as a PEM CA file.
func writeCA(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// sshKeyPair returns a fresh ed25519 key as an OpenSSH PEM private key and signer.
func sshKeyPair(t *testing.T) (string, ssh.Signer) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(block)), signer
}

// sshGitServer is a minimal git SSH server: it accepts one client key and runs the
// real git-upload-pack / git-receive-pack for paths under root.
type sshGitServer struct {
	t          *testing.T
	git        string
	root       string
	env        []string
	clientKey  ssh.PublicKey
	hostSigner ssh.Signer
	ln         net.Listener
	ignoreEnv  atomic.Bool // behave like an sshd without AcceptEnv GIT_PROTOCOL

	mu       sync.Mutex
	commands []string
}

func startSSHGitServer(t *testing.T, h *gitHarness, root string, clientKey ssh.PublicKey) *sshGitServer {
	t.Helper()
	_, hostSigner := sshKeyPair(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &sshGitServer{t: t, git: h.git, root: root, env: h.env, clientKey: clientKey, hostSigner: hostSigner, ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); s.handle(c) }()
		}
	}()
	return s
}

func (s *sshGitServer) addr() string { return s.ln.Addr().String() }

// knownHosts is the known_hosts line pinning this server's host key.
func (s *sshGitServer) knownHosts(host string) string {
	_, port, _ := net.SplitHostPort(s.addr())
	return fmt.Sprintf("[%s]:%s %s", host, port, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.hostSigner.PublicKey()))))
}

func (s *sshGitServer) handle(c net.Conn) {
	defer c.Close()
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(key.Marshal(), s.clientKey.Marshal()) {
				return &ssh.Permissions{}, nil
			}
			return nil, errors.New("unknown key")
		},
	}
	cfg.AddHostKey(s.hostSigner)
	_, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(ssh.UnknownChannelType, "session only")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			return
		}
		go s.session(ch, creqs)
	}
}

func (s *sshGitServer) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	var env []string
	for req := range reqs {
		switch req.Type {
		case "env":
			var kv struct{ Name, Value string }
			if err := ssh.Unmarshal(req.Payload, &kv); err != nil || kv.Name != "GIT_PROTOCOL" || s.ignoreEnv.Load() {
				_ = req.Reply(false, nil)
				continue
			}
			env = append(env, "GIT_PROTOCOL="+kv.Value)
			_ = req.Reply(true, nil)
		case "exec":
			var cmd struct{ Command string }
			if err := ssh.Unmarshal(req.Payload, &cmd); err != nil {
				_ = req.Reply(false, nil)
				return
			}
			s.mu.Lock()
			s.commands = append(s.commands, cmd.Command)
			s.mu.Unlock()
			service, quoted, _ := strings.Cut(cmd.Command, " ")
			path := strings.Trim(quoted, "'")
			if (service != "git-upload-pack" && service != "git-receive-pack") || strings.Contains(path, "..") {
				_ = req.Reply(false, nil)
				return
			}
			_ = req.Reply(true, nil)
			code := s.run(ch, strings.TrimPrefix(service, "git-"), filepath.Join(s.root, path), env)
			_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(code)}))
			return
		default:
			_ = req.Reply(false, nil)
		}
	}
}

func (s *sshGitServer) run(ch ssh.Channel, sub, dir string, env []string) int {
	cmd := exec.Command(s.git, sub, dir)
	cmd.Env = append(append([]string{}, s.env...), env...)
	cmd.Stdout = ch
	cmd.Stderr = ch.Stderr()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return 1
	}
	if err := cmd.Start(); err != nil {
		return 1
	}
	go func() {
		_, _ = io.Copy(stdin, ch)
		_ = stdin.Close()
	}()
	if err := cmd.Wait(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		return 1
	}
	return 0
}

// syncBuffer collects log output from concurrent handlers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

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

func marshalAuthorizedKey(k ssh.PublicKey) []byte { return ssh.MarshalAuthorizedKey(k) }
