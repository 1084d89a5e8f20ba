package egress

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"syscall"
	"testing"
	"time"
)

const testToken = "sk-test-REAL-secret-0123456789abcdef"

func strPtr(s string) *string { return &s }

type seenRequest struct {
	host, uri string
	header    http.Header
}

func TestProxyInjectsCredentialAndStripsAgentOnes(t *testing.T) {
	ca := newTestCA(t)
	seen := make(chan seenRequest, 4)
	up := newTLSUpstream(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- seenRequest{r.Host, r.RequestURI, r.Header.Clone()}
		w.Header().Set("Connection", "X-Up-Hop")
		w.Header().Set("X-Up-Hop", "1")
		io.WriteString(w, "ok")
	}), "api.example.test", "keys.example.test")
	var buf syncBuffer
	addr := startProxy(t, ProxyConfig{Routes: []Route{
		{Host: "api.example.test", TokenRef: "TEST_OAUTH", Roles: []string{"claude_code_oauth"}, Upstream: up.URL, CAFile: ca.file(t)},
		{Host: "Keys.Example.Test", TokenRef: "TEST_KEY", Header: "x-api-key", Scheme: strPtr(""), Upstream: up.URL, CAFile: ca.file(t)},
	}}, map[string]string{"TEST_OAUTH": testToken, "TEST_KEY": "raw-key-value"}, jsonLogger(&buf))

	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/api.example.test/v1/messages%2Fx?beta=true", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer egress-proxy-placeholder")
	req.Header.Set("X-Api-Key", "placeholder")
	req.Header.Set("Cookie", "session=agent")
	req.Header.Set("Proxy-Authorization", "Basic placeholder")
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "dropped")
	req.Header.Set("X-Forwarded-For", "10.0.0.10")
	req.Header.Set("Anthropic-Version", "2023-06-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if resp.Header.Get("X-Up-Hop") != "" {
		t.Error("upstream hop-by-hop response header reached the agent")
	}
	s := <-seen
	if s.host != "api.example.test" || s.uri != "/v1/messages%2Fx?beta=true" {
		t.Errorf("upstream saw Host %q URI %q", s.host, s.uri)
	}
	if got := s.header.Values("Authorization"); len(got) != 1 || got[0] != "Bearer "+testToken {
		t.Errorf("upstream Authorization = %q, want the real token", got)
	}
	for _, h := range []string{"X-Api-Key", "Cookie", "Proxy-Authorization", "X-Hop", "X-Forwarded-For", "Forwarded"} {
		if v := s.header.Get(h); v != "" {
			t.Errorf("upstream saw agent header %s: %q", h, v)
		}
	}
	if s.header.Get("Anthropic-Version") != "2023-06-01" {
		t.Error("ordinary header not forwarded")
	}

	// Raw header route: x-api-key carries the bare token, Authorization is dropped.
	req, _ = http.NewRequest(http.MethodGet, "http://"+addr+"/keys.example.test", nil)
	req.Header.Set("Authorization", "Bearer placeholder")
	req.Header.Set("X-Api-Key", "placeholder")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	s = <-seen
	if s.uri != "/" || s.host != "keys.example.test" || s.header.Get("Authorization") != "" ||
		len(s.header.Values("X-Api-Key")) != 1 || s.header.Get("X-Api-Key") != "raw-key-value" {
		t.Errorf("raw route: upstream saw URI %q Host %q headers %v", s.uri, s.host, s.header)
	}

	recs := waitRecords(t, &buf, "egress-proxy request", 2)
	if len(recs) != 2 || recs[0]["route"] != "api.example.test" || recs[0]["path"] != "/v1/messages%2Fx" ||
		recs[0]["status"].(float64) != 200 || recs[0]["bytes_in"].(float64) != 2 || recs[0]["bytes_out"].(float64) != 2 || recs[0]["method"] != "POST" {
		t.Errorf("request records %v", recs)
	}
	if strings.Contains(buf.String(), "beta=true") {
		t.Error("query string logged")
	}
}

func TestProxyUnknownRoute(t *testing.T) {
	ca := newTestCA(t)
	up := newTLSUpstream(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("upstream reached for %s", r.URL)
	}), "api.example.test")
	addr := startProxy(t, ProxyConfig{Routes: []Route{{Host: "api.example.test", TokenRef: "T", Upstream: up.URL, CAFile: ca.file(t)}}},
		map[string]string{"T": testToken}, nil)
	for _, p := range []string{"/", "/other.example.test/v1", "/api.example.test.evil/x", "/v1/messages", "/api%2eexample.test/x"} {
		resp, err := http.Get("http://" + addr + p)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "no route") {
			t.Errorf("GET %s: %d %q, want 404", p, resp.StatusCode, body)
		}
	}
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/healthz: %d", resp.StatusCode)
	}
}

