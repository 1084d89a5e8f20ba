package egress

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/reload"
)

// Resolver returns all addresses of host. The filter calls it once per request.
type Resolver func(ctx context.Context, host string) ([]netip.Addr, error)

// DialFunc connects to addr ("ip:port"). It only ever receives validated addresses.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// FilterConfig configures the allowlist filter. Zero fields take the defaults below.
type FilterConfig struct {
	// Listen is the TCP address the sidecar listens on (the caller binds it).
	Listen string `json:"listen"`
	// Allowlist holds host names and "*.suffix" patterns (see Allowlist). Empty allows
	// nothing.
	Allowlist []string `json:"allowlist"`
	// Ports are the allowed target ports (default 443 and 80).
	Ports []uint16 `json:"ports,omitempty"`
	// Internal lists the CIDRs a target may not resolve into. Empty means
	// DefaultInternal; there is no way to refuse nothing.
	Internal []string `json:"internal,omitempty"`
	// TunnelIdleTimeout closes a CONNECT tunnel idle in both directions this long
	// (default DefaultTunnelIdleTimeout).
	TunnelIdleTimeout Duration `json:"tunnel_idle_timeout,omitempty"`
	// MaxTunnels caps the CONNECT tunnels open at once (default DefaultMaxTunnels); new
	// tunnels beyond it are refused with 503 while open ones keep serving.
	MaxTunnels int `json:"max_tunnels,omitempty"`
	// ChangesFile holds approved AllowlistChanges; the filter re-reads it while it serves
	// (internal/reload). Empty: the allowlist is fixed.
	ChangesFile string `json:"changes_file,omitempty"`

	// Resolver replaces the system resolver (tests map names to loopback fakes).
	Resolver Resolver `json:"-"`
	// Dial replaces the TCP dialer (tests assert they only dial loopback).
	Dial DialFunc `json:"-"`
	// Recorder receives one audit record per connection, when it ends (nil: none).
	Recorder audit.Recorder `json:"-"`
}

const (
	// DefaultTunnelIdleTimeout closes tunnels nobody uses; a model stream is never
	// silent that long (SSE pings), and clients reopen closed keep-alive connections.
	DefaultTunnelIdleTimeout = 10 * time.Minute
	// DefaultMaxTunnels bounds what an agent can hold open (a tunnel holds two
	// tunnelBufSize copy buffers while it moves data).
	DefaultMaxTunnels = 256

	resolveTimeout = 10 * time.Second
	// helloTimeout bounds how long a client may take to send its TLS ClientHello.
	helloTimeout = 10 * time.Second
	// maxHelloBytes caps what the filter reads before it has seen the SNI.
	maxHelloBytes = 70 << 10
	tunnelBufSize = 256 << 10
)

// DefaultInternal lists the ranges both filters (builtin and pipelock) refuse: everything
// that is not a public unicast address, plus IPv6 forms that embed an IPv4 address (they
// can lead back into an internal IPv4 range through a translator). It is the only such
// list: plan renders it into both filter configs. The documentation ranges (TEST-NET-1..3,
// 2001:db8::/32) are admitted: nothing answers there on the internet, and bottle's
// end-to-end tests use them as their fake internet on test-made bridges. IPv4-mapped
// addresses (::ffff:0:0/96) are not listed: both filters judge them as the IPv4 address
// they map to, and pipelock (Go's net.IPNet) would read that entry as 0.0.0.0/0.
var DefaultInternal = []string{
	"0.0.0.0/8",       // "this" network
	"10.0.0.0/8",      // RFC 1918
	"100.64.0.0/10",   // CGNAT
	"127.0.0.0/8",     // loopback
	"169.254.0.0/16",  // link-local, cloud metadata
	"172.16.0.0/12",   // RFC 1918
	"192.0.0.0/24",    // IETF protocol assignments
	"192.88.99.0/24",  // 6to4 relay anycast
	"192.168.0.0/16",  // RFC 1918
	"198.18.0.0/15",   // benchmarking
	"224.0.0.0/4",     // multicast
	"240.0.0.0/4",     // reserved, broadcast
	"::/96",           // unspecified, loopback, IPv4-compatible
	"::ffff:0:0:0/96", // IPv4-translated
	"64:ff9b::/96",    // NAT64
	"64:ff9b:1::/48",  // local-use NAT64
	"100::/64",        // discard
	"2001::/32",       // Teredo (embeds IPv4)
	"2002::/16",       // 6to4 (embeds IPv4)
	"fc00::/7",        // unique local
	"fe80::/10",       // link-local
	"fec0::/10",       // deprecated site-local
	"ff00::/8",        // multicast
}

