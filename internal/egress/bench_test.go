package egress

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const benchBodySize = 50 << 20

// benchToken is as long as a Claude OAuth token.
var benchToken = "sk-ant-oat01-" + strings.Repeat("Ab3_x-Q9", 12)

// benchEnv is one loopback HTTPS upstream reachable three ways: directly, through the
// egress-proxy, and through a filter CONNECT tunnel. All clients verify TLS.
type benchEnv struct {
	paths map[string]struct {
		client *http.Client
		base   string
	}
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	ca := newTestCA(b)
	// Text like a model's output, so the egress-proxy's credential scan does real work.
	words := strings.Fields(`{"type":"content_block_delta", "delta":{"text": Sure, here is the
		sk-ant code: func main() { fmt.Println("hello") } and a test for it. The function
		returns an error when the token is empty; we wrap it with %w so callers can check.`)
	rng := rand.New(rand.NewPCG(1, 2))
	var text bytes.Buffer
	for text.Len() < 1<<20 {
		text.WriteString(words[rng.IntN(len(words))] + " ")
	}
	chunk := text.Bytes()[:1<<20]
	up := newTLSUpstream(b, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/mib" {
			w.Header().Set("Content-Length", strconv.Itoa(len(chunk)))
			_, _ = w.Write(chunk)
			return
		}
		if r.URL.Path == "/big" {
			w.Header().Set("Content-Length", strconv.Itoa(benchBodySize))
			for i := 0; i < benchBodySize/len(chunk); i++ {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
			return
		}
		_, _ = io.WriteString(w, "ok")
	}), "api.example.test")
	logger := slog.New(slog.NewJSONHandler(io.Discard, nil)) // realistic: records are encoded

	proxyAddr := startProxy(b, ProxyConfig{Routes: []Route{{Host: "api.example.test", TokenRef: "T", Upstream: up.URL, CAFile: ca.file(b)}}},
		map[string]string{"T": benchToken}, logger)
	var dials atomic.Int64
	filterAddr := startFilter(b, FilterConfig{
		Allowlist: []string{"api.example.test"},
		Ports:     []uint16{up.port},
		Internal:  []string{"10.0.0.0/8"},
		Resolver:  mapResolver(map[string][]string{"api.example.test": {"127.0.0.1"}}),
		Dial:      loopbackOnlyDial(b, &dials),
	}, logger)

	tlsTransport := func() *http.Transport {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.Proxy = nil
		t.TLSClientConfig.RootCAs = ca.pool
		t.ForceAttemptHTTP2 = false
		t.DisableCompression = true
		return t
	}
	filterTransport := tlsTransport()
	filterTransport.Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: filterAddr})
	plain := &http.Transport{DisableCompression: true}
	for _, tr := range []*http.Transport{filterTransport, plain} {
		b.Cleanup(tr.CloseIdleConnections)
	}
	direct := tlsTransport()
	b.Cleanup(direct.CloseIdleConnections)
	env := &benchEnv{paths: map[string]struct {
		client *http.Client
		base   string
	}{
		"direct":       {&http.Client{Transport: direct}, up.URL},
		"egress-proxy": {&http.Client{Transport: plain}, "http://" + proxyAddr + "/api.example.test"},
		"filter":       {&http.Client{Transport: filterTransport}, fmt.Sprintf("https://api.example.test:%d", up.port)},
	}}
	return env
}

var benchPaths = []string{"direct", "egress-proxy", "filter"}

func fetch(b *testing.B, c *http.Client, u string) int64 {
	resp, err := c.Get(u)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || resp.StatusCode != 200 {
		b.Fatalf("GET %s: %d %v", u, resp.StatusCode, err)
	}
	return n
}

// BenchmarkThroughput downloads a 50 MB body; the MB/s metric compares the paths.
func BenchmarkThroughput(b *testing.B) { benchDownloads(b, "/big", benchBodySize) }

// BenchmarkMiBBodies downloads 1 MiB bodies of known length one after another on a
// kept-alive connection (bench-proxy's "1 MiB x 20" inside gVisor, on loopback).
func BenchmarkMiBBodies(b *testing.B) { benchDownloads(b, "/mib", 1<<20) }

// benchDownloads fetches path (size bytes) b.N times on each path and reports MB/s.
func benchDownloads(b *testing.B, path string, size int64) {
	env := newBenchEnv(b)
	for _, name := range benchPaths {
		p := env.paths[name]
		b.Run(name, func(b *testing.B) {
			fetch(b, p.client, p.base+"/small") // warm the connection
			var total int64
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if n := fetch(b, p.client, p.base+path); n != size {
					b.Fatalf("got %d bytes, want %d", n, size)
				} else {
					total += n
				}
			}
			b.ReportMetric(float64(total)/1e6/b.Elapsed().Seconds(), "MB/s")
		})
	}
}

// BenchmarkSmallRequest measures keep-alive round trips of a tiny response; p50-ns is
// the median latency of one request.
func BenchmarkSmallRequest(b *testing.B) {
	env := newBenchEnv(b)
	for _, name := range benchPaths {
		p := env.paths[name]
		b.Run(name, func(b *testing.B) {
			fetch(b, p.client, p.base+"/small")
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				fetch(b, p.client, p.base+"/small")
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
		})
	}
}
