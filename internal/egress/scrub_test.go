package egress

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// scrubToken has the characters that make its encodings differ: '/', '+', '=' (base64
// tokens) and '<', '&', '>' (JSON escapes them).
const scrubToken = "sk-ant-oat01-REAL/secret+0123456789=abc<d>&efghijklmnop"

// echoForms are the ways the test upstreams reflect a header value v carrying token.
func echoForms(v, token string) []string {
	js, _ := json.Marshal(map[string]string{"authorization": v})
	return []string{
		v,
		base64.StdEncoding.EncodeToString([]byte(v)),            // token at offset 7
		base64.URLEncoding.EncodeToString([]byte(token)),        // alone
		base64.RawURLEncoding.EncodeToString([]byte(token)),     // JWT style
		base64.StdEncoding.EncodeToString([]byte("user:" + v)),  // Basic of the whole value
		base64.StdEncoding.EncodeToString([]byte("u:" + token)), // token at offset 2
		url.QueryEscape(token),
		url.PathEscape(v),
		string(js),
		strings.ReplaceAll(string(js), "/", `\/`),
	}
}

var (
	base64Run = regexp.MustCompile(`[A-Za-z0-9+/_-]{16,}`)
	percent   = regexp.MustCompile(`%[0-9A-Fa-f]{2}`)
)

// leak returns how token can be read back from out, or "". It does not use the
// scrubber's own patterns: it unescapes and decodes every base64 run at every
// alignment, and looks for the token without its first and last byte.
func leak(out, token string) string {
	core := token[1 : len(token)-1]
	if strings.Contains(out, core) {
		return "raw"
	}
	if u := percent.ReplaceAllStringFunc(out, func(e string) string { b, _ := hex.DecodeString(e[1:]); return string(b) }); strings.Contains(u, core) {
		return "URL-escaped"
	}
	if u := strings.NewReplacer(`\u003c`, "<", `\u003e`, ">", `\u0026`, "&", `\/`, "/").Replace(out); strings.Contains(u, core) {
		return "JSON-escaped"
	}
	for _, run := range base64Run.FindAllString(out, -1) {
		run = strings.NewReplacer("-", "+", "_", "/").Replace(run)
		for skip := range 4 {
			r := run[skip:]
			if len(r)%4 == 1 { // not a whole number of bytes
				r = r[:len(r)-1]
			}
			dec, _ := base64.RawStdEncoding.DecodeString(r)
			if bytes.Contains(dec, []byte(core)) {
				return "base64 " + run
			}
		}
	}
	return ""
}

func TestLeakDetectsEveryEchoForm(t *testing.T) { // the checker itself must see the attack
	for _, f := range echoForms("Bearer "+scrubToken, scrubToken) {
		if leak("x "+f+" y", scrubToken) == "" {
			t.Errorf("leak misses %q", f)
		}
	}
}

// TestScrubberSplitAtEveryOffset feeds the echo forms through the scrubber in two
// writes split at every offset, and byte by byte: the output is the same as in one
// write and reveals no form of the token.
func TestScrubberSplitAtEveryOffset(t *testing.T) {
	for _, scheme := range []string{"Bearer", "", "Basic"} {
		token := scrubToken
		if scheme == "Basic" {
			token = base64.StdEncoding.EncodeToString([]byte("alice:" + scrubToken))
		}
		v := strings.TrimSpace(scheme + " " + token)
		s := newScrubber(scheme, token)
		src := []byte("\n" + strings.Join(append(echoForms(v, token), "alice:"+scrubToken, scrubToken), "\n") + "\n")
		whole, _ := s.scrub(nil, src, true)
		for _, secret := range []string{token, scrubToken} {
			if how := leak(string(whole), secret); how != "" {
				t.Fatalf("%s: scrubbed output leaks the token (%s):\n%s", scheme, how, whole)
			}
		}
		if !bytes.Contains(whole, []byte(CredentialPlaceholder)) {
			t.Errorf("%s: no placeholder in %s", scheme, whole)
		}
		for k := 0; k <= len(src); k++ {
			if got := scrubChunks(s, src[:k], src[k:]); !bytes.Equal(got, whole) {
				t.Fatalf("%s: split at %d gives\n%s\nwant\n%s", scheme, k, got, whole)
			}
		}
		var chunks [][]byte
		for i := range src {
			chunks = append(chunks, src[i:i+1])
		}
		if got := scrubChunks(s, chunks...); !bytes.Equal(got, whole) {
			t.Fatalf("%s: byte by byte gives\n%s", scheme, got)
		}
	}
}