// Filter is the allowlist forward proxy. It is an http.Handler; Serve runs it with the
// right server timeouts.
type Filter struct {
	allow    atomic.Pointer[allowState]
	changes  *reload.File
	ports    map[uint16]bool
	internal []netip.Prefix
	idle     time.Duration
	max      int64
	tunnels  atomic.Int64 // open or being set up
	resolve  Resolver
	dial     DialFunc
	plain    *httputil.ReverseProxy
	log      *slog.Logger
	rec      audit.Recorder
}

// NewFilter validates cfg and returns the filter. logger receives one record per
// decision; give it a JSON handler for JSON lines.
func NewFilter(cfg FilterConfig, logger *slog.Logger) (*Filter, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	f := &Filter{
		ports:   map[uint16]bool{},
		idle:    time.Duration(cfg.TunnelIdleTimeout),
		max:     int64(cfg.MaxTunnels),
		resolve: cfg.Resolver,
		dial:    cfg.Dial,
		log:     logger,
		rec:     cfg.Recorder,
	}
	state, err := newAllowState(cfg.Allowlist, AllowlistChanges{})
	if err != nil {
		return nil, fmt.Errorf("filter config: %w", err)
	}
	f.allow.Store(state)
	if cfg.ChangesFile != "" {
		f.changes = changesFile(cfg.ChangesFile, cfg.Allowlist, &f.allow, logger)
		if err := f.changes.Load(); err != nil {
			return nil, fmt.Errorf("filter config: %w", err)
		}
	}
	ports := cfg.Ports
	if len(ports) == 0 {
		ports = []uint16{443, 80}
	}
	for _, p := range ports {
		if p == 0 {
			return nil, fmt.Errorf("filter config: port 0 in ports; list the target ports to allow, e.g. [443, 80]")
		}
		f.ports[p] = true
	}
	internal := cfg.Internal
	if len(internal) == 0 {
		internal = DefaultInternal
	}
	for _, c := range internal {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("filter config: internal range %q: %w; write CIDRs like 10.0.0.0/8", c, err)
		}
		f.internal = append(f.internal, p.Masked())
	}
	if f.idle < 0 {
		return nil, fmt.Errorf("filter config: negative tunnel_idle_timeout %v", f.idle)
	}
	if f.idle == 0 {
		f.idle = DefaultTunnelIdleTimeout
	}
	if f.max < 0 {
		return nil, fmt.Errorf("filter config: negative max_tunnels %d; leave it out for the default %d", f.max, DefaultMaxTunnels)
	}
	if f.max == 0 {
		f.max = DefaultMaxTunnels
	}
	if f.resolve == nil {
		f.resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	if f.dial == nil {
		f.dial = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	}
	f.plain = &httputil.ReverseProxy{
		// The request URL is already absolute; Rewrite drops X-Forwarded-* and
		// Forwarded so the agent's address does not leave.
		Rewrite:       func(*httputil.ProxyRequest) {},
		FlushInterval: -1,
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           f.dialValidated,
			MaxIdleConnsPerHost:   16,
			IdleConnTimeout:       90 * time.Second,
			ExpectContinueTimeout: time.Second,
		},
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			reason := "upstream error: " + stripURLError(err).Error()
			gone := r.Context().Err() != nil
			if gone {
				reason = "client went away before the upstream answered: " + reason
			}
			if d, ok := r.Context().Value(decisionKey{}).(*decision); ok {
				d.reason = reason
			}
			if gone {
				// Close without an answer (the decision is logged by ServeHTTP's defer):
				// a 502, or net/http's own "200 OK" for a handler that wrote nothing,
				// would tell a half-closed client something nobody said.
				panic(http.ErrAbortHandler)
			}
			textError(w, http.StatusBadGateway, "filter: upstream request failed")
		},
	}
	return f, nil
}

// Serve serves the filter on ln until ctx ends. Requests and tunnels derive their
// context from ctx, so open tunnels are closed when it ends.
func (f *Filter) Serve(ctx context.Context, ln net.Listener) error {
	f.log.Info("filter listening", "addr", ln.Addr().String(), "allowlist_entries", f.allow.Load().entries())
	if f.changes != nil {
		go f.changes.Watch(ctx, f.log)
	}
	return serve(ctx, newServer(f, f.log), ln, "filter")
}

type decisionKey struct{}

