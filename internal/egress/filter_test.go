package egress

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/names"
)

func TestAllowlistMatch(t *testing.T) {
	a, err := NewAllowlist([]string{"api.anthropic.com", "*.x.com", "Statsig.Anthropic.COM.", "*.example.test."})
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]bool{
		"api.anthropic.com":      true,
		"API.Anthropic.Com":      true,
		"api.anthropic.com.":     true,
		"statsig.anthropic.com":  true,
		"anthropic.com":          false,
		"evil-api.anthropic.com": false,
		"x.api.anthropic.com":    false,
		"x.com":                  true,
		"a.x.com":                true,
		"a.b.X.COM.":             true,
		"ax.com":                 false,
		"x.com.evil.net":         false,
		"x.co":                   false,
		"com":                    false,
		"example.test":           true,
		"deep.sub.example.test":  true,
		"":                       false,
		".":                      false,
		"..x.com":                false,
		"a..x.com":               false,
		"a.x.com..":              false,
		"127.0.0.1":              false,
		"a.x.com:443":            false,
		"a.x.com/":               false,
		"ä.x.com":                false,
	}
	for host, want := range cases {
		if got := a.Match(host); got != want {
			t.Errorf("Match(%q) = %v, want %v", host, got, want)
		}
	}
	var zero *Allowlist
	if zero.Match("x.com") {
		t.Error("nil allowlist matched")
	}
}

func TestNewAllowlistRejectsBadPatterns(t *testing.T) {
	for _, p := range []string{"", "*", "*.", "**.x.com", "a.*.com", "*x.com", "x.com:443", "https://x.com", "127.0.0.1", "::1", "x..com", "-x.com", "x.com/path", "10.0.0.0/8"} {
		if _, err := NewAllowlist([]string{p}); err == nil {
			t.Errorf("NewAllowlist(%q) accepted a bad pattern", p)
		}
	}
}

func FuzzMatch(f *testing.F) {
	for _, s := range [][2]string{{"*.x.com", "a.x.com"}, {"api.anthropic.com", "API.anthropic.com."}, {"*.a", "."}, {"x", "x.."}, {"*.example.test", "\xff.example.test"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, host string) {
		a, err := NewAllowlist([]string{pattern})
		if err != nil {
			if a.Match(host) {
				t.Fatal("nil allowlist matched")
			}
			return
		}
		got := a.Match(host)
		// ASCII case and one trailing dot never change the answer.
		if a.Match(strings.ToUpper(asciiOnly(host))) != a.Match(asciiOnly(host)) {
			t.Fatalf("case changed the answer for %q", host)
		}
		if got && !strings.HasSuffix(host, ".") && a.Match(host+".") != got {
			t.Fatalf("trailing dot changed the answer for %q", host)
		}
		// A match is always the pattern itself or a subdomain of a "*." pattern.
		if got {
			h, p := names.NormalizeHost(host), names.NormalizeHost(pattern)
			if suffix, ok := strings.CutPrefix(p, "*."); ok {
				if h != suffix && !strings.HasSuffix(h, "."+suffix) {
					t.Fatalf("%q matched %q outside the suffix", host, pattern)
				}
			} else if h != p {
				t.Fatalf("%q matched exact pattern %q", host, pattern)
			}
		}
	})
}

func asciiOnly(s string) string {
	return strings.Map(func(r rune) rune {
		if r > 0x7f {
			return -1
		}
		return r
	}, s)
}

// connectRaw sends CONNECT target through the filter and returns the response and the
// connection (positioned after the response head).
func connectRaw(t *testing.T, filterAddr, target string) (*http.Response, net.Conn) {
	t.Helper()
	c, err := net.DialTimeout("tcp", filterAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT %s: %v", target, err)
	}
	return resp, c
}