// scrubChunks scrubs chunks as consecutive writes of a stream.
func scrubChunks(s *scrubber, chunks ...[]byte) []byte {
	var out, held []byte
	for i, c := range chunks {
		in := append(held, c...)
		var keep int
		out, keep = s.scrub(out, in, i == len(chunks)-1)
		held = append([]byte(nil), in[len(in)-keep:]...)
	}
	return out
}

// TestScrubberEmitsWhatCannotStartAMatch: bytes are held back only while they may
// begin a credential form.
func TestScrubberEmitsWhatCannotStartAMatch(t *testing.T) {
	s := newScrubber("Bearer", scrubToken)
	for _, c := range []struct {
		in, emitted string
		held        int
	}{
		{"data: hello\n\n", "data: hello\n\n", 0},
		{"data: " + scrubToken[:10], "data: ", 10},
		{"data: " + scrubToken + "\n\n", "data: " + CredentialPlaceholder + "\n\n", 0},
		{"data: sk-ant-!", "data: sk-ant-!", 0},
	} {
		out, held := s.scrub(nil, []byte(c.in), false)
		if string(out) != c.emitted || held != c.held {
			t.Errorf("scrub(%q) emitted %q holding %d, want %q holding %d", c.in, out, held, c.emitted, c.held)
		}
	}
}

// TestScrubberOverlapRemovesWholeCredential: an echo of crafted bytes that, with the
// start of the credential, completes another form must not save the rest of it.
func TestScrubberOverlapRemovesWholeCredential(t *testing.T) {
	const token = "0026abcdefgh&" // its JSON form ends in "\u0026", its own start
	js := jsonEscape(token)
	in := js[:len(js)-4] + token + "!"
	s := newScrubber("", token)
	for k := 0; k <= len(in); k++ {
		out := string(scrubChunks(s, []byte(in[:k]), []byte(in[k:])))
		if strings.Contains(out, token[4:]) || out != jsonEscape(CredentialPlaceholder)+"!" {
			t.Fatalf("split %d: %q -> %q", k, in, out)
		}
	}
}

func FuzzScrubberChunking(f *testing.F) {
	f.Add([]byte("a"+scrubToken+"b"), uint16(5), uint16(20))
	f.Add([]byte(base64.StdEncoding.EncodeToString([]byte("Bearer "+scrubToken))), uint16(30), uint16(31))
	f.Fuzz(func(t *testing.T, data []byte, a, b uint16) {
		s := newScrubber("Bearer", scrubToken)
		data = append(append(data[:len(data)/2:len(data)/2], scrubToken...), data[len(data)/2:]...)
		i, j := int(a)%(len(data)+1), int(b)%(len(data)+1)
		i, j = min(i, j), max(i, j)
		whole, _ := s.scrub(nil, data, true)
		if got := scrubChunks(s, data[:i], data[i:j], data[j:]); !bytes.Equal(got, whole) {
			t.Fatalf("chunks %d,%d: %q, one write: %q", i, j, got, whole)
		}
		if bytes.Contains(whole, []byte(scrubToken)) {
			t.Fatalf("token survived: %q", whole)
		}
	})
}