func TestProxyConfigErrorsNeverShowSecrets(t *testing.T) {
	env := map[string]string{"GOOD": testToken, "BAD": "line1\n" + testToken}
	getenv := func(k string) string { return env[k] }
	cases := []struct {
		cfg  ProxyConfig
		want string
	}{
		{ProxyConfig{Routes: []Route{{Host: "api.example.test", TokenRef: "MISSING_TOKEN"}}}, "MISSING_TOKEN"},
		{ProxyConfig{Routes: []Route{{Host: "api.example.test", TokenRef: "BAD"}}}, "BAD"},
		{ProxyConfig{}, "no routes"},
		{ProxyConfig{Routes: []Route{{Host: "127.0.0.1", TokenRef: "GOOD"}}}, "host"},
		{ProxyConfig{Routes: []Route{{Host: "a.test", TokenRef: "GOOD"}, {Host: "A.test.", TokenRef: "GOOD"}}}, "twice"},
		{ProxyConfig{Routes: []Route{{Host: "a.test", TokenRef: "not a name"}}}, "token_ref"},
		{ProxyConfig{Routes: []Route{{Host: "a.test", TokenRef: "GOOD", Header: "Bad Header"}}}, "header"},
		{ProxyConfig{Routes: []Route{{Host: "a.test", TokenRef: "GOOD", Header: "Host"}}}, "header"},
		{ProxyConfig{Routes: []Route{{Host: "a.test", TokenRef: "GOOD", Scheme: strPtr("Bearer x")}}}, "scheme"},
		{ProxyConfig{Routes: []Route{{Host: "a.test", TokenRef: "GOOD", Upstream: "ftp://x"}}}, "upstream"},
		{ProxyConfig{Routes: []Route{{Host: "a.test", TokenRef: "GOOD", CAFile: "/nonexistent/ca.pem"}}}, "ca_file"},
	}
	for _, c := range cases {
		_, err := NewEgressProxy(c.cfg, getenv, nil)
		if err == nil {
			t.Errorf("config %+v accepted", c.cfg)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), testToken) {
			t.Errorf("error %q: want mention of %q and no secret", err, c.want)
		}
	}
}

// TestProxyNeverLogsToken drives success, 404, upstream failure and untrusted-TLS
// paths and scans all log output and error bodies for the token.
func TestProxyNeverLogsToken(t *testing.T) {
	ca := newTestCA(t)
	up := newTLSUpstream(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
	}), "api.example.test")
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close() // a loopback port that refuses connections
	var buf syncBuffer
	addr := startProxy(t, ProxyConfig{Routes: []Route{
		{Host: "api.example.test", TokenRef: "T", Upstream: up.URL, CAFile: ca.file(t)},
		{Host: "down.example.test", TokenRef: "T", Upstream: closedURL},
		{Host: "untrusted.example.test", TokenRef: "T", Upstream: up.URL}, // no ca_file: verification fails
	}}, map[string]string{"T": testToken}, jsonLogger(&buf))

	var bodies bytes.Buffer
	for _, c := range []struct {
		path string
		code int
	}{
		{"/api.example.test/v1/messages?key=" + testToken[:6], 401},
		{"/down.example.test/x", 502},
		{"/untrusted.example.test/x", 502},
		{"/nowhere.example.test/x", 404},
	} {
		resp, err := http.Get("http://" + addr + c.path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(&bodies, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code {
			t.Errorf("GET %s: %d, want %d", c.path, resp.StatusCode, c.code)
		}
	}
	if !strings.Contains(bodies.String(), "certificate") {
		t.Errorf("untrusted upstream error does not explain the TLS failure: %q", bodies.String())
	}
	waitRecords(t, &buf, "egress-proxy request", 4)
	logs := buf.String()
	if !strings.Contains(logs, `"status":502`) || !strings.Contains(logs, `"error"`) {
		t.Errorf("failures not logged: %s", logs)
	}
	for _, secret := range []string{testToken, "Bearer " + testToken[:8]} {
		if strings.Contains(logs, secret) || strings.Contains(bodies.String(), secret) {
			t.Fatalf("secret %q leaked into logs or responses:\n%s\n%s", secret, logs, bodies.String())
		}
	}
}

func TestProxyStreamsSSE(t *testing.T) {
	const events = 50
	ca := newTestCA(t)
	up := newTLSUpstream(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		for i := 0; i < events; i++ {
			fmt.Fprintf(w, "event: ping\ndata: %d\n\n", i)
			if err := rc.Flush(); err != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}), "api.example.test")
	addr := startProxy(t, ProxyConfig{Routes: []Route{{Host: "api.example.test", TokenRef: "T", Upstream: up.URL, CAFile: ca.file(t)}}},
		map[string]string{"T": testToken}, nil)

	resp, err := http.Get("http://" + addr + "/api.example.test/v1/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var arrivals []time.Time
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: ") {
			arrivals = append(arrivals, time.Now())
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(arrivals) != events {
		t.Fatalf("received %d events, want %d", len(arrivals), events)
	}
	first, last := arrivals[0], arrivals[len(arrivals)-1]
	if !first.Before(last.Add(-300 * time.Millisecond)) {
		t.Errorf("events arrived in a burst (first %v before last): the response was buffered", last.Sub(first))
	}
}

func TestProxyLargeBodiesAndKeepAlive(t *testing.T) {
	payload := make([]byte, 2<<20)
	rand.Read(payload)
	ca := newTestCA(t)
	up := newTLSUpstream(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			sum := sha256.New()
			io.Copy(sum, r.Body)
			fmt.Fprintf(w, "%x", sum.Sum(nil))
			return
		}
		w.Write(payload)
	}), "api.example.test")
	addr := startProxy(t, ProxyConfig{Routes: []Route{{Host: "api.example.test", TokenRef: "T", Upstream: up.URL, CAFile: ca.file(t)}}},
		map[string]string{"T": testToken}, nil)

	reused := 0
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		if i.Reused {
			reused++
		}
	}}
	client := &http.Client{Transport: &http.Transport{}}
	do := func(method string, body io.Reader) []byte {
		req, _ := http.NewRequest(method, "http://"+addr+"/api.example.test/blob", body)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %d %v", method, resp.StatusCode, err)
		}
		return b
	}
	want := sha256.Sum256(payload)
	if got := do(http.MethodPost, bytes.NewReader(payload)); string(got) != fmt.Sprintf("%x", want) {
		t.Errorf("2 MB request body arrived altered")
	}
	if got := do(http.MethodGet, nil); !bytes.Equal(got, payload) {
		t.Errorf("2 MB response body arrived altered (%d bytes)", len(got))
	}
	if reused != 1 {
		t.Errorf("agent connection reused %d times, want keep-alive", reused)
	}
}

