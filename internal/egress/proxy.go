package egress

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/envname"
	"github.com/bottle-dev/bottle/internal/hostfile"
	"github.com/bottle-dev/bottle/internal/names"
)

// Route is one egress-proxy destination and the credential injected for it.
type Route struct {
	// Host is the upstream host name; the agent addresses the route as /<Host>/....
	Host string `json:"host"`
	// TokenRef names the host environment variable holding the real credential.
	TokenRef string `json:"token_ref"`
	// Header is the header carrying the credential (default "Authorization").
	Header string `json:"header,omitempty"`
	// Scheme prefixes the token (default "Bearer"); an explicit "" sends the raw token
	// (e.g. header "x-api-key").
	Scheme *string `json:"scheme,omitempty"`
	// Roles are markers interpreted by the planner (validated by the manifest).
	Roles []string `json:"roles,omitempty"`
	// Upstream overrides where requests go, as scheme://host:port (tests). The Host
	// header stays Host; TLS is verified for the override's host.
	Upstream string `json:"upstream,omitempty"`
	// CAFile is a PEM file of extra CAs trusted for this route, besides the system roots.
	CAFile string `json:"ca_file,omitempty"`
}

// ProxyConfig configures the egress-proxy.
type ProxyConfig struct {
	// Listen is the TCP address the sidecar listens on (the caller binds it).
	Listen string  `json:"listen"`
	Routes []Route `json:"routes"`
	// MaxRequests caps the requests in flight at once (default DefaultMaxRequests);
	// each holds copy buffers and an upstream stream, possibly for hours.
	MaxRequests int `json:"max_requests,omitempty"`

	// Recorder receives one audit record per request (nil: none).
	Recorder audit.Recorder `json:"-"`
}

const (
	// DefaultCredentialHeader and DefaultCredentialScheme apply when a route leaves
	// header and scheme out.
	DefaultCredentialHeader = "Authorization"
	DefaultCredentialScheme = "Bearer"
)

// reservedHeaders are the headers HTTP itself uses (canonical form): none can carry a
// credential.
var reservedHeaders = []string{"Host", "Connection", "Proxy-Authorization", "Transfer-Encoding", "Content-Length", "Te", "Upgrade", "Trailer", "Keep-Alive"}

// CheckCredentialHeader accepts the name of the header a route's credential is injected
// into (the manifest applies it too): an HTTP header name that HTTP itself does not use.
func CheckCredentialHeader(h string) error {
	if !httpguts.ValidHeaderFieldName(h) {
		return fmt.Errorf("invalid header name %q", h)
	}
	if slices.Contains(reservedHeaders, http.CanonicalHeaderKey(h)) {
		return fmt.Errorf("header %q cannot carry a credential: HTTP itself uses it", h)
	}
	return nil
}

// CheckCredentialScheme accepts a route's auth scheme (the manifest applies it too):
// empty for the bare token, or one HTTP token such as "Bearer".
func CheckCredentialScheme(s string) error {
	// An auth scheme is a token, as a header name is.
	if s != "" && !httpguts.ValidHeaderFieldName(s) {
		return fmt.Errorf("invalid scheme %q: not a single word", s)
	}
	return nil
}

// DefaultMaxRequests is the default cap on the egress-proxy's requests in flight.
const DefaultMaxRequests = 256

// allowedMethods are forwarded; TRACE (which echoes the request, credential included),
// CONNECT and unknown methods are refused.
var allowedMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions}

// agentCredentialHeaders are dropped from every request: the agent holds only
// placeholders, and nothing it sends may reach the upstream as a credential.
var agentCredentialHeaders = []string{"Authorization", "Proxy-Authorization", "X-Api-Key", "Cookie"}

// EgressProxy is the credential-injecting reverse proxy. It is an http.Handler; Serve
// runs it with the right server timeouts.
type EgressProxy struct {
	routes   map[string]*route
	log      *slog.Logger
	rec      audit.Recorder
	max      int64
	inFlight atomic.Int64
}

type route struct {
	host   string
	header string // canonical header name
	value  string // secret: "<scheme> <token>"; never logged
	target *url.URL
	proxy  *httputil.ReverseProxy
}

// NewEgressProxy validates cfg and reads every route's token once through getenv.
// A missing or empty token is an error naming the variable (never a value).
func NewEgressProxy(cfg ProxyConfig, getenv func(string) string, logger *slog.Logger) (*EgressProxy, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if getenv == nil {
		return nil, fmt.Errorf("egress-proxy: no environment lookup given")
	}
	if len(cfg.Routes) == 0 {
		return nil, fmt.Errorf("egress-proxy config: no routes; declare at least one route with host and token_ref")
	}
	if cfg.MaxRequests < 0 {
		return nil, fmt.Errorf("egress-proxy config: negative max_requests %d; leave it out for the default %d", cfg.MaxRequests, DefaultMaxRequests)
	}
	p := &EgressProxy{routes: map[string]*route{}, log: logger, rec: cfg.Recorder, max: int64(cmp.Or(cfg.MaxRequests, DefaultMaxRequests))}
	for i, rc := range cfg.Routes {
		rt, err := newRoute(rc, getenv, logger)
		if err != nil {
			return nil, fmt.Errorf("egress-proxy config: route %d (%q): %w", i, rc.Host, err)
		}
		if _, dup := p.routes[rt.host]; dup {
			return nil, fmt.Errorf("egress-proxy config: route host %q declared twice; merge the routes", rt.host)
		}
		p.routes[rt.host] = rt
	}
	return p, nil
}

