package gitgate

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

const sshHandshakeTimeout = 30 * time.Second

// sshUpstream bridges stateless smart-HTTP requests to git-upload-pack and
// git-receive-pack exec sessions. Each request gets its own SSH connection, so a
// dead connection never outlives one request.
type sshUpstream struct {
	addr    remoteAddr
	config  *ssh.ClientConfig
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	display string
}

func newSSHUpstream(addr remoteAddr, keyPEM, keyEnv, knownHostsText string, cfg *Config) (*sshUpstream, error) {
	signer, err := ssh.ParsePrivateKey([]byte(keyPEM))
	if err != nil {
		var missing *ssh.PassphraseMissingError
		if errors.As(err, &missing) {
			return nil, fmt.Errorf("the private key in %s (ssh_key_env) is passphrase-protected; give the gate an unencrypted key", keyEnv)
		}
		// The parser's message never quotes the key, but keep it out anyway.
		return nil, fmt.Errorf("environment variable %s (ssh_key_env) does not hold a PEM/OpenSSH private key", keyEnv)
	}
	hostKeyCB, algos, err := hostKeyCallback(knownHostsText)
	if err != nil {
		return nil, err
	}
	dial := cfg.Dial
	if dial == nil {
		dial = (&net.Dialer{Timeout: sshHandshakeTimeout, KeepAlive: 30 * time.Second}).DialContext
	}
	return &sshUpstream{
		addr: addr,
		config: &ssh.ClientConfig{
			User:              addr.user,
			Auth:              []ssh.AuthMethod{ssh.PublicKeys(signer)},
			HostKeyCallback:   hostKeyCB,
			HostKeyAlgorithms: algos,
			Timeout:           sshHandshakeTimeout,
			ClientVersion:     "SSH-2.0-bottle-git-gate",
		},
		dial:    dial,
		display: addr.display(),
	}, nil
}

// hostKeyCallback builds a strict known_hosts check from the configured lines, and
// the host key algorithms they pin (so the server presents a key we can check).
func hostKeyCallback(text string) (ssh.HostKeyCallback, []string, error) {
	if strings.TrimSpace(text) == "" {
		return nil, nil, fmt.Errorf("known_hosts is empty; pin the host key, e.g. the output of `ssh-keyscan -p PORT HOST`")
	}
	var algos []string
	seen := map[string]bool{}
	add := func(a string) {
		if !seen[a] {
			seen[a] = true
			algos = append(algos, a)
		}
	}
	lines, err := ParseKnownHosts(text)
	if err != nil {
		return nil, nil, err
	}
	certs := false
	for _, l := range lines {
		switch l.Marker {
		case "revoked":
			continue
		case "cert-authority":
			certs = true
			continue
		}
		if l.Key.Type() == ssh.KeyAlgoRSA {
			add(ssh.KeyAlgoRSASHA512)
			add(ssh.KeyAlgoRSASHA256)
		}
		add(l.Key.Type())
	}
	if certs {
		algos = nil // let the server offer certificates too
	} else if len(algos) == 0 {
		return nil, nil, fmt.Errorf("known_hosts holds no host key line")
	}
	// knownhosts reads files only; the file holds public keys and is removed at once.
	f, err := os.CreateTemp("", "git-gate-known-hosts-*")
	if err != nil {
		return nil, nil, fmt.Errorf("known_hosts: %w", err)
	}
	defer os.Remove(f.Name())
	_, werr := f.WriteString(text + "\n")
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, nil, fmt.Errorf("known_hosts: %w", werr)
	}
	cb, err := knownhosts.New(f.Name())
	if err != nil {
		return nil, nil, fmt.Errorf("known_hosts: %w", err)
	}
	return cb, algos, nil
}