// decision is one audit record.
type decision struct {
	start      time.Time
	client     string
	method     string
	host       string
	port       uint16
	allowed    bool
	reason     string
	status     int
	up, down   int64
	resolvedTo string
}

func (f *Filter) logDecision(ctx context.Context, d *decision) {
	verdict := "deny"
	if d.allowed {
		verdict = "allow"
	}
	f.record(d, verdict)
	f.log.LogAttrs(ctx, slog.LevelInfo, "egress decision",
		slog.String("client", d.client),
		slog.String("method", d.method),
		slog.String("host", d.host),
		slog.Int("port", int(d.port)),
		slog.String("decision", verdict),
		slog.String("reason", d.reason),
		slog.Int("status", d.status),
		slog.String("upstream", d.resolvedTo),
		slog.Int64("bytes_up", d.up),
		slog.Int64("bytes_down", d.down),
		slog.Duration("duration", time.Since(d.start)),
	)
}

// ServeHTTP implements http.Handler.
func (f *Filter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect && !r.URL.IsAbs() {
		if r.Method == http.MethodGet && (r.URL.Path == "/health" || r.URL.Path == "/healthz") {
			_, _ = io.WriteString(w, "ok\n")
			return
		}
		textError(w, http.StatusBadRequest, "filter: this is a forward proxy; send CONNECT host:port or an absolute http:// URL")
		return
	}
	d := &decision{start: time.Now(), client: r.RemoteAddr, method: r.Method}
	defer f.logDecision(r.Context(), d)
	if r.Method == http.MethodConnect {
		f.serveConnect(w, r, d)
	} else {
		f.servePlain(w, r, d)
	}
}

func (f *Filter) deny(w http.ResponseWriter, d *decision, code int, reason string) {
	d.allowed, d.status, d.reason = false, code, reason
	textError(w, code, "filter: "+reason)
}

// check applies every rule up to and including resolution. It returns the validated
// addresses, or a status and reason for the refusal.
func (f *Filter) check(ctx context.Context, host string, port uint16) ([]netip.Addr, int, string) {
	if !f.ports[port] {
		return nil, http.StatusForbidden, fmt.Sprintf("port %d is not allowed", port)
	}
	if _, err := netip.ParseAddr(host); err == nil || strings.Contains(host, ":") {
		return nil, http.StatusForbidden, "IP address targets are not allowed; use a host name from the allowlist"
	}
	name := names.NormalizeHost(host)
	if err := names.CheckHostName(name); err != nil {
		return nil, http.StatusForbidden, fmt.Sprintf("invalid host name: %v", err)
	}
	if !f.allow.Load().match(name, time.Now()) {
		return nil, http.StatusForbidden, fmt.Sprintf("host %s is not in the allowlist", name)
	}
	rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	addrs, err := f.resolve(rctx, name)
	if err != nil {
		return nil, http.StatusBadGateway, fmt.Sprintf("cannot resolve %s: %v", name, err)
	}
	if len(addrs) == 0 {
		return nil, http.StatusBadGateway, fmt.Sprintf("%s has no addresses", name)
	}
	valid := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		// An IPv4-mapped address is judged as the IPv4 address it maps to, as pipelock does.
		a = a.Unmap().WithZone("")
		if !a.IsValid() {
			return nil, http.StatusForbidden, fmt.Sprintf("%s resolves to an invalid address", name)
		}
		for _, p := range f.internal {
			if p.Contains(a) {
				return nil, http.StatusForbidden, fmt.Sprintf("%s resolves to %s inside internal range %s", name, a, p)
			}
		}
		valid = append(valid, a)
	}
	return valid, 0, ""
}

// dialAddrs connects to the first reachable validated address.
func (f *Filter) dialAddrs(ctx context.Context, addrs []netip.Addr, port uint16) (net.Conn, error) {
	var errs []error
	for _, a := range addrs {
		c, err := f.dial(ctx, "tcp", netip.AddrPortFrom(a, port).String())
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// splitTarget parses "host:port" (port optional with a default).
func splitTarget(hostport string, defaultPort uint16) (string, uint16, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		if defaultPort == 0 || strings.Contains(err.Error(), "too many colons") {
			return "", 0, fmt.Errorf("target %q is not host:port", hostport)
		}
		return strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]"), defaultPort, nil
	}
	if portStr == "" && defaultPort != 0 {
		return host, defaultPort, nil
	}
	p, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || p == 0 || portStr[0] == '+' {
		return "", 0, fmt.Errorf("target %q has an invalid port", hostport)
	}
	return host, uint16(p), nil
}

