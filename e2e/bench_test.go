package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"
)

// BenchmarkStartVsBare measures, in one run, the wall time of `bottle start AGENT --
// /bin/true` (agent + filter sidecar + both networks + firewall, under runsc, including
// the teardown when the agent exits) and of a bare single-container runsc run of the same
// image without network (`ctr run --rm` with runsc), and reports the medians and their
// ratio. `make bench-start` runs it; the target ratio is <= 2.0.
func BenchmarkStartVsBare(b *testing.B) {
	e := newEnv(b)
	e.writeManifest("bench")
	ctrBin := "ctr"
	if _, err := exec.LookPath(ctrBin); err != nil {
		b.Fatalf("ctr not on PATH (scripts/setup-host.sh installs it): %v", err)
	}
	runsc, err := exec.LookPath("runsc")
	if err != nil {
		b.Fatal(err)
	}
	bare := func(i int) error {
		args := []string{"-a", e.address, "-n", namespace, "run", "--rm", "--runc-binary", runsc}
		if root := os.Getenv("BOTTLE_TEST_RUNC_ROOT"); root != "" {
			args = append(args, "--runc-root", root)
		}
		args = append(args, testImage, fmt.Sprintf("bare-%d-%d", os.Getpid(), i+1), "/bin/true")
		if out, err := exec.Command(ctrBin, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ctr run: %v: %s", err, out)
		}
		return nil
	}
	// Warm up both paths (sidecar image creation, page cache).
	if err := bare(-1); err != nil {
		b.Fatal(err)
	}
	e.must("start", "bench", "--", "/bin/true")
	e.must("rm", e.identityOf("bench"))

	var starts, bares []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		out, errOut, code := e.bottle(nil, "start", "bench", "--", "/bin/true")
		starts = append(starts, time.Since(t0))
		if code != 0 {
			b.Fatalf("bottle start: exit %d: %s %s", code, out, errOut)
		}
		t0 = time.Now()
		if err := bare(i); err != nil {
			b.Fatal(err)
		}
		bares = append(bares, time.Since(t0))
		b.StopTimer()
		e.must("rm", e.identityOf("bench"))
		b.StartTimer()
	}
	b.StopTimer()
	ms, mb := median(starts), median(bares)
	ratio := ms.Seconds() / mb.Seconds()
	b.ReportMetric(ms.Seconds(), "start-s")
	b.ReportMetric(mb.Seconds(), "bare-s")
	b.ReportMetric(ratio, "ratio")
	fmt.Printf("bench-start: %d runs each: bottle start median %.3f s, bare runsc median %.3f s, ratio %.2f (target <= 2.0)\n", b.N, ms.Seconds(), mb.Seconds(), ratio)
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