func newRoute(rc Route, getenv func(string) string, logger *slog.Logger) (*route, error) {
	host := names.NormalizeHost(rc.Host)
	if err := names.CheckHostName(host); err != nil {
		return nil, fmt.Errorf("host: %w; write the upstream host name, e.g. api.anthropic.com", err)
	}
	if host == "healthz" {
		return nil, fmt.Errorf("host %q is reserved for the health check", host)
	}
	if !envname.Valid(rc.TokenRef) {
		return nil, fmt.Errorf("token_ref %q is not an environment variable name", rc.TokenRef)
	}
	header := cmp.Or(rc.Header, DefaultCredentialHeader)
	if err := CheckCredentialHeader(header); err != nil {
		return nil, fmt.Errorf("%w; use Authorization or an API key header", err)
	}
	header = http.CanonicalHeaderKey(header)
	scheme := DefaultCredentialScheme
	if rc.Scheme != nil {
		scheme = *rc.Scheme
	}
	if err := CheckCredentialScheme(scheme); err != nil {
		return nil, err
	}
	token := getenv(rc.TokenRef)
	if token == "" {
		return nil, fmt.Errorf("environment variable %s (token_ref) is unset or empty; export it on the host before starting the bottle", rc.TokenRef)
	}
	if strings.TrimSpace(token) != token || strings.ContainsFunc(token, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return nil, fmt.Errorf("environment variable %s (token_ref) holds whitespace or control characters; store the bare credential", rc.TokenRef)
	}
	value := token
	if scheme != "" {
		value = scheme + " " + token
	}

	target := &url.URL{Scheme: "https", Host: host}
	if rc.Upstream != "" {
		u, err := url.Parse(rc.Upstream)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("upstream %q: write it as https://host:port", rc.Upstream)
		}
		target = &url.URL{Scheme: u.Scheme, Host: u.Host}
	}
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if rc.CAFile != "" {
		pem, err := hostfile.ReadPEM(rc.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s holds no PEM certificate", rc.CAFile)
		}
	}
	rt := &route{host: host, header: header, value: value, target: target}
	rt.proxy = &httputil.ReverseProxy{
		Rewrite: rt.rewrite,
		// httputil flushes every write of a text/event-stream or unknown-length (chunked)
		// response by itself, so SSE and streams pass at once; bodies of known length are
		// flushed in batches, which keeps bulk transfers fast.
		FlushInterval: 20 * time.Millisecond,
		BufferPool:    proxyBufs,
		Transport: &scrubTransport{s: newScrubber(scheme, token), next: &http.Transport{
			Proxy:                 nil, // the egress network has a direct route
			DialContext:           (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext,
			TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
			ForceAttemptHTTP2:     true,
			TLSHandshakeTimeout:   15 * time.Second,
			MaxIdleConnsPerHost:   32,
			IdleConnTimeout:       90 * time.Second,
			ExpectContinueTimeout: time.Second,
			DisableCompression:    true, // bodies are scrubbed as they pass: identity only
		}},
		ErrorLog:     slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		ErrorHandler: rt.upstreamError,
	}
	return rt, nil
}

type restPathKey struct{}

// fillingBody fills each read buffer whole (or to the end of the body), so a batched
// body is written to the agent in buffer-sized pieces.
type fillingBody struct{ io.ReadCloser }

func (b fillingBody) Read(p []byte) (int, error) {
	n, err := io.ReadFull(b.ReadCloser, p)
	if err == io.ErrUnexpectedEOF {
		err = io.EOF
	}
	return n, err
}

func (rt *route) rewrite(pr *httputil.ProxyRequest) {
	rest, _ := pr.In.Context().Value(restPathKey{}).(string)
	out := pr.Out
	out.URL.Scheme, out.URL.Host = rt.target.Scheme, rt.target.Host
	out.URL.RawPath = rest
	out.URL.Path, _ = url.PathUnescape(rest) // validated by the router
	out.Host = rt.host
	for _, h := range agentCredentialHeaders {
		out.Header.Del(h)
	}
	out.Header.Del(rt.header)
	out.Header[rt.header] = []string{rt.value}
	if rl, ok := pr.In.Context().Value(reqLogKey{}).(*reqLog); ok {
		rl.injected = true
	}
	// The scrub needs the body as sent, and in one piece: a compressed or ranged
	// response could carry the credential past it.
	out.Header.Set("Accept-Encoding", "identity")
	out.Header.Del("Range")
	out.Header.Del("If-Range")
}