// admit parses a request's target, runs every check on it and records the decision; it
// answers the refusal itself and returns ok false then.
func (f *Filter) admit(w http.ResponseWriter, r *http.Request, d *decision, target string, defaultPort uint16) (host string, port uint16, addrs []netip.Addr, ok bool) {
	host, port, err := splitTarget(target, defaultPort)
	if err != nil {
		f.deny(w, d, http.StatusBadRequest, err.Error())
		return "", 0, nil, false
	}
	d.host, d.port = host, port
	addrs, code, reason := f.check(r.Context(), host, port)
	if code != 0 {
		f.deny(w, d, code, reason)
		return "", 0, nil, false
	}
	return host, port, addrs, true
}

func (f *Filter) serveConnect(w http.ResponseWriter, r *http.Request, d *decision) {
	host, port, addrs, ok := f.admit(w, r, d, r.Host, 0)
	if !ok {
		return
	}
	if n := f.tunnels.Add(1); n > f.max {
		f.tunnels.Add(-1)
		w.Header().Set("Retry-After", "1")
		f.deny(w, d, http.StatusServiceUnavailable, fmt.Sprintf("%d tunnels already open (max_tunnels); close idle connections or raise max_tunnels", f.max))
		return
	}
	defer f.tunnels.Add(-1)
	upstream, err := f.dialAddrs(r.Context(), addrs, port)
	if err != nil {
		f.deny(w, d, http.StatusBadGateway, fmt.Sprintf("cannot connect to %s:%d: %v", host, port, err))
		return
	}
	defer upstream.Close()
	d.resolvedTo = upstream.RemoteAddr().String()

	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		f.deny(w, d, http.StatusInternalServerError, "cannot take over the connection: "+err.Error())
		return
	}
	defer client.Close()
	d.status = http.StatusOK
	if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		d.reason = "client went away: " + err.Error()
		return
	}

	// Bytes the client sent right after CONNECT may sit in the server's buffer.
	var pending []byte
	if n := brw.Reader.Buffered(); n > 0 {
		pending, _ = brw.Reader.Peek(n)
		pending = bytes.Clone(pending)
	}
	_ = client.SetReadDeadline(time.Now().Add(helloTimeout))
	sni, hello, err := readClientHello(io.MultiReader(bytes.NewReader(pending), client))
	_ = client.SetReadDeadline(time.Time{})
	switch {
	case err != nil:
		d.reason = "tunnel does not start with a TLS ClientHello: " + err.Error()
	case sni == "":
		d.reason = "TLS ClientHello has no SNI"
	case names.NormalizeHost(sni) != names.NormalizeHost(host):
		d.reason = fmt.Sprintf("TLS SNI %q differs from CONNECT host %q", sni, host)
	}
	if d.reason != "" {
		d.status = http.StatusForbidden
		_, _ = client.Write(tlsAccessDeniedAlert)
		return
	}
	d.allowed = true
	if _, err := upstream.Write(hello); err != nil {
		d.reason = "upstream write failed: " + err.Error()
		return
	}
	d.up = int64(len(hello))
	up, down, why := f.pipe(r.Context(), client, upstream)
	d.up += up
	d.down = down
	d.reason = why
}

// tlsAccessDeniedAlert is a fatal TLS alert record (access_denied), so TLS clients
// report a refusal instead of a bare connection reset.
var tlsAccessDeniedAlert = []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 49}

var errHelloSeen = errors.New("client hello seen")

// readClientHello reads the TLS ClientHello from r with crypto/tls's own parser and
// returns its SNI and every byte consumed from r (to be replayed upstream).
func readClientHello(r io.Reader) (string, []byte, error) {
	var consumed bytes.Buffer
	var sni string
	seen := false
	conn := &readOnlyConn{r: io.TeeReader(io.LimitReader(r, maxHelloBytes), &consumed)}
	err := tls.Server(conn, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			sni, seen = h.ServerName, true
			return nil, errHelloSeen
		},
	}).Handshake()
	if !seen {
		if err == nil {
			err = errors.New("handshake ended early")
		}
		return "", nil, err
	}
	return sni, consumed.Bytes(), nil
}

// readOnlyConn lets crypto/tls parse a ClientHello without answering it.
type readOnlyConn struct {
	net.Conn // nil: only the methods below are used
	r        io.Reader
}