func TestProxyConfigJSON(t *testing.T) {
	var cfg ProxyConfig
	err := json.Unmarshal([]byte(`{"listen":":9000","routes":[
		{"host":"api.anthropic.com","token_ref":"CLAUDE_OAUTH","roles":["claude_code_oauth"]},
		{"host":"api.openai.com","token_ref":"OPENAI_KEY","header":"x-api-key","scheme":""}]}`), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewEgressProxy(cfg, envMap{"CLAUDE_OAUTH": "a", "OPENAI_KEY": "b"}.get, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, o := p.routes["api.anthropic.com"], p.routes["api.openai.com"]
	if a.header != "Authorization" || a.value != "Bearer a" || a.target.String() != "https://api.anthropic.com" {
		t.Errorf("anthropic route %s %s", a.header, a.target)
	}
	if o.header != "X-Api-Key" || o.value != "b" {
		t.Errorf("openai route header %s", o.header)
	}
}

// A client that sends its request and half-closes (shutdown(SHUT_WR), as `nc` does at the
// end of its input) must not read a status the upstream never sent: net/http takes the
// EOF for a client gone away and cancels the request, and a handler that then writes
// nothing is answered "200 OK" with an empty body by net/http itself.
func TestProxyHalfCloseGetsNoInventedStatus(t *testing.T) {
	ca := newTestCA(t)
	reached := make(chan struct{}, 1)
	up := newTLSUpstream(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached <- struct{}{}
		select { // answers only after the client half-closed (or never, if it went away)
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
			io.WriteString(w, "late answer")
		}
	}), "api.example.test")
	var buf syncBuffer
	addr := startProxy(t, ProxyConfig{Routes: []Route{{Host: "api.example.test", TokenRef: "T", Upstream: up.URL, CAFile: ca.file(t)}}},
		map[string]string{"T": testToken}, jsonLogger(&buf))

	got := halfClosedExchange(t, addr, "GET /api.example.test/v1/models HTTP/1.1\r\nHost: x\r\n\r\n", reached)
	if strings.HasPrefix(got, "HTTP/1.1 200") {
		t.Fatalf("egress-proxy invented a status for a half-closed client: %q", got)
	}
	if got != "" {
		t.Errorf("got %q, want the connection closed without an answer", got)
	}
	waitFor(t, func() bool { return strings.Contains(buf.String(), "client went away") })
	if !strings.Contains(buf.String(), `"status":0`) {
		t.Errorf("request log does not record that no status was sent: %s", buf.String())
	}
}

// halfClosedExchange sends req on a new connection to addr, half-closes it once the
// upstream has the request (reached), and returns everything the server answers.
func halfClosedExchange(t *testing.T, addr, req string, reached <-chan struct{}) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reached:
	case <-time.After(5 * time.Second):
		t.Fatal("the request never reached the upstream")
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(conn)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after half-close: %v (got %q)", err, got)
	}
	return string(got)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