// records parses the JSON log lines with the given message.
func records(t *testing.T, log, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", line, err)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// waitDecisions polls until n decisions are logged (tunnels log when they close).
func waitDecisions(t *testing.T, buf *syncBuffer, n int) []map[string]any {
	t.Helper()
	return waitRecords(t, buf, "egress decision", n)
}

// waitRecords polls until n records with msg are logged: servers log after the
// response is written, so the client can be faster.
func waitRecords(t *testing.T, buf *syncBuffer, msg string, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		d := records(t, buf.String(), msg)
		if len(d) >= n || time.Now().After(deadline) {
			if len(d) < n {
				t.Fatalf("want %d %q records, got %d: %s", n, msg, len(d), buf.String())
			}
			return d
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFilterDefaultConfigRefusesInternal uses the default internal ranges: IP literals
// and names resolving into internal ranges are refused before any dial.
func TestFilterDefaultConfigRefusesInternal(t *testing.T) {
	var dials, lookups atomic.Int64
	resolve := mapResolver(map[string][]string{
		"metadata.example.test": {"169.254.169.254"},
		"loop.example.test":     {"127.0.0.1"},
		"loop6.example.test":    {"::1"},
		"mapped.example.test":   {"::ffff:127.0.0.1"},
		"mixed.example.test":    {"203.0.113.7", "10.1.2.3"},
		"private.example.test":  {"192.168.1.1"},
		"ula.example.test":      {"fd00::1"},
		"nat64.example.test":    {"64:ff9b::a9fe:a9fe"},
	})
	var buf syncBuffer
	addr := startFilter(t, FilterConfig{
		Allowlist: []string{"*.example.test", "example.test"},
		Resolver: func(ctx context.Context, host string) ([]netip.Addr, error) {
			lookups.Add(1)
			return resolve(ctx, host)
		},
		Dial: loopbackOnlyDial(t, &dials),
	}, jsonLogger(&buf))

	cases := []struct {
		target, reason string
		lookup         bool
	}{
		{"127.0.0.1:443", "IP address", false},
		{"[::1]:443", "IP address", false},
		{"169.254.169.254:80", "IP address", false},
		{"[::ffff:169.254.169.254]:443", "IP address", false},
		{"2130706433:443", "invalid host name", false},
		{"127.1:443", "invalid host name", false},
		{"metadata.example.test:443", "169.254.0.0/16", true},
		{"metadata.example.test:80", "169.254.0.0/16", true},
		{"loop.example.test:443", "127.0.0.0/8", true},
		{"loop6.example.test:443", "::/96", true},
		{"mapped.example.test:443", "127.0.0.0/8", true},
		{"mixed.example.test:443", "10.0.0.0/8", true},
		{"private.example.test:443", "192.168.0.0/16", true},
		{"ula.example.test:443", "fc00::/7", true},
		{"nat64.example.test:443", "64:ff9b::/96", true},
		{"evil.invalid:443", "not in the allowlist", false},
		{"metadata.example.test:22", "port 22", false},
	}
	for _, c := range cases {
		before := lookups.Load()
		resp, _ := connectRaw(t, addr, c.target)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), c.reason) {
			t.Errorf("CONNECT %s: %d %q, want 403 mentioning %q", c.target, resp.StatusCode, body, c.reason)
		}
		if looked := lookups.Load() > before; looked != c.lookup {
			t.Errorf("CONNECT %s: resolver called = %v, want %v", c.target, looked, c.lookup)
		}
	}

	// Plain HTTP to the metadata service, as an IP literal and by name.
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: addr})}}
	for _, u := range []string{"http://169.254.169.254/latest/meta-data/", "http://metadata.example.test/latest/meta-data/", "http://127.0.0.1/"} {
		resp, err := client.Get(u)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("GET %s through filter: %d, want 403", u, resp.StatusCode)
		}
	}
	if n := dials.Load(); n != 0 {
		t.Errorf("filter dialed %d times; every target was internal", n)
	}
	ds := waitDecisions(t, &buf, len(cases)+3)
	for _, d := range ds {
		if d["decision"] != "deny" {
			t.Errorf("decision %v, want deny", d)
		}
	}
}

// testFilterConfig maps api.example.test (and friends) to loopback and overrides the
// internal ranges so loopback fakes are reachable; everything else stays default.
func testFilterConfig(t *testing.T, ports ...uint16) (FilterConfig, *atomic.Int64) {
	dials := &atomic.Int64{}
	return FilterConfig{
		Allowlist: []string{"*.example.test"},
		Ports:     ports,
		Internal:  []string{"10.0.0.0/8", "169.254.0.0/16"},
		Resolver: mapResolver(map[string][]string{
			"api.example.test":   {"127.0.0.1"},
			"other.example.test": {"127.0.0.1"},
		}),
		Dial: loopbackOnlyDial(t, dials),
	}, dials
}