func (c *readOnlyConn) Read(b []byte) (int, error)       { return c.r.Read(b) }
func (c *readOnlyConn) Write(b []byte) (int, error)      { return 0, io.ErrClosedPipe }
func (c *readOnlyConn) Close() error                     { return nil }
func (c *readOnlyConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *readOnlyConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *readOnlyConn) SetDeadline(time.Time) error      { return nil }
func (c *readOnlyConn) SetReadDeadline(time.Time) error  { return nil }
func (c *readOnlyConn) SetWriteDeadline(time.Time) error { return nil }

var tunnelBufs = sync.Pool{New: func() any { b := make([]byte, tunnelBufSize); return &b }}

// pipe copies both directions until both end, either side fails, the tunnel is idle
// for f.idle in both directions, or ctx ends. It returns the byte counts and why it
// ended.
func (f *Filter) pipe(ctx context.Context, client, upstream net.Conn) (up, down int64, why string) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	closeBoth := func() { _ = client.Close(); _ = upstream.Close() }
	stop := context.AfterFunc(ctx, closeBoth)
	defer stop()

	var idled atomic.Bool
	copyDir := func(dst, src net.Conn, n *int64) error {
		bp := tunnelBufs.Get().(*[]byte)
		defer tunnelBufs.Put(bp)
		buf := *bp
		var deadline time.Time
		for {
			now := time.Now()
			// Moving the deadline costs a timer update; do it at most once a second.
			if next := now.Add(f.idle); next.Sub(deadline) > time.Second {
				deadline = next
				_ = src.SetReadDeadline(deadline)
			}
			nr, rerr := src.Read(buf)
			if nr > 0 {
				last.Store(now.UnixNano())
				nw, werr := dst.Write(buf[:nr])
				*n += int64(nw)
				if werr != nil {
					return werr
				}
			}
			if rerr == nil {
				continue
			}
			if errors.Is(rerr, io.EOF) {
				if cw, ok := dst.(interface{ CloseWrite() error }); ok {
					_ = cw.CloseWrite()
				}
				return nil
			}
			if errors.Is(rerr, os.ErrDeadlineExceeded) {
				if since := time.Since(time.Unix(0, last.Load())); since < f.idle {
					// The other direction was active: keep waiting.
					deadline = time.Now().Add(f.idle - since)
					_ = src.SetReadDeadline(deadline)
					continue
				}
				idled.Store(true)
			}
			return rerr
		}
	}
	errc := make(chan error, 1)
	go func() {
		err := copyDir(upstream, client, &up)
		if err != nil {
			closeBoth()
		}
		errc <- err
	}()
	derr := copyDir(client, upstream, &down)
	if derr != nil {
		closeBoth()
	}
	uerr := <-errc
	switch {
	case idled.Load():
		return up, down, fmt.Sprintf("tunnel idle for %v", f.idle)
	case ctx.Err() != nil:
		return up, down, "filter shutting down"
	case uerr != nil && !errors.Is(uerr, net.ErrClosed):
		return up, down, "client side: " + uerr.Error()
	case derr != nil && !errors.Is(derr, net.ErrClosed):
		return up, down, "upstream side: " + derr.Error()
	}
	return up, down, "tunnel closed"
}

func (f *Filter) servePlain(w http.ResponseWriter, r *http.Request, d *decision) {
	if r.URL.Scheme != "http" {
		d.host = r.URL.Hostname()
		f.deny(w, d, http.StatusBadRequest, "only http:// URLs can be proxied directly; use CONNECT for https")
		return
	}
	_, _, addrs, ok := f.admit(w, r, d, r.URL.Host, 80)
	if !ok {
		return
	}
	d.allowed = true
	d.resolvedTo = joinAddrs(addrs)
	ctx := context.WithValue(r.Context(), decisionKey{}, d)
	ctx = context.WithValue(ctx, validatedKey{}, addrs)
	d.status, d.up, d.down = serveCounted(f.plain, w, r.WithContext(ctx))
}

type validatedKey struct{}

// dialValidated is the plain-HTTP transport's dialer: it connects only to the
// addresses check validated for this request, never resolving again.
func (f *Filter) dialValidated(ctx context.Context, network, addr string) (net.Conn, error) {
	addrs, ok := ctx.Value(validatedKey{}).([]netip.Addr)
	if !ok || len(addrs) == 0 {
		return nil, fmt.Errorf("filter: refusing to dial %s without validated addresses", addr)
	}
	_, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("filter: bad port in %s: %w", addr, err)
	}
	return f.dialAddrs(ctx, addrs, uint16(port))
}

func joinAddrs(addrs []netip.Addr) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}
