package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/bottle-dev/bottle/internal/netns"
	"github.com/bottle-dev/bottle/internal/plan"
)

// upstreamNet is TEST-NET-3 (documentation addresses), put on a bridge the test creates:
// the filter refuses every private range, so the fake "internet" needs an address outside
// them, and a host-local one means the sidecars' packets are delivered here, never routed.
var upstreamAddr = netip.MustParsePrefix("198.51.100.1/24")

// dnsAddr is the test's DNS server for the sidecars, on the same test bridge.
var dnsAddr = netip.MustParseAddr("198.51.100.2")

// upstream is the fake internet: HTTP and HTTPS servers and a UDP sink on upstreamAddr.
type upstream struct {
	caFile string
	mu     sync.Mutex
	seen   []http.Header // headers of requests to /v1/messages
	udp    atomic.Int64
}

func (u *upstream) headers() []http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]http.Header(nil), u.seen...)
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	testBridge(t, "bte2e-up", upstreamAddr)
	addr := upstreamAddr.Addr()
	// Refuse to go on unless the address is local: otherwise packets to it would leave.
	if out, err := exec.Command("ip", "addr", "add", dnsAddr.String()+"/32", "dev", "bte2e-up").CombinedOutput(); err != nil {
		t.Fatalf("add %s to the test bridge: %v: %s", dnsAddr, err, out)
	}
	if out, err := exec.Command("ip", "-o", "addr", "show", "dev", "bte2e-up").Output(); err != nil || !strings.Contains(string(out), addr.String()+"/24") || !strings.Contains(string(out), dnsAddr.String()+"/32") {
		t.Fatalf("test upstream addresses are not on the test bridge (%v): %s", err, out)
	}
	serveDNS(t, dnsAddr, addr)
	u := &upstream{}
	caPEM, cert := testCA(t, "api.allowed.test", "api.route.test", "api.denied.test", "api.anthropic.com")
	u.caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(u.caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/messages", func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen = append(u.seen, r.Header.Clone())
		u.mu.Unlock()
		var req struct {
			Model  string `json:"model"`
			Stream bool   `json:"stream"`
		}
		body, _ := io.ReadAll(r.Body)
		if json.Unmarshal(body, &req) != nil || req.Model == "" {
			fmt.Fprintln(w, "UPSTREAM-OK")
			return
		}
		if bytes.Contains(body, []byte(fakeSuperviseMarker)) {
			fakeSuperviseTurn(w, req.Model, req.Stream, body)
			return
		}
		if bytes.Contains(body, []byte(fakeToolMarker)) && !bytes.Contains(body, []byte(`"tool_result"`)) {
			fakeAnthropicToolUse(w, req.Model, req.Stream)
			return
		}
		fakeAnthropicMessage(w, req.Model, req.Stream)
	})
	mux.HandleFunc("/v1/stream", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 50 {
			fmt.Fprintf(w, "event: message\ndata: {\"n\":%d}\n\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "UPSTREAM-ALLOWED host=%s\n", r.Host)
	})
	serve := func(port int, tlsCert *tls.Certificate) {
		ln, err := net.Listen("tcp", netip.AddrPortFrom(addr, uint16(port)).String())
		if err != nil {
			t.Fatal(err)
		}
		if tlsCert != nil {
			ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{*tlsCert}})
		}
		srv := &http.Server{Handler: mux, ErrorLog: log.New(io.Discard, "", 0)}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	serve(80, nil)
	serve(443, &cert)
	readEach(t, netip.AddrPortFrom(addr, 53), func(net.PacketConn, []byte, net.Addr) { u.udp.Add(1) })
	return u
}

// fakeAnthropicText is what the fake Messages API answers.
const fakeAnthropicText = "Hello from the fake Anthropic API in bottle's e2e test."