// echoUpstream reflects the Authorization it receives in a response header, a 103
// Early Hints header, a trailer and, in every form of echoForms, the body. The body
// goes out in two flushed writes split at ?split=K; the second only after the test
// calls release, so the proxy sees the split.
type echoUpstream struct {
	*tlsUpstream
	release chan struct{}
	seenAE  atomic.Value // Accept-Encoding the upstream received
}

func newEchoUpstream(t *testing.T, ca *testCA) *echoUpstream {
	e := &echoUpstream{release: make(chan struct{})}
	e.tlsUpstream = newTLSUpstream(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := r.Header.Get("Authorization")
		token := strings.TrimPrefix(v, "Bearer ")
		e.seenAE.Store(r.Header.Get("Accept-Encoding"))
		h := w.Header()
		h.Set("Link", "<https://x.test/"+url.PathEscape(v)+">")
		w.WriteHeader(http.StatusEarlyHints)
		h.Del("Link")
		h.Set("X-Echo", v)
		h.Set("X-Echo-B64", base64.StdEncoding.EncodeToString([]byte(v)))
		h.Set("Trailer", "X-Echo-Trailer")
		body := "\n" + strings.Join(echoForms(v, token), "\n") + "\n"
		split, err := strconv.Atoi(r.URL.Query().Get("split"))
		if err != nil || split < 1 || split > len(body) {
			split = len(body)
		}
		io.WriteString(w, body[:split])
		http.NewResponseController(w).Flush()
		if split < len(body) {
			select {
			case <-e.release:
			case <-time.After(30 * time.Second):
				t.Errorf("split %d: the agent did not get the bytes before the split", split)
			}
		}
		io.WriteString(w, body[split:])
		h.Set("X-Echo-Trailer", v)
	}), "api.example.test")
	return e
}

// TestProxyScrubsReflectedCredential performs the reflection attack through a real
// TLS echo upstream, with the body split at every offset: the agent never reads the
// token in any form, bytes before the split arrive before the rest is sent, and the
// result does not depend on the split.
func TestProxyScrubsReflectedCredential(t *testing.T) {
	ca := newTestCA(t)
	up := newEchoUpstream(t, ca)
	addr := startProxy(t, ProxyConfig{Routes: []Route{{Host: "api.example.test", TokenRef: "T", Upstream: up.URL, CAFile: ca.file(t)}}},
		map[string]string{"T": scrubToken}, nil)
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()

	var want string
	bodyLen := len(strings.Join(echoForms("Bearer "+scrubToken, scrubToken), "\n")) + 2
	for k := 0; k < bodyLen; k++ { // 0: no split
		var early []string
		trace := &httptrace.ClientTrace{Got1xxResponse: func(_ int, h textproto.MIMEHeader) error {
			early = append(early, h.Get("Link"))
			return nil
		}}
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://%s/api.example.test/echo?split=%d", addr, k), nil)
		req.Header.Set("Authorization", "Bearer "+CredentialPlaceholder)
		req.Header.Set("Accept-Encoding", "gzip")
		resp, err := client.Do(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
		if err != nil {
			t.Fatal(err)
		}
		var body []byte
		if k >= 1 { // the part before the split arrives while the upstream waits
			first := make([]byte, 1)
			if _, err := io.ReadFull(resp.Body, first); err != nil {
				t.Fatal(err)
			}
			up.release <- struct{}{}
			body = first
		}
		rest, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("split %d: %d %v", k, resp.StatusCode, err)
		}
		body = append(body, rest...)
		seen := fmt.Sprintf("%s\n%v\n%v\n%q", body, resp.Header, resp.Trailer, early)
		if how := leak(seen, scrubToken); how != "" {
			t.Fatalf("split %d: the agent read the token (%s):\n%s", k, how, seen)
		}
		if k == 0 {
			want = string(body)
			if resp.Header.Get("X-Echo") != "Bearer "+CredentialPlaceholder || resp.Trailer.Get("X-Echo-Trailer") != "Bearer "+CredentialPlaceholder ||
				len(early) != 1 || !strings.Contains(early[0], CredentialPlaceholder) || !strings.Contains(want, CredentialPlaceholder) {
				t.Fatalf("reflection not replaced by the placeholder:\n%s", seen)
			}
			if ae := up.seenAE.Load(); ae != "identity" {
				t.Errorf("upstream saw Accept-Encoding %q, want identity", ae)
			}
		} else if string(body) != want {
			t.Fatalf("split %d changed the result:\n%s\nwant\n%s", k, body, want)
		}
	}
}

