// Package gitgate is the git-gate sidecar: it serves the git smart-HTTP protocol to
// the agent for a fixed set of declared remotes and talks to the real upstreams with
// credentials the agent never sees. Pushes are checked against per-remote rules before
// anything reaches the upstream.
//
// Agent side: http://git-gate/<name>.git (info/refs, git-upload-pack,
// git-receive-pack; plain HTTP on the bottle's internal network).
//
// Upstream side:
//   - HTTPS: the same smart-HTTP requests, with "Authorization: Basic" built from the
//     token; everything the agent sent as a credential is dropped. Fetches pass
//     through in whatever protocol version the client and upstream agree on.
//   - SSH: each request runs git-upload-pack / git-receive-pack in an exec session
//     (host key pinned by known_hosts, no trust on first use). Fetch needs git
//     protocol v2 there (stateless per request); push uses the v0 receive-pack
//     exchange, whose advertisement the gate reads and drops before sending the
//     agent's commands and pack.
//
// Force pushes: an update of an existing ref that no force rule covers must be a
// fast-forward, proven from the pushed pack alone: starting at the new commit, the
// gate follows parent links through the commits in the pack and must reach the old
// id. A parent outside the pack is a commit the upstream already has, whose history
// the gate cannot see, so such a path proves nothing; a real fast-forward that only
// reaches the old id through an existing upstream commit (for example moving a branch
// to a commit already on another branch) is refused. Refusals err on the safe side.
// The old id itself is enforced by the upstream: receive-pack updates a ref only if it
// still holds the old id the push names, and creates one only if it does not exist.
//
// The gate reads what it judges exactly as git does, and refuses what git could read
// differently: commands split on single spaces with the ref as every byte after the
// second, ref names by check-ref-format's rules in printable ASCII, commit parents only
// from the lines right after "tree" (a commit of any other shape is refused).
//
// Push options (git push -o) reach the forge's server-side logic, so they pass only
// when the remote lists them, exactly; a remote that lists none refuses them and does
// not advertise the push-options capability to the agent.
package gitgate

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/bottle-dev/bottle/internal/reload"
)

// Gate is the git-gate server; it is an http.Handler.
type Gate struct {
	remotes      map[string]*gateRemote
	extra        atomic.Pointer[PushRuleChanges] // approved rules (RulesFile)
	rules        *reload.File
	log          *slog.Logger
	maxPushBytes int64
	spoolDir     string
	recording    // the audit trail's Recorder (audit.go)
}

type gateRemote struct {
	name        string
	display     string
	rules       []PushRule
	readOnly    bool
	pushOptions []string
	up          upstream
}

const (
	serviceUpload  = "git-upload-pack"
	serviceReceive = "git-receive-pack"
	// maxFetchRequest caps one upload-pack request body (wants and haves).
	maxFetchRequest = 64 << 20
)

// MaxPushOptions caps a remote's push_options (the manifest applies it too).
const MaxPushOptions = 20

// New validates cfg and reads every credential once through getenv (the sidecar's
// own environment). A missing credential is an error naming the variable, never a
// value. log receives one JSON line per fetch and push; nil discards.
func New(cfg Config, getenv func(string) string, log *slog.Logger) (*Gate, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if getenv == nil {
		return nil, fmt.Errorf("git-gate: no environment lookup given")
	}
	if len(cfg.Remotes) == 0 {
		return nil, fmt.Errorf("git-gate config: no remotes; declare at least one remote with name and url")
	}
	g := &Gate{remotes: map[string]*gateRemote{}, log: log, maxPushBytes: cfg.MaxPushBytes, spoolDir: cfg.SpoolDir, recording: recording{cfg.Recorder}}
	if g.spoolDir != "" {
		if st, err := os.Stat(g.spoolDir); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("git-gate config: spool_dir %s is not a directory; create it or leave spool_dir empty", g.spoolDir)
		}
	}
	if g.maxPushBytes <= 0 {
		g.maxPushBytes = DefaultMaxPushBytes
	}
	for i, rc := range cfg.Remotes {
		r, err := newRemote(rc, getenv, &cfg)
		if err != nil {
			return nil, fmt.Errorf("git-gate config: remote %d (%q): %w", i, rc.Name, err)
		}
		if _, dup := g.remotes[r.name]; dup {
			return nil, fmt.Errorf("git-gate config: remote name %q declared twice; give each remote its own name", r.name)
		}
		g.remotes[r.name] = r
	}
	if cfg.RulesFile != "" {
		g.rules = g.rulesFile(cfg.RulesFile)
		if err := g.rules.Load(); err != nil {
			return nil, fmt.Errorf("git-gate config: rules_file: %w", err)
		}
	}
	return g, nil
}

