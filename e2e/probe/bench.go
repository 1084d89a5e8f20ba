package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// bench measures, from where the probe runs (inside a sandbox), the data path to the
// benchmark's server at base (which serves /bytes/N, /small and /sse): through the HTTP
// proxy proxyURL ("-": none) and, when dial is not "-", with every connection dialed to
// that address (the direct path has no DNS). It prints one line "BENCH key=value ...".
func bench(base, proxyURL, dial string) {
	newTransport := func(keepAlive bool) *http.Transport {
		tr := &http.Transport{
			// The benchmark's server has a test certificate; the TLS cost is what counts.
			TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
			DisableCompression:  true,
			DisableKeepAlives:   !keepAlive,
			MaxIdleConnsPerHost: 64,
		}
		if proxyURL != "-" {
			u, err := url.Parse(proxyURL)
			if err != nil {
				fail("bench: proxy: " + err.Error())
			}
			tr.Proxy = http.ProxyURL(u)
		}
		if dial != "-" {
			d := &net.Dialer{}
			tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
				return d.DialContext(ctx, network, dial)
			}
		}
		return tr
	}
	keep := &http.Client{Transport: newTransport(true), Timeout: 2 * time.Minute}
	fresh := &http.Client{Transport: newTransport(false), Timeout: 30 * time.Second}
	get := func(c *http.Client, path string) int64 {
		resp, err := c.Get(base + path)
		if err != nil {
			fail("bench: GET " + path + ": " + err.Error())
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil || resp.StatusCode != 200 {
			fail(fmt.Sprintf("bench: GET %s: status %d after %d bytes: %v", path, resp.StatusCode, n, err))
		}
		return n
	}
	timed := func(f func()) time.Duration { t0 := time.Now(); f(); return time.Since(t0) }
	mbps := func(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() / 1e6 }
	const mib = 1 << 20
	var out []string
	put := func(k string, v float64) { out = append(out, fmt.Sprintf("%s=%.3f", k, v)) }

	get(keep, "/small") // warm: connection, proxy's upstream connection, TLS session
	var n int64
	put("big_MBps", mbps(100*mib, timed(func() { n = get(keep, fmt.Sprintf("/bytes/%d", 100*mib)) })))
	if n != 100*mib {
		fail(fmt.Sprintf("bench: 100 MiB download got %d bytes", n))
	}
	put("seq_MBps", mbps(20*mib, timed(func() {
		for range 20 {
			get(keep, fmt.Sprintf("/bytes/%d", mib))
		}
	})))
	put("conc_MBps", mbps(50*mib, timed(func() {
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() { get(keep, fmt.Sprintf("/bytes/%d", mib)) })
		}
		wg.Wait()
	})))
	small := make([]time.Duration, 300)
	for i := range small {
		small[i] = timed(func() { get(keep, "/small") })
	}
	put("small_p50_ms", ms(quantile(small, 0.50)))
	put("small_p99_ms", ms(quantile(small, 0.99)))
	conns := make([]time.Duration, 40)
	for i := range conns {
		conns[i] = timed(func() { get(fresh, "/small") })
	}
	put("newconn_p50_ms", ms(quantile(conns, 0.50)))
	sse := make([]time.Duration, 10)
	for i := range sse {
		sse[i] = firstEvent(keep, base+"/sse")
	}
	put("sse_first_p50_ms", ms(quantile(sse, 0.50)))
	fmt.Println("BENCH " + strings.Join(out, " "))
}

// firstEvent returns how long after the request the first "data:" line of u arrived.
func firstEvent(c *http.Client, u string) time.Duration {
	t0 := time.Now()
	resp, err := c.Get(u)
	if err != nil {
		fail("bench: sse: " + err.Error())
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var first time.Duration
	for sc.Scan() {
		if first == 0 && strings.HasPrefix(sc.Text(), "data:") {
			first = time.Since(t0)
		}
	}
	if first == 0 {
		fail("bench: sse: no event")
	}
	return first
}

func quantile(d []time.Duration, q float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1)+0.5)]
}

func ms(d time.Duration) float64 { return d.Seconds() * 1000 }