// fakeAnthropicMessage answers like the Anthropic Messages API: a JSON message, or with
// stream=true the server-sent events of one, the text split over several deltas.
func fakeAnthropicMessage(w http.ResponseWriter, model string, stream bool) {
	var deltas []map[string]string
	for _, wd := range strings.SplitAfter(fakeAnthropicText, " ") {
		deltas = append(deltas, map[string]string{"type": "text_delta", "text": wd})
	}
	fakeAnthropicReply(w, model, stream, "end_turn", map[string]any{"type": "text", "text": fakeAnthropicText},
		map[string]any{"type": "text", "text": ""}, deltas)
}

// fakeToolMarker in a prompt makes the fake Messages API answer with fakeToolUse (until
// the conversation holds its result); fakeToolFile is the file that tool call writes.
const (
	fakeToolMarker = "BOTTLE-E2E-WRITE-A-FILE"
	fakeToolFile   = "/workspace/written-by-claude.txt"
	fakeToolText   = "Claude Code wrote this in bottle's e2e test.\n"
)

// fakeAnthropicToolUse answers with one call of Claude Code's Write tool (fakeToolFile).
func fakeAnthropicToolUse(w http.ResponseWriter, model string, stream bool) {
	input := map[string]string{"file_path": fakeToolFile, "content": fakeToolText}
	args, _ := json.Marshal(input)
	fakeAnthropicReply(w, model, stream, "tool_use", map[string]any{"type": "tool_use", "id": "toolu_e2e", "name": "Write", "input": input},
		map[string]any{"type": "tool_use", "id": "toolu_e2e", "name": "Write", "input": map[string]any{}},
		[]map[string]string{{"type": "input_json_delta", "partial_json": string(args)}})
}

// fakeAnthropicReply answers with one content block: block as JSON, or with stream=true
// as server-sent events that open it as start and fill it with deltas.
func fakeAnthropicReply(w http.ResponseWriter, model string, stream bool, stop string, block, start map[string]any, deltas []map[string]string) {
	usage := map[string]int{"input_tokens": 12, "output_tokens": 12}
	if !stream {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"id": "msg_e2e", "type": "message", "role": "assistant", "model": model,
			"content": []map[string]any{block}, "stop_reason": stop, "stop_sequence": nil, "usage": usage,
		})
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	send := func(event string, data any) {
		b, _ := json.Marshal(data)
		fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
		w.(http.Flusher).Flush()
	}
	send("message_start", map[string]any{"type": "message_start", "message": map[string]any{
		"id": "msg_e2e", "type": "message", "role": "assistant", "model": model, "content": []any{},
		"stop_reason": nil, "stop_sequence": nil, "usage": map[string]int{"input_tokens": 12, "output_tokens": 1}}})
	send("content_block_start", map[string]any{"type": "content_block_start", "index": 0, "content_block": start})
	for _, d := range deltas {
		send("content_block_delta", map[string]any{"type": "content_block_delta", "index": 0, "delta": d})
		time.Sleep(20 * time.Millisecond)
	}
	send("content_block_stop", map[string]any{"type": "content_block_stop", "index": 0})
	send("message_delta", map[string]any{"type": "message_delta", "delta": map[string]any{"stop_reason": stop, "stop_sequence": nil}, "usage": map[string]int{"output_tokens": len(deltas)}})
	send("message_stop", map[string]any{"type": "message_stop"})
}

// serveDNS answers A queries for names under .test with answer, and counts nothing else.
func serveDNS(t *testing.T, on, answer netip.Addr) {
	t.Helper()
	readEach(t, netip.AddrPortFrom(on, 53), func(pc net.PacketConn, msg []byte, from net.Addr) {
		var p dnsmessage.Parser
		h, err := p.Start(msg)
		if err != nil {
			return
		}
		q, err := p.Question()
		if err != nil {
			return
		}
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true})
		b.EnableCompression()
		b.StartQuestions()
		b.Question(q)
		b.StartAnswers()
		if q.Type == dnsmessage.TypeA && strings.HasSuffix(q.Name.String(), ".test.") {
			b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: answer.As4()})
		}
		if msg, err := b.Finish(); err == nil {
			pc.WriteTo(msg, from)
		}
	})
}