func newRemote(rc Remote, getenv func(string) string, cfg *Config) (*gateRemote, error) {
	if err := CheckRemoteName(rc.Name); err != nil {
		return nil, err
	}
	addr, err := parseRemoteURL(rc.URL)
	if err != nil {
		return nil, err
	}
	switch rc.Kind {
	case "", addr.kind:
	case kindSSH, kindHTTPS:
		return nil, fmt.Errorf("kind %q does not match url %q (a %s url)", rc.Kind, rc.URL, addr.kind)
	default:
		return nil, fmt.Errorf("kind %q: use \"ssh\" or \"https\"", rc.Kind)
	}
	rules := rc.Push
	if rc.ReadOnly && len(rules) > 0 {
		return nil, fmt.Errorf("read_only remotes take no push rules; drop one of them")
	}
	if len(rules) == 0 {
		rules = DefaultPushRules
	}
	for j, pr := range rules {
		if err := CheckRefPattern(pr.Ref); err != nil {
			return nil, fmt.Errorf("push[%d]: %w", j, err)
		}
	}
	if len(rc.PushOptions) > MaxPushOptions {
		return nil, fmt.Errorf("push_options: %d entries, at most %d; list only the options the agent needs", len(rc.PushOptions), MaxPushOptions)
	}
	for j, o := range rc.PushOptions {
		if err := CheckPushOption(o); err != nil {
			return nil, fmt.Errorf("push_options[%d]: %w", j, err)
		}
	}
	r := &gateRemote{name: rc.Name, display: addr.display(), rules: rules, readOnly: rc.ReadOnly, pushOptions: rc.PushOptions}
	switch addr.kind {
	case kindHTTPS:
		if rc.SSHKeyEnv != "" || rc.KnownHosts != "" {
			return nil, fmt.Errorf("ssh_key_env and known_hosts apply to ssh remotes only; this url is https")
		}
		if rc.TokenEnv == "" {
			return nil, fmt.Errorf("token_env is required for an https remote: name the environment variable holding the token")
		}
		token, err := readSecret(getenv, "token_env", rc.TokenEnv)
		if err != nil {
			return nil, err
		}
		if strings.TrimSpace(token) != token || strings.ContainsFunc(token, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return nil, fmt.Errorf("environment variable %s (token_env) holds whitespace or control characters; store the bare token", rc.TokenEnv)
		}
		user := rc.TokenUser
		if user == "" {
			user = DefaultTokenUser
		}
		if strings.ContainsAny(user, ":\r\n") {
			return nil, fmt.Errorf("token_user %q: no colons or line breaks", user)
		}
		r.up, err = newHTTPSUpstream(addr, basicAuth(user, token), rc.TokenEnv, cfg)
		if err != nil {
			return nil, err
		}
	case kindSSH:
		if rc.TokenEnv != "" || rc.TokenUser != "" {
			return nil, fmt.Errorf("token_env and token_user apply to https remotes only; this url is ssh")
		}
		if rc.SSHKeyEnv == "" {
			return nil, fmt.Errorf("ssh_key_env is required for an ssh remote: name the environment variable holding the private key")
		}
		if rc.KnownHosts == "" {
			return nil, fmt.Errorf("known_hosts is required for an ssh remote: pin the host key (e.g. from `ssh-keyscan %s`)", addr.host)
		}
		key, err := readSecret(getenv, "ssh_key_env", rc.SSHKeyEnv)
		if err != nil {
			return nil, err
		}
		r.up, err = newSSHUpstream(addr, key, rc.SSHKeyEnv, rc.KnownHosts, cfg)
		if err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Remotes returns the declared remote names, sorted.
func (g *Gate) Remotes() []string {
	names := make([]string, 0, len(g.remotes))
	for n := range g.remotes {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Serve serves the gate on ln until ctx ends, then shuts down gracefully.
func (g *Gate) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           g,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       5 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelWarn),
	}
	g.log.Info("git-gate listening", "addr", ln.Addr().String(), "remotes", g.Remotes())
	if g.rules != nil {
		go g.rules.Watch(ctx, g.log)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("git-gate on %s stopped: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("git-gate on %s stopped: %w", ln.Addr(), err)
	}
	return nil
}

// ServeHTTP implements the agent side: /<name>.git/info/refs?service=...,
// /<name>.git/git-upload-pack and /<name>.git/git-receive-pack; GET /healthz answers ok.
func (g *Gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	if path == "/healthz" && r.Method == http.MethodGet {
		_, _ = io.WriteString(w, "ok\n")
		return
	}
	repo, endpoint, ok := splitRepoPath(path)
	remote := g.remotes[strings.TrimSuffix(repo, ".git")]
	if !ok || remote == nil {
		msg := fmt.Sprintf("git-gate: no remote here; the declared remotes are %s, reached as http://git-gate/<name>.git", strings.Join(g.Remotes(), ", "))
		g.log.LogAttrs(r.Context(), slog.LevelWarn, "git-gate unknown remote", slog.String("path", truncate(path, 200)), slog.String("client", r.RemoteAddr))
		http.Error(w, msg, http.StatusNotFound)
		return
	}
	switch {
	case endpoint == "info/refs" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		service := r.URL.Query().Get("service")
		if service != serviceUpload && service != serviceReceive {
			http.Error(w, "git-gate: only the smart HTTP protocol is served (info/refs?service=git-upload-pack or git-receive-pack); upgrade git", http.StatusForbidden)
			return
		}
		g.infoRefs(w, r, remote, service)
	case endpoint == serviceUpload && r.Method == http.MethodPost:
		g.uploadPack(w, r, remote)
	case endpoint == serviceReceive && r.Method == http.MethodPost:
		g.receivePack(w, r, remote)
	default:
		http.Error(w, "git-gate: not a git smart-HTTP endpoint", http.StatusNotFound)
	}
}

// splitRepoPath splits /<repo>/<endpoint>.
func splitRepoPath(p string) (repo, endpoint string, ok bool) {
	rest, found := strings.CutPrefix(p, "/")
	if !found {
		return "", "", false
	}
	repo, endpoint, ok = strings.Cut(rest, "/")
	return repo, endpoint, ok && repo != ""
}

// gitProtocol returns the client's Git-Protocol header if it is well-formed.
func gitProtocol(r *http.Request) string {
	v := r.Header.Get("Git-Protocol")
	if len(v) > 256 || strings.ContainsFunc(v, func(c rune) bool { return c <= ' ' || c > '~' }) {
		return ""
	}
	return v
}

// gitError answers a git client with an error it prints: an ERR pkt-line, which git
// shows as "fatal: remote error: <msg>".
func gitError(w http.ResponseWriter, contentType, msg string) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(pkt("ERR " + truncate(msg, maxPktPayload-200) + "\n"))
}

func (g *Gate) infoRefs(w http.ResponseWriter, r *http.Request, remote *gateRemote, service string) {
	ctype := "application/x-" + service + "-advertisement"
	body, err := remote.up.advertise(r.Context(), service, gitProtocol(r), r.UserAgent())
	if err != nil {
		err = fmt.Errorf("remote %s: %w", remote.name, err)
		g.log.LogAttrs(r.Context(), slog.LevelWarn, "git-gate upstream error", slog.String("remote", remote.name), slog.String("op", "info/refs"), slog.String("service", service), slog.String("error", err.Error()))
		gitError(w, ctype, "git-gate: "+err.Error())
		return
	}
	defer body.Close()
	adv := io.Reader(body)
	if service == serviceReceive && len(remote.pushOptions) == 0 {
		// Unadvertised, git refuses `push -o` itself with a clear message.
		if adv, err = withoutCapability(body, "push-options"); err != nil {
			err = fmt.Errorf("remote %s: %w", remote.name, err)
			g.log.LogAttrs(r.Context(), slog.LevelWarn, "git-gate upstream error", slog.String("remote", remote.name), slog.String("op", "info/refs"), slog.String("service", service), slog.String("error", err.Error()))
			gitError(w, ctype, "git-gate: "+err.Error())
			return
		}
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Cache-Control", "no-cache")
	if err := stream(w, adv); err != nil {
		g.log.LogAttrs(r.Context(), slog.LevelWarn, "git-gate upstream error", slog.String("remote", remote.name), slog.String("op", "info/refs"), slog.String("error", err.Error()))
	}
}

// withoutCapability drops one capability from a ref advertisement, where the list
// follows a NUL on the first ref line; the rest streams through unchanged.
func withoutCapability(adv io.Reader, capability string) (io.Reader, error) {
	br := bufio.NewReader(adv)
	var head []byte
	for {
		line, err := readPkt(br)
		switch {
		case errors.Is(err, errFlush):
			head = append(head, flushPkt...)
			continue
		case errors.Is(err, io.EOF):
			return bytes.NewReader(head), nil
		case err != nil:
			return nil, fmt.Errorf("reading the upstream's ref advertisement: %w", err)
		}
		ref, caps, ok := bytes.Cut(line, []byte{0})
		if !ok {
			head = appendPkt(head, line) // "# service=...", "version 1"
			continue
		}
		var kept []string
		for _, c := range strings.Split(string(trimLF(caps)), " ") {
			if k, _, _ := strings.Cut(c, "="); k != capability {
				kept = append(kept, c)
			}
		}
		out := append(append(bytes.Clone(ref), 0), strings.Join(kept, " ")...)
		if len(trimLF(caps)) < len(caps) {
			out = append(out, '\n')
		}
		head = appendPkt(head, out)
		return io.MultiReader(bytes.NewReader(head), br), nil
	}
}

// stream copies an upstream answer to the agent, flushing every chunk so progress
// output arrives as it happens.
func stream(w http.ResponseWriter, body io.Reader) error {
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return fmt.Errorf("writing to the agent: %w", werr)
			}
			_ = rc.Flush()
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// requestBody returns the request body, un-gzipped when the client compressed it.
func requestBody(r *http.Request) (io.Reader, func(), error) {
	switch strings.ToLower(r.Header.Get("Content-Encoding")) {
	case "", "identity":
		return r.Body, func() {}, nil
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			return nil, nil, fmt.Errorf("gzip request body: %w", err)
		}
		return zr, func() { _ = zr.Close() }, nil
	default:
		return nil, nil, fmt.Errorf("unsupported Content-Encoding %q", r.Header.Get("Content-Encoding"))
	}
}

func (g *Gate) uploadPack(w http.ResponseWriter, r *http.Request, remote *gateRemote) {
	ctype := "application/x-git-upload-pack-result"
	start := time.Now()
	body, done, err := requestBody(r)
	if err != nil {
		gitError(w, ctype, "git-gate: "+err.Error())
		return
	}
	defer done()
	req, err := io.ReadAll(io.LimitReader(body, maxFetchRequest+1))
	if err == nil && len(req) > maxFetchRequest {
		err = fmt.Errorf("fetch request larger than %d bytes", maxFetchRequest)
	}
	if err != nil {
		gitError(w, ctype, "git-gate: reading the fetch request: "+err.Error())
		return
	}
	info := describeFetch(req)
	attrs := []slog.Attr{slog.String("remote", remote.name), slog.String("op", "fetch"), slog.String("command", info.command)}
	if len(info.wants) > 0 {
		attrs = append(attrs, slog.Any("wants", info.wants))
	}
	if len(info.wantRefs) > 0 {
		attrs = append(attrs, slog.Any("want_refs", info.wantRefs))
	}
	if len(info.refPrefixes) > 0 {
		attrs = append(attrs, slog.Any("ref_prefixes", info.refPrefixes))
	}
	attrs = append(attrs, slog.String("verdict", "allowed"))
	level := slog.LevelInfo
	if info.command == "ls-refs" {
		level = slog.LevelDebug
	}

	resp, err := remote.up.rpc(r.Context(), serviceUpload, gitProtocol(r), r.UserAgent(), bytes.NewReader(req), int64(len(req)))
	if err != nil {
		err = fmt.Errorf("remote %s: %w", remote.name, err)
		g.log.LogAttrs(r.Context(), slog.LevelWarn, "git-gate fetch", append(attrs, slog.String("error", err.Error()))...)
		gitError(w, ctype, "git-gate: "+err.Error())
		return
	}
	defer resp.Close()
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Cache-Control", "no-cache")
	err = stream(w, resp)
	attrs = append(attrs, slog.Duration("duration", time.Since(start)))
	if err != nil {
		level = slog.LevelWarn
		attrs = append(attrs, slog.String("error", fmt.Sprintf("remote %s: %v", remote.name, err)))
	}
	g.log.LogAttrs(r.Context(), level, "git-gate fetch", attrs...)
}

type fetchInfo struct {
	command                      string
	wants, wantRefs, refPrefixes []string
}

// describeFetch extracts what a fetch asks for, for the log (v0 and v2 requests).
func describeFetch(req []byte) fetchInfo {
	info := fetchInfo{command: "fetch"}
	br := bytes.NewReader(req)
	for {
		line, err := readPkt(br)
		if errors.Is(err, errFlush) || errors.Is(err, errDelim) {
			continue
		}
		if err != nil {
			break
		}
		line = trimLF(line)
		s := string(line)
		switch {
		case strings.HasPrefix(s, "command="):
			info.command = strings.TrimPrefix(s, "command=")
		case strings.HasPrefix(s, "want-ref "):
			info.wantRefs = appendCapped(info.wantRefs, strings.TrimPrefix(s, "want-ref "))
		case strings.HasPrefix(s, "want "):
			f := strings.Fields(s)
			if len(f) >= 2 && !slices.Contains(info.wants, f[1]) {
				info.wants = appendCapped(info.wants, f[1])
			}
		case strings.HasPrefix(s, "ref-prefix "):
			info.refPrefixes = appendCapped(info.refPrefixes, strings.TrimPrefix(s, "ref-prefix "))
		}
	}
	return info
}

// appendCapped keeps log lines bounded on huge fetches.
func appendCapped(list []string, v string) []string {
	const maxListed = 100
	if len(list) < maxListed {
		return append(list, truncate(v, 300))
	}
	if len(list) == maxListed {
		return append(list, "...")
	}
	return list
}

func (g *Gate) receivePack(w http.ResponseWriter, r *http.Request, remote *gateRemote) {
	ctype := "application/x-git-receive-pack-result"
	start := time.Now()
	logPush := func(level slog.Level, verdict string, req *pushRequest, extra ...slog.Attr) {
		attrs := []slog.Attr{slog.String("remote", remote.name), slog.String("op", "push"), slog.String("verdict", verdict)}
		if req != nil {
			attrs = append(attrs, slog.Any("refs", req.updates))
			if len(req.options) > 0 {
				var opts []string
				for _, o := range req.options {
					opts = appendCapped(opts, o)
				}
				attrs = append(attrs, slog.Any("push_options", opts))
			}
		}
		attrs = append(attrs, slog.Duration("duration", time.Since(start)))
		g.record(remote.name, verdict, req, extra)
		g.log.LogAttrs(r.Context(), level, "git-gate push", append(attrs, extra...)...)
	}
	fail := func(req *pushRequest, msg string) {
		logPush(slog.LevelWarn, "error", req, slog.String("error", msg))
		pushError(w, req, "git-gate: "+msg)
	}

	body, done, err := requestBody(r)
	if err != nil {
		fail(nil, fmt.Sprintf("remote %s: %v", remote.name, err))
		return
	}
	defer done()
	spool, size, spoolErr := spoolBody(body, g.spoolDir, g.maxPushBytes)
	if spool != nil {
		defer func() {
			_ = spool.Close()
			_ = os.Remove(spool.Name())
		}()
	}
	if spoolErr != nil {
		// Read the rest so the client gets to read the answer instead of a broken
		// pipe, and answer in the framing it asked for (the command list is at the
		// start of what was spooled).
		_, _ = io.Copy(io.Discard, io.LimitReader(body, maxDrain))
		var req *pushRequest
		if spool != nil {
			req, _ = parsePushRequest(io.NewSectionReader(spool, 0, g.maxPushBytes))
		}
		fail(req, fmt.Sprintf("remote %s: reading the push: %v", remote.name, spoolErr))
		return
	}
	req, err := parsePushRequest(io.NewSectionReader(spool, 0, size))
	if err != nil {
		fail(req, fmt.Sprintf("remote %s: %v", remote.name, err))
		return
	}

	if g.checkPush(remote, req, spool, size) {
		logPush(slog.LevelWarn, "refused", req)
		w.Header().Set("Content-Type", ctype)
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write(reportStatus(req, remote.name))
		return
	}

	resp, err := remote.up.rpc(r.Context(), serviceReceive, gitProtocol(r), r.UserAgent(), io.NewSectionReader(spool, 0, size), size)
	if err != nil {
		msg := fmt.Sprintf("remote %s: %v", remote.name, err)
		logPush(slog.LevelWarn, "allowed", req, slog.String("error", msg))
		pushError(w, req, "git-gate: "+msg)
		return
	}
	defer resp.Close()
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Cache-Control", "no-cache")
	capture := &reportCapture{}
	err = stream(w, io.TeeReader(resp, capture))
	unpack, results := capture.upstreamReport(req.has("side-band-64k") || req.has("side-band"))
	extra := []slog.Attr{slog.String("upstream_unpack", unpack), slog.Any("upstream_refs", results)}
	if err != nil {
		logPush(slog.LevelWarn, "allowed", req, append(extra, slog.String("error", fmt.Sprintf("remote %s: %v", remote.name, err)))...)
		return
	}
	logPush(slog.LevelInfo, "allowed", req, extra...)
}

// checkPush judges every command and reports whether the push is refused. A command
// refused on its own gets Verdict "refused" and its Reason; when anything is refused
// the whole push is (the agent sees one answer for all refs), and the other commands
// are marked refused because of it.
func (g *Gate) checkPush(remote *gateRemote, req *pushRequest, spool io.ReaderAt, size int64) bool {
	if reason := optionsVerdict(remote.pushOptions, req); reason != "" {
		for _, u := range req.updates {
			u.Verdict, u.Reason = "refused", reason
		}
		return true
	}
	refused := false
	var needFF []*refUpdate
	for _, u := range req.updates {
		v := judge(g.rulesOf(remote), remote.readOnly, u)
		switch {
		case !v.allowed:
			u.Verdict, u.Reason, refused = "refused", v.reason, true
		case v.needFF:
			needFF = append(needFF, u)
		}
	}
	if !refused && len(needFF) > 0 {
		graph, err := (*commitGraph)(nil), errors.New("the push carries no pack")
		if req.packOffset >= 0 {
			graph, err = readPackCommits(io.NewSectionReader(spool, req.packOffset, size-req.packOffset), req.hashLen)
		}
		for _, u := range needFF {
			switch {
			case err != nil:
				u.Verdict, u.Reason, refused = "refused", "cannot read the pushed pack to check for a fast-forward: "+err.Error(), true
			case !graph.provesFastForward(u.Old, u.New):
				u.Verdict, u.Reason, refused = "refused", "not a fast-forward (force pushes are not allowed here); fetch, merge or rebase, and push again", true
			}
		}
	}
	for _, u := range req.updates {
		switch {
		case u.Verdict != "":
		case refused:
			u.Verdict, u.Reason = "refused", reasonOtherRefused
		default:
			u.Verdict = "ok"
		}
	}
	return refused
}

// pushError answers a push with a fatal error git prints: on side-band 3 ("remote
// error: ...") when the client asked for side-band, else as an ERR pkt-line.
func pushError(w http.ResponseWriter, req *pushRequest, msg string) {
	ctype := "application/x-git-receive-pack-result"
	if req != nil && (req.has("side-band-64k") || req.has("side-band")) {
		w.Header().Set("Content-Type", ctype)
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write(append(pkt("\x03"+truncate(msg, 900)+"\n"), flushPkt...))
		return
	}
	gitError(w, ctype, msg)
}

// maxDrain bounds how much of an oversized push is read and dropped so its client
// still reads the refusal.
const maxDrain = 1 << 30

// spoolBody copies a push body to a temporary file (it is read twice: once for the
// rules, once to forward) and returns it with its size.
func spoolBody(body io.Reader, dir string, maxBytes int64) (*os.File, int64, error) {
	f, err := os.CreateTemp(dir, "git-gate-push-*")
	if err != nil {
		return nil, 0, err
	}
	n, err := io.Copy(f, io.LimitReader(body, maxBytes+1))
	if err != nil {
		return f, 0, err
	}
	if n > maxBytes {
		return f, 0, fmt.Errorf("push larger than %d bytes (max_push_bytes)", maxBytes)
	}
	return f, n, nil
}

// Probe asks every upstream for its refs once - host key, credentials and repository
// are checked - so a bottle fails at start with a clear error, not at the agent's first
// fetch.
func (g *Gate) Probe(ctx context.Context) error {
	var errs []error
	for _, name := range g.Remotes() {
		rc, err := g.remotes[name].up.advertise(ctx, serviceUpload, "", "git/bottle-git-gate-probe")
		if err != nil {
			errs = append(errs, fmt.Errorf("remote %s: %w", name, err))
			continue
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(rc, 1<<20))
		rc.Close()
	}
	return errors.Join(errs...)
}