func TestFilterConnectTunnelTLS(t *testing.T) {
	ca := newTestCA(t)
	up := newTLSUpstream(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.Host)
	}), "api.example.test", "other.example.test")
	cfg, _ := testFilterConfig(t, up.port)
	var buf syncBuffer
	addr := startFilter(t, cfg, jsonLogger(&buf))

	tr := &http.Transport{
		Proxy:           http.ProxyURL(&url.URL{Scheme: "http", Host: addr}),
		TLSClientConfig: &tls.Config{RootCAs: ca.pool},
	}
	defer tr.CloseIdleConnections()
	target := fmt.Sprintf("https://API.example.test:%d/x", up.port)
	for i := 0; i < 3; i++ { // keep-alive: one tunnel, three requests
		resp, err := (&http.Client{Transport: tr}).Get(target)
		if err != nil {
			t.Fatalf("GET %s through filter: %v", target, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(strings.ToLower(string(body)), "hello api.example.test") {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
	}
	tr.CloseIdleConnections()
	d := waitDecisions(t, &buf, 1)[0]
	if d["decision"] != "allow" || d["host"] != "API.example.test" || d["method"] != "CONNECT" ||
		d["bytes_up"].(float64) <= 0 || d["bytes_down"].(float64) <= 0 || d["upstream"] == "" || d["client"] == "" {
		t.Errorf("unexpected decision record %v", d)
	}
	for _, k := range []string{"time", "port", "reason", "duration", "status"} {
		if _, ok := d[k]; !ok {
			t.Errorf("decision record lacks %q: %v", k, d)
		}
	}
}

func TestFilterConnectRefusesBadSNI(t *testing.T) {
	ca := newTestCA(t)
	up := newTLSUpstream(t, ca, http.NotFoundHandler(), "api.example.test", "other.example.test")
	cfg, _ := testFilterConfig(t, up.port)
	var buf syncBuffer
	addr := startFilter(t, cfg, jsonLogger(&buf))
	target := fmt.Sprintf("api.example.test:%d", up.port)

	cases := []struct {
		name   string
		client func(net.Conn) error
		reason string
	}{
		{"mismatched SNI", func(c net.Conn) error {
			return tls.Client(c, &tls.Config{ServerName: "other.example.test", RootCAs: ca.pool}).Handshake()
		}, "differs from CONNECT host"},
		{"no SNI", func(c net.Conn) error {
			return tls.Client(c, &tls.Config{InsecureSkipVerify: true}).Handshake()
		}, "no SNI"},
		{"not TLS", func(c net.Conn) error {
			if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: api.example.test\r\n\r\n"); err != nil {
				return err
			}
			b, err := io.ReadAll(c)
			if err == nil && len(b) > 0 && b[0] == 0x15 {
				return errors.New("TLS alert")
			}
			return fmt.Errorf("read %q, %v", b, err)
		}, "does not start with a TLS ClientHello"},
	}
	for i, c := range cases {
		resp, conn := connectRaw(t, addr, target)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: CONNECT status %d", c.name, resp.StatusCode)
		}
		err := c.client(conn)
		if err == nil {
			t.Errorf("%s: tunnel worked, want refusal", c.name)
		}
		d := waitDecisions(t, &buf, i+1)[i]
		if d["decision"] != "deny" || !strings.Contains(d["reason"].(string), c.reason) {
			t.Errorf("%s: decision %v, want deny with %q", c.name, d, c.reason)
		}
	}
	if n := up.hellos.Load(); n != 0 {
		t.Errorf("upstream saw %d ClientHellos; refused tunnels must not reach it", n)
	}
}

func TestFilterTunnelIdleTimeout(t *testing.T) {
	ca := newTestCA(t)
	up := newTLSUpstream(t, ca, http.NotFoundHandler(), "api.example.test")
	cfg, _ := testFilterConfig(t, up.port)
	cfg.TunnelIdleTimeout = Duration(300 * time.Millisecond)
	var buf syncBuffer
	addr := startFilter(t, cfg, jsonLogger(&buf))
	resp, conn := connectRaw(t, addr, fmt.Sprintf("api.example.test:%d", up.port))
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT status %d", resp.StatusCode)
	}
	tc := tls.Client(conn, &tls.Config{ServerName: "api.example.test", RootCAs: ca.pool})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := tc.Read(make([]byte, 1)); err == nil {
		t.Fatal("idle tunnel still open")
	}
	d := waitDecisions(t, &buf, 1)[0]
	if !strings.Contains(d["reason"].(string), "idle") {
		t.Errorf("decision %v, want idle reason", d)
	}
}

func TestFilterPlainHTTP(t *testing.T) {
	type seen struct {
		host, uri, body string
		header          http.Header
	}
	got := make(chan seen, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.Host, r.RequestURI, string(b), r.Header.Clone()}
		io.WriteString(w, "plain ok")
	}))
	defer up.Close()
	port := portOf(t, up.Listener.Addr())
	cfg, dials := testFilterConfig(t, port)
	var buf syncBuffer
	addr := startFilter(t, cfg, jsonLogger(&buf))

	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: addr})}}
	req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("http://api.example.test:%d/p/a?q=1", port), strings.NewReader("payload"))
	req.Header.Set("Proxy-Authorization", "Basic c2VjcmV0")
	req.Header.Set("X-Forwarded-For", "10.0.0.10")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "plain ok" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	s := <-got
	if s.host != fmt.Sprintf("api.example.test:%d", port) || s.uri != "/p/a?q=1" || s.body != "payload" {
		t.Errorf("upstream saw host %q uri %q body %q", s.host, s.uri, s.body)
	}
	for _, h := range []string{"Proxy-Authorization", "X-Forwarded-For", "Forwarded"} {
		if v := s.header.Get(h); v != "" {
			t.Errorf("upstream saw %s: %q", h, v)
		}
	}
	if dials.Load() == 0 {
		t.Error("the filter's dialer was not used")
	}
	d := waitDecisions(t, &buf, 1)[0]
	if d["decision"] != "allow" || d["method"] != "POST" || d["bytes_up"].(float64) != 7 || d["bytes_down"].(float64) != 8 || d["status"].(float64) != 200 {
		t.Errorf("decision %v", d)
	}

	// Not in the allowlist, https:// in absolute form, and plain origin-form requests.
	for u, want := range map[string]int{
		fmt.Sprintf("http://evil.invalid:%d/", port):       http.StatusForbidden,
		fmt.Sprintf("http://api.example.test:%d/", port+1): http.StatusForbidden, // port not listed
	} {
		resp, err := client.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", u, resp.StatusCode, want)
		}
	}
	resp, err = http.Get("http://" + addr + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/health: %d", resp.StatusCode)
	}
	resp, err = http.Get("http://" + addr + "/other")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("origin-form request: %d, want 400", resp.StatusCode)
	}
}