func (rt *route) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	msg := stripURLError(err).Error()
	gone := r.Context().Err() != nil
	if gone {
		msg = "client went away before the upstream answered: " + msg
	}
	if rl, ok := r.Context().Value(reqLogKey{}).(*reqLog); ok {
		rl.err = msg
	}
	if gone {
		return // nobody reads an answer; ServeHTTP closes the connection without one
	}
	textError(w, http.StatusBadGateway, fmt.Sprintf("egress-proxy: upstream %s failed: %s", rt.host, msg))
}

type reqLogKey struct{}

type reqLog struct {
	err      string
	injected bool // the route's credential went upstream
}

// Serve serves the proxy on ln until ctx ends. In-flight requests derive their context
// from ctx and end with it.
func (p *EgressProxy) Serve(ctx context.Context, ln net.Listener) error {
	hosts := make([]string, 0, len(p.routes))
	for h := range p.routes {
		hosts = append(hosts, h)
	}
	p.log.Info("egress-proxy listening", "addr", ln.Addr().String(), "routes", hosts)
	return serve(ctx, newServer(p, p.log), ln, "egress-proxy")
}

// ServeHTTP implements http.Handler: /<route host>/<rest> goes to the route.
func (p *EgressProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	escaped := r.URL.EscapedPath()
	if r.Method == http.MethodGet && escaped == "/healthz" {
		_, _ = w.Write([]byte("ok\n"))
		return
	}
	first, rest, _ := strings.Cut(strings.TrimPrefix(escaped, "/"), "/")
	rest = "/" + rest
	rt := p.routes[names.NormalizeHost(first)]
	_, uerr := url.PathUnescape(rest)
	switch {
	case !slices.Contains(allowedMethods, r.Method):
		w.Header().Set("Allow", strings.Join(allowedMethods, ", "))
		textError(w, http.StatusMethodNotAllowed, fmt.Sprintf("egress-proxy: method %s is not forwarded; use one of %s", r.Method, strings.Join(allowedMethods, ", ")))
		p.logRequest(r, "", escaped, http.StatusMethodNotAllowed, 0, 0, start, "method not allowed", false)
		return
	case rt == nil || uerr != nil:
		textError(w, http.StatusNotFound, "egress-proxy: no route for this path; address a route as /<route host>/<path>, e.g. /api.anthropic.com/v1/messages")
		p.logRequest(r, "", escaped, http.StatusNotFound, 0, 0, start, "no route", false)
		return
	}
	if n := p.inFlight.Add(1); n > p.max {
		p.inFlight.Add(-1)
		w.Header().Set("Retry-After", "1")
		textError(w, http.StatusServiceUnavailable, fmt.Sprintf("egress-proxy: %d requests already in flight (max_requests); retry when one ends", p.max))
		p.logRequest(r, rt.host, rest, http.StatusServiceUnavailable, 0, 0, start, "too many requests in flight", false)
		return
	}
	rl := &reqLog{}
	ctx := context.WithValue(r.Context(), restPathKey{}, rest)
	ctx = context.WithValue(ctx, reqLogKey{}, rl)
	status, in, out := p.forward(rt, w, r.WithContext(ctx))
	if status == 0 {
		// Nothing was written: the client went away (or half-closed, which net/http
		// cannot tell apart) before the upstream answered, and the upstream request was
		// cancelled with it (a cancelled model request must stop). Close without an
		// answer, or net/http would send "200 OK" for a response nobody gave.
		p.logRequest(r, rt.host, rest, 0, in, out, start, cmp.Or(rl.err, "client went away before the upstream answered"), rl.injected)
		panic(http.ErrAbortHandler)
	}
	p.logRequest(r, rt.host, rest, status, in, out, start, rl.err, rl.injected)
}

// forward proxies r and frees its in-flight slot before the request is logged, even
// when the reverse proxy aborts the response with a panic.
func (p *EgressProxy) forward(rt *route, w http.ResponseWriter, r *http.Request) (int, int64, int64) {
	defer p.inFlight.Add(-1)
	return serveCounted(rt.proxy, w, r)
}

func (p *EgressProxy) logRequest(r *http.Request, host, path string, status int, in, out int64, start time.Time, errText string, injected bool) {
	p.record(r, host, path, status, in, out, time.Since(start), errText, injected)
	attrs := []slog.Attr{
		slog.String("route", host),
		slog.String("client", r.RemoteAddr),
		slog.String("method", r.Method),
		slog.String("path", path),
		slog.Int("status", status),
		slog.Int64("bytes_in", in),
		slog.Int64("bytes_out", out),
		slog.Duration("duration", time.Since(start)),
	}
	if errText != "" {
		attrs = append(attrs, slog.String("error", errText))
	}
	p.log.LogAttrs(r.Context(), slog.LevelInfo, "egress-proxy request", attrs...)
}

// proxyBufs gives the reverse proxies 256 KiB copy buffers (httputil's default is 32 KiB):
// fewer, larger writes keep bulk transfers fast.
var proxyBufs = &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte  { return *b.p.Get().(*[]byte) }
func (b *bufferPool) Put(x []byte) { b.p.Put(&x) }