// TestProxySSEScrubbedEventByEvent: SSE events reflecting the token still arrive one by
// one; the upstream sends the next only after the agent has read the previous one.
func TestProxySSEScrubbedEventByEvent(t *testing.T) {
	const events = 20
	ca := newTestCA(t)
	ack := make(chan struct{})
	up := newTLSUpstream(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range events {
			fmt.Fprintf(w, "event: echo\ndata: {\"n\":%d,\"auth\":%q}\n\n", i, r.Header.Get("Authorization"))
			http.NewResponseController(w).Flush()
			select {
			case <-ack:
			case <-time.After(30 * time.Second):
				t.Errorf("event %d did not reach the agent before the next was sent", i)
				return
			}
		}
	}), "api.example.test")
	addr := startProxy(t, ProxyConfig{Routes: []Route{{Host: "api.example.test", TokenRef: "T", Upstream: up.URL, CAFile: ca.file(t)}}},
		map[string]string{"T": scrubToken}, nil)

	resp, err := http.Get("http://" + addr + "/api.example.test/v1/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "data: ") {
			got = append(got, line)
		} else if line == "" {
			ack <- struct{}{}
		}
	}
	if len(got) != events {
		t.Fatalf("received %d events, want %d", len(got), events)
	}
	if how := leak(strings.Join(got, "\n"), scrubToken); how != "" || !strings.Contains(got[0], `"auth":"Bearer `+CredentialPlaceholder+`"`) {
		t.Errorf("events (%s): %s", how, got[0])
	}
}

// TestProxyRefusesUnscrubbableResponses: an upstream that compresses although identity
// was asked, or that switches protocols, gets the agent a 502 and no token.
func TestProxyRefusesUnscrubbableResponses(t *testing.T) {
	ca := newTestCA(t)
	up := newTLSUpstream(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := r.Header.Get("Authorization")
		switch r.URL.Path {
		case "/gzip":
			w.Header()["Content-Encoding"] = []string{"identity", "gzip"}
			zw := gzip.NewWriter(w)
			io.WriteString(zw, v)
			zw.Close()
		case "/upgrade":
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" + v + "\n")
			brw.Flush()
			io.Copy(io.Discard, c)
		}
	}), "api.example.test")
	addr := startProxy(t, ProxyConfig{Routes: []Route{{Host: "api.example.test", TokenRef: "T", Upstream: up.URL, CAFile: ca.file(t)}}},
		map[string]string{"T": scrubToken}, nil)

	resp, err := (&http.Client{Transport: &http.Transport{DisableCompression: true}}).Get("http://" + addr + "/api.example.test/gzip")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "Content-Encoding") {
		t.Errorf("gzip despite identity: %d %q, want 502", resp.StatusCode, body)
	}

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(c, "GET /api.example.test/upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	raw, _ := io.ReadAll(bufio.NewReader(c))
	if !strings.HasPrefix(string(raw), "HTTP/1.1 502") || !strings.Contains(string(raw), "upgrade") || leak(string(raw), scrubToken) != "" {
		t.Errorf("upgrade: agent got %q, want 502 without the token", raw)
	}
}

