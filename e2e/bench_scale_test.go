package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// benchScalePool is wide enough for 16 bottles (a slot is two /24s): the harness's
// test pool holds 8.
const benchScalePool = "10.214.0.0/18"

// BenchmarkScale starts N = 1, 4, 16 bottles at once (detached; agent + builtin filter +
// egress-proxy route) and prints the time until all run, the memory (PSS) of each idle
// bottle (summed over its shims, sandboxes, gofers and their children), and the times of
// `ps` and of stopping and removing all N at once. `make bench-scale` runs it; with
// -benchtime Kx each N runs K times and the medians are printed.
func BenchmarkScale(b *testing.B) {
	e := newEnv(b)
	caFile := benchUpstream(b)
	e.writeBenchManifest("bench")
	// Warm up (sidecar image creation, page cache).
	run(b, e.benchStart(caFile, "bench", "--rm", "--", "/bin/true"))

	type result struct{ start, ps, stop, rm time.Duration }
	results := map[int][]result{}
	mem := map[int][]bottleMem{}
	ns := []int{1, 4, 16}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, n := range ns {
			var r result
			r.start = timed(func() {
				parallel(n, func(int) {
					run(b, e.benchStart(caFile, "bench", "--detach", "--pool", benchScalePool, "--", "/bin/sleep", "3600"))
				})
			})
			var list []psEntry
			r.ps = timed(func() { list = e.ps() })
			var ids []string
			for _, p := range list {
				if p.Agent == "bench" && p.Containers["agent"] == "running" {
					ids = append(ids, p.Identity)
				}
			}
			if len(ids) != n {
				b.Fatalf("%d of %d bottles running: %+v", len(ids), n, list)
			}
			b.StopTimer()
			time.Sleep(2 * time.Second) // idle: boot work done
			for _, id := range ids {
				mem[n] = append(mem[n], bottleMemory(b, id))
			}
			b.StartTimer()
			r.stop = timed(func() { parallel(n, func(k int) { e.must("stop", ids[k]) }) })
			r.rm = timed(func() { parallel(n, func(k int) { e.must("rm", ids[k]) }) })
			results[n] = append(results[n], r)
			b.StopTimer()
			e.assertNothingLeft(ids...)
			b.StartTimer()
		}
	}
	b.StopTimer()

	fmt.Printf("\nbench-scale: N bottles (agent + builtin filter + egress-proxy route) at once, %d run(s) each, medians; PSS of each idle bottle in MB (1e6 bytes)\n", b.N)
	fmt.Printf("%4s %12s %8s %12s %10s %14s %8s %9s %8s %8s %8s\n", "N", "all running", "ps", "stop all", "rm all", "PSS/bottle", "shims", "sandboxes", "stubs", "gofers", "other")
	for _, n := range ns {
		col := func(f func(result) time.Duration) float64 {
			var d []time.Duration
			for _, r := range results[n] {
				d = append(d, f(r))
			}
			return median(d).Seconds()
		}
		mcol := func(f func(bottleMem) float64) float64 {
			var v []float64
			for _, m := range mem[n] {
				v = append(v, f(m))
			}
			return medianF(v)
		}
		totals := make([]float64, 0, len(mem[n]))
		for _, m := range mem[n] {
			totals = append(totals, m.total)
		}
		fmt.Printf("%4d %11.2fs %7.2fs %11.2fs %9.2fs %6.1f (%.0f-%.0f) %8.1f %9.1f %8.1f %8.1f %8.1f\n", n,
			col(func(r result) time.Duration { return r.start }), col(func(r result) time.Duration { return r.ps }),
			col(func(r result) time.Duration { return r.stop }), col(func(r result) time.Duration { return r.rm }),
			mcol(func(m bottleMem) float64 { return m.total }), slices.Min(totals), slices.Max(totals),
			mcol(func(m bottleMem) float64 { return m.shim }), mcol(func(m bottleMem) float64 { return m.sandbox }), mcol(func(m bottleMem) float64 { return m.stub }),
			mcol(func(m bottleMem) float64 { return m.gofer }), mcol(func(m bottleMem) float64 { return m.other }))
		b.ReportMetric(col(func(r result) time.Duration { return r.start }), fmt.Sprintf("start%d-s", n))
	}
	fmt.Println("targets of issue 13: PSS of one idle bottle <= 45 MB; 16 bottles all running <= 5 s")
}

// parallel runs f(0..n-1) at once and waits for all.
func parallel(n int, f func(int)) {
	var wg sync.WaitGroup
	for k := range n {
		wg.Go(func() { f(k) })
	}
	wg.Wait()
}

// bottleMem is the PSS of one bottle in MB, in total and by kind of process.
type bottleMem struct{ total, shim, sandbox, stub, gofer, other float64 }

// bottleMemory sums, in MB, the PSS of the processes whose command line names bottle id
// (its shims, runsc sandboxes and gofers: their arguments carry the container IDs) and of
// all their descendants. A sandbox's children that are sandboxes too are its platform's
// stub processes.
func bottleMemory(b testing.TB, id string) (m bottleMem) {
	b.Helper()
	type proc struct {
		ppid  int
		argv0 string
	}
	procs := map[int]proc{}
	set := map[int]bool{}
	paths, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range paths {
		pid, _ := strconv.Atoi(filepath.Base(p))
		stat, err := os.ReadFile(p + "/stat")
		cmd, err2 := os.ReadFile(p + "/cmdline")
		if err != nil || err2 != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at the last ')'.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		argv0, _, _ := bytes.Cut(cmd, []byte{0})
		procs[pid] = proc{ppid, filepath.Base(string(argv0))}
		if bytes.Contains(cmd, []byte(id)) {
			set[pid] = true
		}
	}
	for changed := true; changed; {
		changed = false
		for pid, p := range procs {
			if !set[pid] && set[p.ppid] {
				set[pid], changed = true, true
			}
		}
	}
	if len(set) == 0 {
		b.Fatalf("no process of bottle %s", id)
	}
	for pid := range set {
		mb := float64(pssKB(pid)) * 1024 / 1e6
		m.total += mb
		switch p := procs[pid]; {
		case strings.HasPrefix(p.argv0, "containerd-shim"):
			m.shim += mb
		case p.argv0 == "runsc-sandbox" && procs[p.ppid].argv0 == "runsc-sandbox":
			m.stub += mb
		case p.argv0 == "runsc-sandbox":
			m.sandbox += mb
		case p.argv0 == "runsc-gofer":
			m.gofer += mb
		default:
			m.other += mb
		}
	}
	return m
}

// pssKB returns the Pss line of /proc/PID/smaps_rollup (0 if the process is gone).
func pssKB(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Pss:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			return kb
		}
	}
	return 0
}
