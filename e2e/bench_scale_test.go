package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
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
// egress-proxy route) and prints the time until all run, the memory (PSS and USS) of each
// idle bottle (summed over its shims, sandboxes, gofers and their children), and the
// times of `ps` and of stopping and removing all N at once, and the memory of one bare
// runsc container for reference. `make bench-scale` runs it; with
// -benchtime Kx each N runs K times and the medians are printed.
func BenchmarkScale(b *testing.B) {
	e := newEnv(b)
	caFile := benchUpstream(b)
	e.writeBenchManifest("bench")
	// Warm up (sidecar image creation, page cache).
	run(b, e.benchStart(caFile, "bench", []string{"--rm"}, "/bin/true"))
	if warmupOnly(b) {
		return
	}

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
					run(b, e.benchStart(caFile, "bench", []string{"--detach", "--pool", benchScalePool}))
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

	fmt.Printf("\nbench-scale: N bottles (agent + builtin filter + egress-proxy route) at once, %d run(s) each, medians; memory of each idle bottle in MB (1e6 bytes): PSS (shared pages split among their users) and USS (its private pages)\n", b.N)
	fmt.Printf("%4s %11s %6s %8s %7s %17s %10s | PSS by kind: %s\n", "N", "all running", "ps", "stop all", "rm all", "PSS/bottle", "USS/bottle", strings.Join(memKinds, " "))
	row := func(m []bottleMem) string {
		col := func(f func(bottleMem) float64) float64 {
			var v []float64
			for _, x := range m {
				v = append(v, f(x))
			}
			return medianF(v)
		}
		pss := func(x bottleMem) float64 { return x.pss }
		var tot []float64
		for _, x := range m {
			tot = append(tot, x.pss)
		}
		out := fmt.Sprintf("%7.1f (%3.0f-%3.0f) %10.1f |", col(pss), slices.Min(tot), slices.Max(tot), col(func(x bottleMem) float64 { return x.uss }))
		for k, kind := range memKinds {
			out += fmt.Sprintf(" %*.1f", len(kind), col(func(x bottleMem) float64 { return x.byKind[k] }))
		}
		return out
	}
	for _, n := range ns {
		col := func(f func(result) time.Duration) float64 {
			var d []time.Duration
			for _, r := range results[n] {
				d = append(d, f(r))
			}
			return median(d).Seconds()
		}
		start := col(func(r result) time.Duration { return r.start })
		fmt.Printf("%4d %10.2fs %5.2fs %7.2fs %6.2fs %s\n", n, start, col(func(r result) time.Duration { return r.ps }),
			col(func(r result) time.Duration { return r.stop }), col(func(r result) time.Duration { return r.rm }), row(mem[n]))
		b.ReportMetric(start, fmt.Sprintf("start%d-s", n))
	}
	fmt.Printf("%4s %11s %6s %8s %7s %s\n", "bare", "", "", "", "", row([]bottleMem{bareMemory(b, e)}))
	fmt.Println("(bare: one idle `ctr run -d` runsc container of the same image, for reference)")
	fmt.Println("targets of issue 13: PSS of one idle bottle <= 45 MB; 16 bottles all running <= 5 s")
}

// bareMemory returns the PSS of one idle bare runsc container of the test image.
func bareMemory(b testing.TB, e *env) bottleMem {
	b.Helper()
	id := fmt.Sprintf("bench-idle-%d", os.Getpid())
	ctrArgs := e.ctrRunArgs(b)
	global := ctrArgs[:4] // -a ADDRESS -n NAMESPACE
	run(b, exec.Command("ctr", append(ctrArgs, "-d", testImage, id, "/bin/sleep", "3600")...))
	defer func() {
		exec.Command("ctr", append(slices.Clone(global), "task", "kill", "-s", "SIGKILL", id)...).Run()
		for range 50 {
			if exec.Command("ctr", append(slices.Clone(global), "task", "rm", id)...).Run() == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		run(b, exec.Command("ctr", append(slices.Clone(global), "container", "rm", id)...))
	}()
	time.Sleep(2 * time.Second)
	return bottleMemory(b, id)
}

// parallel runs f(0..n-1) at once and waits for all.
func parallel(n int, f func(int)) {
	var wg sync.WaitGroup
	for k := range n {
		wg.Go(func() { f(k) })
	}
	wg.Wait()
}

// memKinds are the kinds of processes of a bottle, by their argv[0]; a stub is a process
// a sandbox forked for its platform (no command line of its own).
var memKinds = []string{"shims", "sandboxes", "stubs", "gofers", "other"}

// bottleMem is the memory of one bottle in MB (1e6 bytes): PSS in total and by kind
// (memKinds), and USS (private pages: what the bottle alone holds).
type bottleMem struct {
	pss, uss float64
	byKind   [5]float64
}

// bottleMemory sums the memory of the processes whose command line names bottle id (its
// shims, runsc sandboxes and gofers: their arguments carry the container IDs) and of all
// their descendants.
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
	underSandbox := func(pid int) bool {
		for p := procs[pid].ppid; p > 1; p = procs[p].ppid {
			if procs[p].argv0 == "runsc-sandbox" {
				return true
			}
		}
		return false
	}
	for pid := range set {
		pss, uss := smapsRollup(pid)
		m.pss += pss
		m.uss += uss
		k := 4
		switch a := procs[pid].argv0; {
		case strings.HasPrefix(a, "containerd-shim"):
			k = 0
		case underSandbox(pid):
			k = 2
		case a == "runsc-sandbox":
			k = 1
		case a == "runsc-gofer":
			k = 3
		}
		m.byKind[k] += pss
	}
	return m
}

// smapsRollup returns the PSS and the private memory (clean + dirty) of process pid in
// MB; zeros if it is gone.
func smapsRollup(pid int) (pss, private float64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(val), "kB")))
		if err != nil {
			continue
		}
		mb := float64(kb) * 1024 / 1e6
		switch key {
		case "Pss":
			pss = mb
		case "Private_Clean", "Private_Dirty":
			private += mb
		}
	}
	return pss, private
}
