// Package gitserver holds git upstreams for tests: an HTTPS smart-HTTP server (the real
// `git http-backend`) demanding a token, and an SSH server running the real
// git-upload-pack / git-receive-pack for one accepted client key. Both listen on an
// address the test chooses (loopback in unit tests, an address on a test-created
// bridge in end-to-end tests).
package gitserver

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/crypto/ssh"
)

// HTTPSConfig configures StartHTTPS.
type HTTPSConfig struct {
	// Git is the git binary that runs http-backend.
	Git string
	// Root holds the bare repositories, served as /<name>.git.
	Root string
	// Env is http-backend's environment besides GIT_PROJECT_ROOT and
	// GIT_HTTP_EXPORT_ALL (e.g. HOME, GIT_CONFIG_NOSYSTEM); PATH is inherited.
	Env []string
	// User and Token are the only basic-auth credentials accepted.
	User, Token string
	// Addr is the listen address (default 127.0.0.1:0).
	Addr string
	// Cert is the server certificate (default: httptest's self-signed one, whose
	// certificate is then srv.Certificate()).
	Cert *tls.Certificate
}

// StartHTTPS serves cfg.Root through git http-backend over TLS; it is closed at the
// end of the test. Pushes need http.receivepack=true in the repository's config.
func StartHTTPS(t testing.TB, cfg HTTPSConfig) *httptest.Server {
	t.Helper()
	backend := &cgi.Handler{
		Path:       cfg.Git,
		Args:       []string{"http-backend"},
		Dir:        cfg.Root,
		Env:        append([]string{"GIT_PROJECT_ROOT=" + cfg.Root, "GIT_HTTP_EXPORT_ALL=1"}, cfg.Env...),
		InheritEnv: []string{"PATH"},
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		if !ok || user != cfg.User || pass != cfg.Token {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "bad credentials", http.StatusUnauthorized)
			return
		}
		backend.ServeHTTP(w, r)
	}))
	if cfg.Addr != "" {
		ln, err := net.Listen("tcp", cfg.Addr)
		if err != nil {
			t.Fatal(err)
		}
		srv.Listener.Close()
		srv.Listener = ln
	}
	if cfg.Cert != nil {
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{*cfg.Cert}}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// CertPEM is a server's certificate as PEM, for a CA file trusting it.
func CertPEM(srv *httptest.Server) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
}

// KeyPair returns a fresh ed25519 key as an OpenSSH PEM private key and its signer.
func KeyPair(t testing.TB) (string, ssh.Signer) {
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

// KnownHostsLine pins key for host:port the way known_hosts writes it.
func KnownHostsLine(host, port string, key ssh.PublicKey) string {
	name := host
	if port != "22" {
		name = fmt.Sprintf("[%s]:%s", host, port)
	}
	return name + " " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
}

// SSHConfig configures StartSSH.
type SSHConfig struct {
	// Git is the git binary that runs upload-pack and receive-pack.
	Git string
	// Root holds the bare repositories; a command's path is taken relative to it.
	Root string
	// Env is the git commands' environment (GIT_PROTOCOL from the client is added).
	Env []string
	// ClientKey is the only accepted client public key.
	ClientKey ssh.PublicKey
	// Addr is the listen address (default 127.0.0.1:0).
	Addr string
}

// SSHServer is a minimal git SSH server.
type SSHServer struct {
	// IgnoreEnv makes it behave like an sshd without AcceptEnv GIT_PROTOCOL.
	IgnoreEnv atomic.Bool

	cfg        SSHConfig
	hostSigner ssh.Signer
	ln         net.Listener

	mu       sync.Mutex
	commands []string
}

// StartSSH starts an SSH git server with a fresh host key; it stops at the end of the
// test.
func StartSSH(t testing.TB, cfg SSHConfig) *SSHServer {
	t.Helper()
	_, hostSigner := KeyPair(t)
	addr := cfg.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &SSHServer{cfg: cfg, hostSigner: hostSigner, ln: ln}
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

// Addr is the address the server listens on (host:port).
func (s *SSHServer) Addr() string { return s.ln.Addr().String() }

// HostKey is the server's public host key.
func (s *SSHServer) HostKey() ssh.PublicKey { return s.hostSigner.PublicKey() }

// KnownHosts is the known_hosts line pinning this server's host key under host.
func (s *SSHServer) KnownHosts(host string) string {
	_, port, _ := net.SplitHostPort(s.Addr())
	return KnownHostsLine(host, port, s.HostKey())
}

// Commands returns the exec commands the server was asked to run so far.
func (s *SSHServer) Commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.commands...)
}

func (s *SSHServer) handle(c net.Conn) {
	defer c.Close()
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(key.Marshal(), s.cfg.ClientKey.Marshal()) {
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

func (s *SSHServer) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	var env []string
	for req := range reqs {
		switch req.Type {
		case "env":
			var kv struct{ Name, Value string }
			if err := ssh.Unmarshal(req.Payload, &kv); err != nil || kv.Name != "GIT_PROTOCOL" || s.IgnoreEnv.Load() {
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
			code := s.run(ch, strings.TrimPrefix(service, "git-"), filepath.Join(s.cfg.Root, path), env)
			_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(code)}))
			return
		default:
			_ = req.Reply(false, nil)
		}
	}
}

func (s *SSHServer) run(ch ssh.Channel, sub, dir string, env []string) int {
	cmd := exec.Command(s.cfg.Git, sub, dir)
	cmd.Env = append(append([]string{}, s.cfg.Env...), env...)
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
