package egress

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitLog polls the JSON log until ok accepts the records with message msg.
func waitLog(t *testing.T, buf *syncBuffer, msg string, ok func([]map[string]any) bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if ok(records(t, buf.String(), msg)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("log never showed the awaited %q records:\n%s", msg, buf.String())
		}
	}
}

func count(recs []map[string]any, key string, val any) int {
	n := 0
	for _, r := range recs {
		if r[key] == val {
			n++
		}
	}
	return n
}

// TestFilterCapsTunnels opens max_tunnels real tunnels: the next CONNECT is refused
// with 503 and logged, open tunnels and plain HTTP keep working, and once a tunnel
// closes a new one is accepted.
func TestFilterCapsTunnels(t *testing.T) {
	const max = 3
	ca := newTestCA(t)
	up := newTLSUpstream(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "tunneled ok")
	}), "api.example.test")
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "plain ok")
	}))
	defer plain.Close()
	plainPort := portOf(t, plain.Listener.Addr())
	cfg, _ := testFilterConfig(t, up.port, plainPort)
	cfg.MaxTunnels = max
	var buf syncBuffer
	addr := startFilter(t, cfg, jsonLogger(&buf))
	target := fmt.Sprintf("api.example.test:%d", up.port)

	open := func() *tls.Conn {
		t.Helper()
		resp, conn := connectRaw(t, addr, target)
		if resp.StatusCode != 200 {
			t.Fatalf("CONNECT: status %d", resp.StatusCode)
		}
		tc := tls.Client(conn, &tls.Config{ServerName: "api.example.test", RootCAs: ca.pool})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		return tc
	}
	get := func(tc *tls.Conn) {
		t.Helper()
		io.WriteString(tc, "GET / HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatalf("request through an open tunnel: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != "tunneled ok" {
			t.Fatalf("request through an open tunnel: %d %q", resp.StatusCode, b)
		}
	}
	var tunnels []*tls.Conn
	for range max {
		tunnels = append(tunnels, open())
	}

	resp, _ := connectRaw(t, addr, target)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "max_tunnels") {
		t.Fatalf("CONNECT beyond the cap: %d %q, want 503 naming max_tunnels", resp.StatusCode, body)
	}
	waitLog(t, &buf, "egress decision", func(recs []map[string]any) bool {
		for _, r := range recs {
			if r["decision"] == "deny" && r["status"] == float64(503) && strings.Contains(r["reason"].(string), "max_tunnels") {
				return true
			}
		}
		return false
	})
	for _, tc := range tunnels {
		get(tc)
	}
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: addr})}}
	presp, err := client.Get(fmt.Sprintf("http://api.example.test:%d/", plainPort))
	if err != nil {
		t.Fatal(err)
	}
	pb, _ := io.ReadAll(presp.Body)
	presp.Body.Close()
	if string(pb) != "plain ok" {
		t.Errorf("plain HTTP at the tunnel cap: %d %q", presp.StatusCode, pb)
	}

	// A tunnel's record is logged after its slot is freed.
	tunnels[1].Close()
	waitLog(t, &buf, "egress decision", func(recs []map[string]any) bool {
		return count(recs, "method", "CONNECT")-count(recs, "decision", "deny") >= 1
	})
	get(open())
	get(tunnels[0])
}

// TestProxyCapsRequestsInFlight: with max_requests requests held by the upstream, the
// next is refused with 503 without reaching it; once they end, requests pass again.
func TestProxyCapsRequestsInFlight(t *testing.T) {
	const max = 2
	ca := newTestCA(t)
	arrived, release := make(chan struct{}, max), make(chan struct{})
	var fast atomic.Int64
	up := newTLSUpstream(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			arrived <- struct{}{}
			<-release
		} else {
			fast.Add(1)
		}
		io.WriteString(w, "ok")
	}), "api.example.test")
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the upstream's Close, which waits for its handlers
	var buf syncBuffer
	addr := startProxy(t, ProxyConfig{MaxRequests: max, Routes: []Route{{Host: "api.example.test", TokenRef: "T", Upstream: up.URL, CAFile: ca.file(t)}}},
		map[string]string{"T": testToken}, jsonLogger(&buf))
	get := func(path string) (int, string, http.Header) {
		resp, err := http.Get("http://" + addr + "/api.example.test" + path)
		if err != nil {
			t.Error(err)
			return 0, "", nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}

	held := make(chan int, max)
	for range max {
		go func() { code, _, _ := get("/hold"); held <- code }()
	}
	for range max {
		<-arrived
	}
	code, body, h := get("/fast")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "max_requests") || h.Get("Retry-After") == "" || fast.Load() != 0 {
		t.Fatalf("request beyond the cap: %d %q (upstream reached %d times), want 503", code, body, fast.Load())
	}
	unblock()
	for range max {
		if code := <-held; code != 200 {
			t.Errorf("held request: %d", code)
		}
	}
	waitLog(t, &buf, "egress-proxy request", func(recs []map[string]any) bool { return count(recs, "status", float64(200)) == max })
	if code, body, _ := get("/fast"); code != 200 || body != "ok" {
		t.Errorf("request after the held ones ended: %d %q", code, body)
	}
}

func TestLimitDefaults(t *testing.T) {
	f, err := NewFilter(FilterConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if f.max != DefaultMaxTunnels || f.idle != DefaultTunnelIdleTimeout || DefaultTunnelIdleTimeout > 15*time.Minute {
		t.Errorf("filter defaults: max %d idle %v", f.max, f.idle)
	}
	p, err := NewEgressProxy(ProxyConfig{Routes: []Route{{Host: "a.test", TokenRef: "T"}}}, envMap{"T": "x"}.get, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.max != DefaultMaxRequests {
		t.Errorf("egress-proxy default max_requests %d", p.max)
	}
	if _, err := NewFilter(FilterConfig{MaxTunnels: -1}, nil); err == nil || !strings.Contains(err.Error(), "max_tunnels") {
		t.Errorf("negative max_tunnels: %v", err)
	}
	if _, err := NewEgressProxy(ProxyConfig{MaxRequests: -1, Routes: []Route{{Host: "a.test", TokenRef: "T"}}}, envMap{"T": "x"}.get, nil); err == nil || !strings.Contains(err.Error(), "max_requests") {
		t.Errorf("negative max_requests: %v", err)
	}
}