// connect dials and authenticates, with the host key checked against known_hosts.
func (u *sshUpstream) connect(ctx context.Context) (*ssh.Client, error) {
	hostport := net.JoinHostPort(u.addr.host, u.addr.port)
	conn, err := u.dial(ctx, "tcp", hostport)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", u.display, err)
	}
	deadline := time.Now().Add(sshHandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	c, chans, reqs, err := ssh.NewClientConn(conn, hostport, u.config)
	stop()
	if err != nil {
		_ = conn.Close()
		var keyErr *knownhosts.KeyError
		if errors.As(err, &keyErr) {
			return nil, fmt.Errorf("upstream %s: host key does not match known_hosts (refusing to talk to it; fix known_hosts only if the host key really changed): %w", u.display, err)
		}
		return nil, fmt.Errorf("upstream %s: ssh handshake: %w", u.display, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return ssh.NewClient(c, chans, reqs), nil
}

// sshCommand is git's own form: git-upload-pack '<path>', single-quoted like sq_quote.
func sshCommand(service, path string) string {
	var b strings.Builder
	b.WriteString(service)
	b.WriteString(" '")
	for _, r := range path {
		switch r {
		case '\'':
			b.WriteString(`'\''`)
		case '!':
			b.WriteString(`'\!'`)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('\'')
	return b.String()
}

// execSession is one running git-*-pack on the upstream.
type execSession struct {
	client  *ssh.Client
	session *ssh.Session
	stdin   io.WriteCloser
	stdout  *bufio.Reader
	stderr  *limitedBuffer
	service string
	display string
	stop    func() bool
}

func (u *sshUpstream) start(ctx context.Context, service string, v2 bool) (*execSession, error) {
	client, err := u.connect(ctx)
	if err != nil {
		return nil, err
	}
	s, err := client.NewSession()
	if err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("upstream %s: ssh session: %w", u.display, err)
	}
	if v2 {
		// Servers that do not accept the variable answer in protocol v0; detected below.
		_ = s.Setenv("GIT_PROTOCOL", "version=2")
	}
	es := &execSession{client: client, session: s, stderr: &limitedBuffer{max: 4 << 10}, service: service, display: u.display}
	s.Stderr = es.stderr
	stdin, err1 := s.StdinPipe()
	stdout, err2 := s.StdoutPipe()
	if err := errors.Join(err1, err2); err != nil {
		es.close()
		return nil, fmt.Errorf("upstream %s: %w", u.display, err)
	}
	es.stdin, es.stdout = stdin, bufio.NewReaderSize(stdout, 64<<10)
	if err := s.Start(sshCommand(service, u.addr.path)); err != nil {
		es.close()
		return nil, fmt.Errorf("upstream %s: start %s: %w", u.display, service, err)
	}
	es.stop = context.AfterFunc(ctx, es.close)
	return es, nil
}

func (es *execSession) close() {
	_ = es.session.Close()
	_ = es.client.Close()
}

// failure explains why the remote command ended early, with its stderr.
func (es *execSession) failure(err error) error {
	_ = es.stdin.Close()
	werr := es.session.Wait()
	es.close()
	msg := strings.TrimSpace(es.stderr.String())
	if werr != nil && msg != "" {
		return fmt.Errorf("upstream %s: %s failed: %s", es.display, es.service, msg)
	}
	if werr != nil {
		return fmt.Errorf("upstream %s: %s failed: %w", es.display, es.service, werr)
	}
	return fmt.Errorf("upstream %s: %s: %w", es.display, es.service, err)
}

// readAdvertisement reads pkt-lines up to and including the first flush and returns
// them re-encoded. An ERR line from the server becomes an error.
func (es *execSession) readAdvertisement() ([]byte, error) {
	var out []byte
	for {
		line, err := readPkt(es.stdout)
		if errors.Is(err, errFlush) {
			return append(out, flushPkt...), nil
		}
		if err != nil {
			return nil, es.failure(err)
		}
		if msg, ok := bytes.CutPrefix(line, []byte("ERR ")); ok {
			es.close()
			return nil, fmt.Errorf("upstream %s: %s", es.display, trimLF(msg))
		}
		out = appendPkt(out, line)
	}
}

func (u *sshUpstream) advertise(ctx context.Context, service, _, _ string) (io.ReadCloser, error) {
	v2 := service == "git-upload-pack"
	es, err := u.start(ctx, service, v2)
	if err != nil {
		return nil, err
	}
	defer es.stop()
	adv, err := es.readAdvertisement()
	if err != nil {
		return nil, err
	}
	// Nothing to ask: a flush ends receive-pack, EOF ends upload-pack v2.
	if !v2 {
		_, _ = es.stdin.Write([]byte(flushPkt))
	}
	_ = es.stdin.Close()
	_ = es.session.Wait()
	es.close()
	if v2 {
		if !bytes.HasPrefix(adv, pkt("version 2\n")) {
			return nil, errNoV2(u.display)
		}
		return io.NopCloser(bytes.NewReader(adv)), nil
	}
	head := append(pkt("# service="+service+"\n"), flushPkt...)
	return io.NopCloser(bytes.NewReader(append(head, adv...))), nil
}

func errNoV2(display string) error {
	return fmt.Errorf("upstream %s did not answer in git protocol v2; the gate fetches over SSH with v2 only (OpenSSH servers need `AcceptEnv GIT_PROTOCOL`)", display)
}

func (u *sshUpstream) rpc(ctx context.Context, service, _, _ string, body io.Reader, _ int64) (io.ReadCloser, error) {
	v2 := service == "git-upload-pack"
	es, err := u.start(ctx, service, v2)
	if err != nil {
		return nil, err
	}
	adv, err := es.readAdvertisement()
	if err != nil {
		es.stop()
		return nil, err
	}
	if v2 && !bytes.HasPrefix(adv, pkt("version 2\n")) {
		es.stop()
		es.close()
		return nil, errNoV2(u.display)
	}
	// Write the request while the caller reads the answer: receive-pack may talk
	// (progress) before it has read the whole pack.
	writeErr := make(chan error, 1)
	go func() {
		_, err := io.Copy(es.stdin, body)
		if cerr := es.stdin.Close(); err == nil {
			err = cerr
		}
		writeErr <- err
	}()
	return &sessionReader{es: es, writeErr: writeErr}, nil
}

// sessionReader streams the remote command's stdout; at its end it reports a failed
// exit with the command's stderr.
type sessionReader struct {
	es       *execSession
	writeErr chan error
	done     bool
}

func (r *sessionReader) Read(p []byte) (int, error) {
	n, err := r.es.stdout.Read(p)
	if err == io.EOF && !r.done {
		r.done = true
		werr := r.es.session.Wait()
		if werr != nil {
			msg := strings.TrimSpace(r.es.stderr.String())
			return n, fmt.Errorf("upstream %s: %s failed: %v %s", r.es.display, r.es.service, werr, msg)
		}
		if err := <-r.writeErr; err != nil {
			return n, fmt.Errorf("upstream %s: sending the request: %w", r.es.display, err)
		}
	}
	return n, err
}

func (r *sessionReader) Close() error {
	r.es.stop()
	r.es.close()
	return nil
}

// limitedBuffer keeps the first max bytes written to it (a remote's stderr).
type limitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