func TestFilterConfigJSON(t *testing.T) {
	var cfg FilterConfig
	err := json.Unmarshal([]byte(`{"listen":"0.0.0.0:8888","allowlist":["api.anthropic.com","*.github.com"],"ports":[443],"tunnel_idle_timeout":"90m"}`), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TunnelIdleTimeout != Duration(90*time.Minute) || len(cfg.Ports) != 1 || cfg.Ports[0] != 443 {
		t.Errorf("decoded %+v", cfg)
	}
	f, err := NewFilter(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.internal) != len(DefaultInternal) || f.idle != 90*time.Minute {
		t.Errorf("defaults not applied: %d internal ranges, idle %v", len(f.internal), f.idle)
	}
	if err := json.Unmarshal([]byte(`{"tunnel_idle_timeout":"soon"}`), &cfg); err == nil {
		t.Error("bad duration accepted")
	}
	for _, bad := range []FilterConfig{
		{Allowlist: []string{"*"}},
		{Internal: []string{"10.0.0.0"}},
		{Ports: []uint16{0}},
		{TunnelIdleTimeout: Duration(-time.Second)},
	} {
		if _, err := NewFilter(bad, nil); err == nil {
			t.Errorf("NewFilter(%+v) accepted a bad config", bad)
		}
	}
}

func TestFilterServeEndsTunnelsOnCancel(t *testing.T) {
	ca := newTestCA(t)
	up := newTLSUpstream(t, ca, http.NotFoundHandler(), "api.example.test")
	cfg, _ := testFilterConfig(t, up.port)
	f, err := NewFilter(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.Serve(ctx, ln) }()

	resp, conn := connectRaw(t, ln.Addr().String(), fmt.Sprintf("api.example.test:%d", up.port))
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT status %d", resp.StatusCode)
	}
	tc := tls.Client(conn, &tls.Config{ServerName: "api.example.test", RootCAs: ca.pool})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := tc.Read(make([]byte, 1)); err == nil {
		t.Error("tunnel still open after shutdown")
	}
}

func TestMissingTokenIsActionable(t *testing.T) {
	_, err := NewEgressProxy(ProxyConfig{Listen: "127.0.0.1:0", Routes: []Route{{Host: "api.example.test", TokenRef: "BOTTLE_TEST_UNSET_TOKEN"}}},
		func(string) string { return "" }, nil)
	if err == nil || !strings.Contains(err.Error(), "BOTTLE_TEST_UNSET_TOKEN") || !strings.Contains(err.Error(), "export it") {
		t.Errorf("NewEgressProxy with a missing token: %v", err)
	}
}

// The filter's plain-HTTP path, like the egress-proxy, must not answer a client that
// half-closed before the upstream answered with a status nobody gave (net/http's empty
// "200 OK", or a 502 "upstream failed" when it was the client that left).
func TestFilterPlainHTTPHalfCloseGetsNoInventedStatus(t *testing.T) {
	reached := make(chan struct{}, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached <- struct{}{}
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
			io.WriteString(w, "late answer")
		}
	}))
	defer up.Close()
	port := portOf(t, up.Listener.Addr())
	cfg, _ := testFilterConfig(t, port)
	var buf syncBuffer
	addr := startFilter(t, cfg, jsonLogger(&buf))

	got := halfClosedExchange(t, addr, fmt.Sprintf("GET http://api.example.test:%d/x HTTP/1.1\r\nHost: api.example.test:%d\r\n\r\n", port, port), reached)
	if got != "" {
		t.Fatalf("got %q, want the connection closed without an answer", got)
	}
	waitFor(t, func() bool { return strings.Contains(buf.String(), "client went away") })
}
