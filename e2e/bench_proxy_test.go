package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// benchDirectAddr is the bare container's address on the benchmark's bridge.
var benchDirectAddr = netip.MustParsePrefix("198.51.100.10/24")

// benchMetrics are the probe's measurements (probe bench), in its output order;
// higher is better for MB/s, lower for the latencies.
var benchMetrics = []struct{ key, what string }{
	{"big_MBps", "100 MiB download, MB/s"},
	{"seq_MBps", "1 MiB x 20 sequential, MB/s"},
	{"conc_MBps", "50 concurrent x 1 MiB, MB/s"},
	{"small_p50_ms", "small request p50, ms"},
	{"small_p99_ms", "small request p99, ms"},
	{"newconn_p50_ms", "new connection + request p50, ms"},
	{"sse_first_p50_ms", "SSE first event p50, ms"},
}

// BenchmarkProxy measures the data path from inside gVisor to a server on a test bridge,
// over HTTPS, on three paths alternating in each round (the order rotates):
//   - direct: a bare runsc container (`ctr run --rm`) in a test netns whose veth is on the
//     server's bridge (TLS from the sandbox straight to the server);
//   - filter: the agent of a bottle, CONNECT through its builtin filter (TLS from the agent);
//   - egress-proxy: the same agent, plain HTTP to its egress-proxy route (TLS from the
//     egress-proxy sandbox).
//
// The probe (e2e/probe bench) does the measuring inside the sandbox. It prints medians and,
// per path, the median over rounds of the ratio to direct (MB/s) or the added time (ms).
// `make bench-proxy` runs it.
func BenchmarkProxy(b *testing.B) {
	e := newEnv(b)
	caFile := benchUpstream(b)
	e.writeBenchManifest("bench")
	run(b, e.benchStart(caFile, "bench", []string{"--detach"}))
	id := e.identityOf("bench")
	ctrArgs := e.ctrRunArgs(b)
	up := benchUpstreamAddr.Addr().String()
	if warmupOnly(b) {
		e.must("rm", "--force", id)
		return
	}

	direct := func(i int) string {
		// runsc takes the netns's addresses at sandbox creation: one fresh netns per run.
		ns := fmt.Sprintf("btbench-%d", os.Getpid())
		benchNetns(b, ns, "btbench-up", "btbench-h", benchDirectAddr)
		defer func() {
			exec.Command("ip", "netns", "del", ns).Run()
			exec.Command("ip", "link", "del", "btbench-h").Run()
		}()
		args := append(ctrArgs, "--rm", "--with-ns", "network:/var/run/netns/"+ns, testImage, fmt.Sprintf("bench-direct-%d-%d", os.Getpid(), i),
			"/usr/local/bin/probe", "bench", "https://"+benchAllowedHost, "-", up+":443")
		return run(b, exec.Command("ctr", args...))
	}
	inAgent := func(base, proxy string) string {
		return e.must("exec", id, "--", "/usr/local/bin/probe", "bench", base, proxy, "-")
	}
	paths := []string{"direct", "filter", "egress-proxy"}
	res := map[string][]map[string]float64{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k := range paths {
			p := paths[(k+i)%len(paths)]
			var out string
			switch p {
			case "direct":
				out = direct(i)
			case "filter":
				out = inAgent("https://"+benchAllowedHost, "http://filter:8888")
			case "egress-proxy":
				out = inAgent("http://egress-proxy:9000/"+benchRouteHost, "-")
			}
			res[p] = append(res[p], parseBench(b, out))
		}
	}
	b.StopTimer()

	fmt.Printf("\nbench-proxy: %d alternating rounds, client inside gVisor, HTTPS server on a test bridge; medians, and per path the median over rounds of the ratio to direct (MB/s) or of the added ms\n", b.N)
	fmt.Printf("%-34s %10s %10s %10s %10s %10s\n", "measure", "direct", "filter", "vs direct", "egress", "vs direct")
	// Each round's value is set against the same round's direct one: a burst of load on
	// the shared machine hits a path and its baseline alike.
	ratio := func(v, d float64) float64 { return v / d }
	added := func(v, d float64) float64 { return v - d }
	for _, m := range benchMetrics {
		row := fmt.Sprintf("%-34s %10.2f", m.what, medianF(column(res, "direct", m.key, nil)))
		for _, p := range paths[1:] {
			v := medianF(column(res, p, m.key, nil))
			if strings.HasSuffix(m.key, "MBps") {
				row += fmt.Sprintf(" %10.2f %9.2fx", v, medianF(column(res, p, m.key, ratio)))
			} else {
				row += fmt.Sprintf(" %10.2f %+8.2fms", v, medianF(column(res, p, m.key, added)))
			}
		}
		fmt.Println(row)
	}
	for _, p := range paths[1:] {
		b.ReportMetric(medianF(column(res, p, "big_MBps", ratio)), p+"-tput-ratio")
		b.ReportMetric(medianF(column(res, p, "small_p50_ms", added)), p+"-added-ms")
	}
	fmt.Println("targets of issue 13: throughput >= 0.7x (filter) / >= 0.6x (egress-proxy) of direct; added small-request p50 <= 0.7 ms")
	e.must("rm", "--force", id)
}

// column returns each round's value of key on path; with rel, rel(value, that round's
// direct value).
func column(res map[string][]map[string]float64, path, key string, rel func(v, direct float64) float64) []float64 {
	var out []float64
	for i, r := range res[path] {
		v := r[key]
		if rel != nil {
			v = rel(v, res["direct"][i][key])
		}
		out = append(out, v)
	}
	return out
}

func medianF(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// parseBench reads the probe's "BENCH key=value ..." line.
func parseBench(b testing.TB, out string) map[string]float64 {
	b.Helper()
	for line := range strings.Lines(out) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "BENCH ")
		if !ok {
			continue
		}
		m := map[string]float64{}
		for _, f := range strings.Fields(rest) {
			k, v, _ := strings.Cut(f, "=")
			x, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatalf("probe bench: %q: %v", f, err)
			}
			m[k] = x
		}
		return m
	}
	b.Fatalf("probe bench printed no BENCH line:\n%s", out)
	return nil
}

// benchNetns creates netns ns with a veth whose host end (hostDev) is on bridge and whose
// other end (eth0) has addr: a container in it reaches only that bridge.
func benchNetns(b testing.TB, ns, bridge, hostDev string, addr netip.Prefix) {
	b.Helper()
	exec.Command("ip", "netns", "del", ns).Run()
	exec.Command("ip", "link", "del", hostDev).Run()
	for _, args := range [][]string{
		{"netns", "add", ns},
		{"link", "add", hostDev, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"link", "set", hostDev, "master", bridge, "up"},
		{"-n", ns, "addr", "add", addr.String(), "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "link", "set", "lo", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			b.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
}
