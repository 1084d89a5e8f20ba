package e2e

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The benchmarks' fake internet: an HTTPS server on a bridge the benchmark creates
// (TEST-NET-3, like the egress tests' upstream; the two never exist at once, tests run
// one after another). Both route hosts resolve to it through --add-host.
var benchUpstreamAddr = netip.MustParsePrefix("198.51.100.1/24")

const (
	benchAllowedHost = "api.allowed.test" // through the filter
	benchRouteHost   = "api.route.test"   // through the egress-proxy
	benchTokenRef    = "E2E_BENCH_TOKEN"
)

// benchUpstream starts the benchmarks' server on port 443 of a test bridge and returns
// the CA file the egress-proxy needs. It serves /bytes/N (N bytes, with a length),
// /small (a few bytes) and /sse (a first event at once, the stream ending 100 ms later).
func benchUpstream(b testing.TB) (caFile string) {
	b.Helper()
	testBridge(b, "btbench-up", benchUpstreamAddr)
	caPEM, cert := testCA(b, benchAllowedHost, benchRouteHost)
	caFile = b.TempDir() + "/ca.pem"
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	mux := http.NewServeMux()
	mux.HandleFunc("/bytes/{n}", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.PathValue("n"))
		if err != nil || n < 0 {
			http.Error(w, "bad length", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(n))
		for n > 0 {
			k := min(n, len(chunk))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	mux.HandleFunc("/small", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "event: message\ndata: {\"n\":0}\n\n")
		w.(http.Flusher).Flush()
		time.Sleep(100 * time.Millisecond)
		io.WriteString(w, "event: message\ndata: {\"n\":1}\n\n")
	})
	ln, err := net.Listen("tcp", netip.AddrPortFrom(benchUpstreamAddr.Addr(), 443).String())
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}}))
	b.Cleanup(func() { srv.Close() })
	return caFile
}