// TestProxyDropsRange: Range requests could fetch a reflected token in pieces that
// each escape the scrub; the upstream never sees Range.
func TestProxyDropsRange(t *testing.T) {
	ca := newTestCA(t)
	up := newTLSUpstream(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, strings.NewReader("echo: "+r.Header.Get("Authorization")))
	}), "api.example.test")
	addr := startProxy(t, ProxyConfig{Routes: []Route{{Host: "api.example.test", TokenRef: "T", Upstream: up.URL, CAFile: ca.file(t)}}},
		map[string]string{"T": scrubToken}, nil)
	var pieces string
	for _, rng := range []string{"bytes=0-20", "bytes=21-"} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/api.example.test/e", nil)
		req.Header.Set("Range", rng)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("Range %s: status %d, want the whole body (200)", rng, resp.StatusCode)
		}
		pieces += string(b)
	}
	if how := leak(pieces, scrubToken); how != "" {
		t.Errorf("token reassembled from ranges (%s): %q", how, pieces)
	}
}

// TestProxyRefusesMethods: TRACE (the upstream would echo the injected credential),
// CONNECT and unknown methods never reach the upstream; the allowed ones do.
func TestProxyRefusesMethods(t *testing.T) {
	ca := newTestCA(t)
	var reached atomic.Int64
	up := newTLSUpstream(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		if r.Method == http.MethodTrace { // what a TRACE-enabled server does
			r.Write(w)
		}
	}), "api.example.test")
	addr := startProxy(t, ProxyConfig{Routes: []Route{{Host: "api.example.test", TokenRef: "T", Upstream: up.URL, CAFile: ca.file(t)}}},
		map[string]string{"T": scrubToken}, nil)

	for _, m := range []string{"TRACE", "PROPFIND", "FOO", "CONNECT"} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		target := "/api.example.test/x"
		if m == "CONNECT" {
			target = "api.example.test:443"
		}
		fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n", m, target)
		raw, _ := io.ReadAll(c)
		c.Close()
		if !strings.HasPrefix(string(raw), "HTTP/1.1 405") || !strings.Contains(string(raw), "Allow: GET, HEAD, POST") || strings.Contains(string(raw), scrubToken) {
			t.Errorf("%s: got %q, want 405", m, raw)
		}
	}
	if n := reached.Load(); n != 0 {
		t.Fatalf("refused methods reached the upstream %d times", n)
	}
	for _, m := range allowedMethods {
		req, _ := http.NewRequest(m, "http://"+addr+"/api.example.test/x", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: %d", m, resp.StatusCode)
		}
	}
	if n := reached.Load(); n != int64(len(allowedMethods)) {
		t.Errorf("upstream reached %d times, want %d", n, len(allowedMethods))
	}
}

// BenchmarkScrub scans 256 KiB of JSON-like text and of zeros with no credential in it.
func BenchmarkScrub(b *testing.B) {
	s := newScrubber("Bearer", scrubToken)
	text := bytes.Repeat([]byte(`{"type":"content_block_delta","delta":{"text":"Hello, sk-ant world 0123"}}`+"\n"), 256<<10/76)
	for name, data := range map[string][]byte{"text": text, "zeros": make([]byte, 256<<10)} {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			out := make([]byte, 0, len(data))
			for b.Loop() {
				out, _ = s.scrub(out[:0], data, false)
			}
		})
	}
}

// TestScrubberShortTokens: tokens shorter than the scan's sampling stride are still
// found, in any split.
func TestScrubberShortTokens(t *testing.T) {
	for _, token := range []string{"x", "xy", "xyz", "wxyz0123"} {
		s := newScrubber("", token)
		in := "a" + token + "b" + token + token + "c" + token
		want := "a" + CredentialPlaceholder + "b" + CredentialPlaceholder + CredentialPlaceholder + "c" + CredentialPlaceholder
		for k := 0; k <= len(in); k++ {
			if out := string(scrubChunks(s, []byte(in[:k]), []byte(in[k:]))); out != want {
				t.Errorf("token %q split %d: %q", token, k, out)
			}
		}
	}
}