// testCA makes a CA and a server certificate for names, signed by it.
func testCA(t testing.TB, names ...string) ([]byte, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bottle e2e test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// watchCmdlines scans every host process's command line until stop is called and
// returns whether secret was ever seen.
func watchCmdlines(secret string) (stop func() bool) {
	var found atomic.Bool
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
			for _, p := range paths {
				if data, err := os.ReadFile(p); err == nil && bytes.Contains(data, []byte(secret)) {
					found.Store(true)
				}
			}
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return func() bool { close(done); <-finished; return found.Load() }
}

func TestEgressOnlyThroughFilterAndEgressProxy(t *testing.T) {
	e := newEnv(t)
	up := newUpstream(t)
	manifest := fmt.Sprintf(`[agents.egress]
bottle = "b"
image = %q
command = ["/bin/sleep", "600"]

[bottles.b]
runtime = "runsc-runc"
filter = "builtin"
allowlist = ["api.allowed.test"]

[[bottles.b.egress_proxy.routes]]
host = "api.route.test"
token_ref = "E2E_ROUTE_TOKEN"
role = "claude_code_oauth"
`, testImage)
	if err := os.WriteFile(e.manifest, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	token := fmt.Sprintf("sk-e2e-real-%d-%d", time.Now().UnixNano(), os.Getpid())
	stopWatch := watchCmdlines(token)
	// The sidecars resolve names through the test's DNS server, and the route's host also
	// through an extra hosts entry.
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+dnsAddr.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"start", "--detach", "--ca-file", up.caFile, "--resolv-conf", resolv, "--add-host", "api.route.test:" + upstreamAddr.Addr().String()}
	out, errOut, code := e.bottle([]string{"E2E_ROUTE_TOKEN=" + token}, append(args, "egress")...)
	if code != 0 {
		t.Fatalf("start: exit %d: %s %s", code, out, errOut)
	}
	id := e.identityOf("egress")
	probe := func(args ...string) string { t.Helper(); return e.probe(id, args...) }
	expect := func(got, prefix, what string) { t.Helper(); expectPrefix(t, got, prefix, what) }

	// Through the filter: allowlisted yes, others no, SNI must match the CONNECT host.
	expect(probe("get", "http://filter:8888", "http://api.allowed.test/hello"), "STATUS 200 UPSTREAM-ALLOWED host=api.allowed.test", "allowlisted host via filter")
	expect(probe("get", "http://filter:8888", "http://api.denied.test/hello"), "STATUS 403", "non-allowlisted host via filter")
	expect(probe("connect", "filter:8888", "api.allowed.test:443", "api.allowed.test"), "TLSOK", "CONNECT with matching SNI (control)")
	expect(probe("connect", "filter:8888", "api.allowed.test:443", "evil.example"), "TLSFAIL", "CONNECT whose SNI differs from its host")

	// Through the egress-proxy: the upstream sees the real token, never the agent's.
	expect(probe("post", "http://egress-proxy:9000/api.route.test/v1/messages"), "STATUS 200 UPSTREAM-OK", "route via egress-proxy")
	seen := up.headers()
	if len(seen) != 1 {
		t.Fatalf("upstream saw %d requests, want 1", len(seen))
	}
	if got := seen[0].Get("Authorization"); got != "Bearer "+token {
		t.Errorf("upstream Authorization %q, want the real token", got)
	}
	for _, h := range []string{"X-Api-Key", "Cookie"} {
		if v := seen[0].Get(h); v != "" {
			t.Errorf("agent's %s reached the upstream: %q", h, v)
		}
	}
	// Streaming: 50 events 100 ms apart arrive as they are sent.
	sse := probe("sse", "http://egress-proxy:9000/api.route.test/v1/stream")
	var n, first, last int
	if _, err := fmt.Sscanf(sse, "SSE events=%d first_ms=%d last_ms=%d", &n, &first, &last); err != nil || n != 50 {
		t.Fatalf("sse: %q (%v)", sse, err)
	}
	if last-first < 3000 {
		t.Errorf("SSE buffered: first event at %d ms, last at %d ms", first, last)
	}

	// The real token is nowhere in the agent; the scanner finds what is there. The secret
	// goes to the probe on stdin: on argv it would be on a host command line.
	scan := func(secret string) string {
		t.Helper()
		cmd := e.command(nil, "exec", id, "--", "/usr/local/bin/probe", "scan")
		cmd.Stdin = strings.NewReader(secret + "\n")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("probe scan: %v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	expect(scan(plan.ClaudePlaceholderToken), "FOUND /proc/1/environ", "scanner control (the placeholder is in the agent's env)")
	expect(scan(token), "CLEAN", "real token in the agent")

	// Direct ways out all fail.
	upIP := upstreamAddr.Addr().String()
	expect(probe("tcp", upIP+":443"), "BLOCKED", "TCP to the upstream's IP")
	expect(probe("tcp", upIP+":80"), "BLOCKED", "TCP to the upstream's IP")
	expect(probe("dns", "api.allowed.test"), "NORESOLVE", "DNS in the agent")
	probe("udp", upIP+":53")
	if out, err := e.command(nil, "exec", id, "--", "/bin/ping", "-c", "2", "-W", "2", upIP).CombinedOutput(); err == nil {
		t.Errorf("ICMP to the upstream got through: %s", out)
	}
	port := hostListener(t, "[::]:0", "BANNER")
	internal, egress, err := e.networksOf(id)
	if err != nil {
		t.Fatal(err)
	}
	expect(probe("tcp", fmt.Sprintf("%s:%d", egress.Gateway(), port)), "BLOCKED", "TCP to the egress gateway")
	if ll := linkLocal(t, internal.Bridge); ll != "" {
		expect(probe("tcp", fmt.Sprintf("[%s%%eth0]:%d", ll, port)), "BLOCKED", "IPv6 to the host's link-local address on the bottle bridge")
	} else {
		t.Logf("bridge %s has no IPv6 link-local address: IPv6 to the host has no target", internal.Bridge)
	}
	expect(probe("tcp", "[::1]:8888"), "BLOCKED", "IPv6 loopback inside the agent has no filter")
	expect(probe("tcp", "filter:8888"), "REACHED", "the agent's own filter (control)")
	time.Sleep(300 * time.Millisecond)
	if n := up.udp.Load(); n != 0 {
		t.Errorf("%d UDP datagrams from the agent reached the upstream", n)
	}

	// The refusal is in the filter's log, one JSON line per decision.
	logs := e.must("logs", id, "--role", "filter")
	if !strings.Contains(logs, `"host":"api.denied.test"`) || !strings.Contains(logs, `"decision":"deny"`) {
		t.Errorf("filter log lacks the refusal:\n%s", logs)
	}
	if strings.Contains(logs+e.must("logs", id, "--role", "egress-proxy"), token) {
		t.Error("the token is in a sidecar log")
	}
	if stopWatch() {
		t.Error("the token appeared on a host process's command line")
	}
	e.must("rm", "--force", id)
	e.assertNothingLeft(id)
}

// networksOf returns a running bottle's networks from its recorded slot.
func (e *env) networksOf(id string) (internal, egress netns.Network, err error) {
	n := e.netns()
	slot, err := n.SlotOf(id, netip.MustParsePrefix(pool))
	if err != nil {
		return internal, egress, err
	}
	return n.BottleNetworks(id, slot, netip.MustParsePrefix(pool))
}

// linkLocal returns the IPv6 link-local address of a host interface, or "".
func linkLocal(t *testing.T, dev string) string {
	out, _ := exec.Command("ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link").Output()
	f := strings.Fields(string(out))
	for i, x := range f {
		if x == "inet6" && i+1 < len(f) {
			return strings.Split(f[i+1], "/")[0]
		}
	}
	return ""
}