// writeBenchManifest writes the real shape of a Claude bottle: the builtin filter with an
// allowlist and an egress-proxy route (to the benchmark's server, with a dummy token).
func (e *env) writeBenchManifest(agent string) {
	e.t.Helper()
	m := fmt.Sprintf(`[agents.%s]
bottle = "b"
image = %q
command = ["/bin/sleep", "3600"]

[bottles.b]
runtime = "runsc-runc"
filter = "builtin"
allowlist = [%q]

[[bottles.b.egress_proxy.routes]]
host = %q
token_ref = %q
role = "claude_code_oauth"
`, agent, testImage, benchAllowedHost, benchRouteHost, benchTokenRef)
	if err := os.WriteFile(e.manifest, []byte(m), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// benchStart returns `bottle start FLAGS AGENT [-- COMMAND...]` of the bench manifest,
// with the upstream's CA and host entries, and the dummy token in its environment.
func (e *env) benchStart(caFile, agent string, flags []string, command ...string) *exec.Cmd {
	up := benchUpstreamAddr.Addr().String()
	args := append([]string{"start", "--ca-file", caFile, "--add-host", benchAllowedHost + ":" + up, "--add-host", benchRouteHost + ":" + up}, flags...)
	args = append(args, agent)
	if len(command) > 0 {
		args = append(append(args, "--"), command...)
	}
	return e.command([]string{benchTokenRef + "=dummy-bench-token"}, args...)
}

// ctrArgs are the ctr global flags and `run` flags of a bare runsc container in the test's
// namespace, under the same runtime (containerd's runc shim driving runsc) and runc root.
func (e *env) ctrRunArgs(b testing.TB) []string {
	b.Helper()
	runsc, err := exec.LookPath("runsc")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := exec.LookPath("ctr"); err != nil {
		b.Fatalf("ctr not on PATH (scripts/setup-host.sh installs it): %v", err)
	}
	args := []string{"-a", e.address, "-n", e.namespace, "run", "--runc-binary", runsc}
	if root := os.Getenv("BOTTLE_TEST_RUNC_ROOT"); root != "" {
		args = append(args, "--runc-root", root)
	}
	return args
}

// run runs cmd, failing the benchmark with its output unless it exits 0.
func run(b testing.TB, cmd *exec.Cmd) string {
	b.Helper()
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	return string(out)
}

// warmupOnly reports whether this call is the single iteration `go test` runs before the
// requested -benchtime Nx (N > 1): the benchmark then only sets up and warms up, so that
// it measures and prints once.
func warmupOnly(b *testing.B) bool {
	v := flag.Lookup("test.benchtime").Value.String()
	n, err := strconv.Atoi(strings.TrimSuffix(v, "x"))
	return b.N == 1 && strings.HasSuffix(v, "x") && err == nil && n > 1
}

// timed returns how long f took.
func timed(f func()) time.Duration {
	t0 := time.Now()
	f()
	return time.Since(t0)
}

// BenchmarkStart measures, alternating in one run (the order rotates each round), the
// wall time of
//   - a bare runsc container: `ctr run --rm IMAGE ID /bin/true`, no network;
//   - `bottle start --rm AGENT -- /bin/true` of a full bottle (agent, filter, egress-proxy
//     route, both networks, firewall) including its removal;
//   - an attached `bottle start AGENT -- /bin/true` until it exits (its removal afterwards
//     is not timed);
//
// and prints min/median/max of each and the ratio of the bottle's medians to the bare
// median. `make bench-start` runs it.
func BenchmarkStart(b *testing.B) {
	e := newEnv(b)
	caFile := benchUpstream(b)
	e.writeBenchManifest("bench")
	ctrArgs := e.ctrRunArgs(b)
	bare := func(i int) {
		run(b, exec.Command("ctr", append(ctrArgs, "--rm", testImage, fmt.Sprintf("bench-bare-%d-%d", os.Getpid(), i+1), "/bin/true")...))
	}
	rmStart := func() {
		cmd := e.benchStart(caFile, "bench", []string{"--rm"}, "/bin/true")
		trace := os.Getenv("BOTTLE_BENCH_TRACE") // a file that collects the debug logs of the starts
		if trace != "" {
			cmd.Args = slices.Insert(cmd.Args, 1, "--debug")
		}
		out := run(b, cmd)
		if trace != "" {
			f, err := os.OpenFile(trace, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			fmt.Fprintf(f, "--- start --rm\n%s", out)
		}
	}
	// The start self-test's cost: the same start without it.
	rmNoSelfTest := func() { run(b, e.benchStart(caFile, "bench", []string{"--rm", "--no-self-test"}, "/bin/true")) }
	attached := func() {
		run(b, e.benchStart(caFile, "bench", nil, "/bin/true"))
	}
	// Warm up every path (sidecar image creation, page cache).
	bare(-1)
	rmStart()
	attached()
	e.must("rm", e.identityOf("bench"))
	if warmupOnly(b) {
		return
	}

	kinds := []string{"bare ctr run --rm (runsc)", "bottle start --rm (incl. removal)", "bottle start, attached (until exit)", "bottle start --rm --no-self-test"}
	times := make([][]time.Duration, len(kinds))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k := range kinds {
			k = (k + i) % len(kinds)
			switch k {
			case 0:
				times[k] = append(times[k], timed(func() { bare(i) }))
			case 1:
				times[k] = append(times[k], timed(rmStart))
			case 2:
				times[k] = append(times[k], timed(attached))
				b.StopTimer()
				e.must("rm", e.identityOf("bench"))
				b.StartTimer()
			case 3:
				times[k] = append(times[k], timed(rmNoSelfTest))
			}
		}
	}
	b.StopTimer()
	base := median(times[0])
	fmt.Printf("\nbench-start: %d alternating rounds; bottle = agent + builtin filter + egress-proxy route, runsc through containerd's runc shim\n", b.N)
	fmt.Printf("%-38s %8s %8s %8s %14s\n", "what", "min s", "median s", "max s", "ratio to bare")
	for k, name := range kinds {
		m := median(times[k])
		fmt.Printf("%-38s %8.3f %8.3f %8.3f %13.2fx\n", name, slices.Min(times[k]).Seconds(), m.Seconds(), slices.Max(times[k]).Seconds(), m.Seconds()/base.Seconds())
	}
	fmt.Println("target of issue 13: start --rm <= 1.8x bare")
	fmt.Printf("start self-test (issue 15): start --rm median %+.0f ms with it than without (target <= 100 ms)\n",
		float64(median(times[1])-median(times[3]))/float64(time.Millisecond))
	b.ReportMetric(median(times[1]).Seconds()/base.Seconds(), "rm-ratio")
	b.ReportMetric(median(times[2]).Seconds()/base.Seconds(), "attached-ratio")
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