// TestProxyScrubsOverHTTP2: real API upstreams speak HTTP/2; body, header and trailer
// echoes are scrubbed there too.
func TestProxyScrubsOverHTTP2(t *testing.T) {
	ca := newTestCA(t)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := r.Header.Get("Authorization")
		w.Header().Set("Trailer", "X-Echo-Trailer")
		w.Header().Set("X-Echo", v)
		io.WriteString(w, r.Proto+" "+v)
		w.Header().Set("X-Echo-Trailer", v)
	}))
	up.EnableHTTP2 = true
	up.TLS = &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, "api.example.test")}}
	up.StartTLS()
	defer up.Close()
	addr := startProxy(t, ProxyConfig{Routes: []Route{{Host: "api.example.test", TokenRef: "T", Upstream: up.URL, CAFile: ca.file(t)}}},
		map[string]string{"T": scrubToken}, nil)
	resp, err := http.Get("http://" + addr + "/api.example.test/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	seen := fmt.Sprintf("%s\n%v\n%v", body, resp.Header, resp.Trailer)
	if string(body) != "HTTP/2.0 Bearer "+CredentialPlaceholder || leak(seen, scrubToken) != "" || resp.Trailer.Get("X-Echo-Trailer") != "Bearer "+CredentialPlaceholder {
		t.Errorf("over HTTP/2 the agent got:\n%s", seen)
	}
}

// TestProxyScrubsUpstreamErrors: an upstream answer the proxy refuses or cannot parse
// may quote the credential in the error (Go quotes a malformed header line, the
// refusal names the Content-Encoding); neither the agent's 502 nor the log shows it.
func TestProxyScrubsUpstreamErrors(t *testing.T) {
	ca := newTestCA(t)
	up := newTLSUpstream(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		switch r.URL.Path {
		case "/encoding":
			w.Header().Set("Content-Encoding", token)
			io.WriteString(w, "x")
		case "/header", "/trailer":
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			if r.URL.Path == "/header" {
				brw.WriteString("HTTP/1.1 200 OK\r\nX-Echo " + token + "\r\nContent-Length: 0\r\n\r\n")
			} else {
				brw.WriteString("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Echo\r\n\r\n1\r\nx\r\n0\r\nX-Echo " + token + "\r\n\r\n")
			}
			brw.Flush()
		}
	}), "api.example.test")
	var buf syncBuffer
	addr := startProxy(t, ProxyConfig{Routes: []Route{{Host: "api.example.test", TokenRef: "T", Upstream: up.URL, CAFile: ca.file(t)}}},
		map[string]string{"T": scrubToken}, jsonLogger(&buf))
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	for _, path := range []string{"/encoding", "/header", "/trailer"} {
		resp, err := client.Get("http://" + addr + "/api.example.test" + path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body) // the trailer response is aborted
		resp.Body.Close()
		seen := fmt.Sprintf("%d %s\n%v\n%v", resp.StatusCode, body, resp.Header, resp.Trailer)
		if path != "/trailer" && (resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), CredentialPlaceholder)) {
			t.Errorf("%s: agent got %s, want a 502 quoting the placeholder", path, seen)
		}
		if how := leak(seen, scrubToken); how != "" {
			t.Errorf("%s: the agent read the token (%s):\n%s", path, how, seen)
		}
	}
	// The aborted trailer response leaves only the reverse proxy's warning, written
	// before the agent saw the connection end.
	waitLog(t, &buf, "egress-proxy request", func(recs []map[string]any) bool { return len(recs) == 2 })
	if !strings.Contains(buf.String(), "ReverseProxy read error") {
		t.Errorf("the log does not show the trailer error:\n%s", buf.String())
	}
	if how := leak(buf.String(), scrubToken); how != "" {
		t.Errorf("the log holds the token (%s):\n%s", how, buf.String())
	}
}
