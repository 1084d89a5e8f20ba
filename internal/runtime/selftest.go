package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/selftest"
)

// Fault hooks for tests only (Options.Fault, BOTTLE_TEST_FAULT): each breaks the seal
// the self-test proves, so a start must fail.
const (
	// FaultRemoveFirewall removes the bottle's firewall chain once it is installed.
	FaultRemoveFirewall = "remove-firewall"
	// FaultDefaultRoute adds a default route (via the egress gateway) into the agent's
	// netns after CNI ADD and before its sandbox starts (runsc copies routes then).
	FaultDefaultRoute = "default-route"
)

// selfTestReportTimeout bounds the wait for the agent-side report once the agent's task
// runs (the checks themselves are bounded by a few seconds).
const selfTestReportTimeout = 15 * time.Second

// selfTest is the host side of one start's self-test: the report file, the canary
// listener on the egress gateway, and the firewall check.
type selfTest struct {
	cfg    selftest.Config
	report string // the report's host path
	canary net.Listener
	hits   atomic.Int64
	// firewall waits for the host-side check that the bottle's chain is in force.
	firewall func() error
	// keepTrail: a failed result is in the audit trail, which the taken-back start keeps.
	keepTrail bool
}

// noSelfTestWarning says loudly what --no-self-test skips.
func noSelfTestWarning(id names.Identity) string {
	return fmt.Sprintf("--no-self-test: bottle %s starts WITHOUT proving it is sealed: NOT checked are the absence of a default route and of a resolver, "+
		"that direct connections to the egress gateway and a host canary fail, that the filter refuses a name outside the allowlist, and that the firewall chain is in force", id)
}

// prepareSelfTest makes the report file (empty, the agent's to write) before anything
// boots, so a full disk fails the start here, once. Nil when disabled.
func (s *starter) prepareSelfTest() (*selfTest, error) {
	e := s.e
	if e.opts.NoSelfTest {
		e.log.Warn(noSelfTestWarning(s.id))
		return nil, nil
	}
	st := &selfTest{report: filepath.Join(s.p.StageDir, plan.SelfTestReport)}
	u := s.p.Container(names.RoleAgent).Spec.Process.User
	err := selftest.ResetReport(st.report) // a resumed bottle's old report must not pass for the new one
	if err == nil {
		err = os.Chown(st.report, int(u.UID), int(u.GID))
	}
	if err != nil {
		return nil, fmt.Errorf("self-test of bottle %s: %w", s.id, err)
	}
	return st, nil
}

// listen opens the canary on the egress gateway (its bridge exists once the sidecars
// have their netns) and completes what the agent side probes.
func (st *selfTest) listen(s *starter) error {
	if st == nil {
		return nil
	}
	var filterAddr netip.Addr
	for _, a := range s.p.Container(names.RoleFilter).Attachments {
		if a.Network == names.NetInternal {
			filterAddr = a.Address
		}
	}
	if !filterAddr.IsValid() {
		return fmt.Errorf("self-test of bottle %s: the filter has no internal address", s.id)
	}
	// IP_FREEBIND: the gateway's address reaches the bridge with the sidecars' CNI
	// setups, which run at the same time; the canary listens from then on.
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_IP, syscall.IP_FREEBIND, 1) })
		return errors.Join(err, serr)
	}}
	ln, err := lc.Listen(s.ctx, "tcp4", netip.AddrPortFrom(s.egress.Gateway(), 0).String())
	if err != nil {
		return fmt.Errorf("self-test of bottle %s: canary on the egress gateway: %w", s.id, err)
	}
	st.canary = ln
	st.cfg = selftest.Config{
		Gateway: ln.Addr().(*net.TCPAddr).AddrPort(),
		Filter:  netip.AddrPortFrom(filterAddr, plan.FilterPort),
		Report:  selftest.Report,
	}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			st.hits.Add(1)
			conn.Close()
		}
	}()
	return nil
}

// close stops the canary.
func (st *selfTest) close() {
	if st != nil && st.canary != nil {
		st.canary.Close()
	}
}

// wrap makes the agent's process the self-test, which then execs the planned command.
func (st *selfTest) wrap(spec *specs.Spec) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("self-test: the bottle binary: %w", err)
	}
	spec.Mounts = append(slices.Clone(spec.Mounts), plan.SelfTestMounts(exe, st.report)...)
	spec.Process.Args = st.cfg.Args(spec.Process.Args)
	return nil
}

// beforeStart is the host-side check that must pass before the agent's task starts:
// the bottle's firewall chain is in force (nothing inside the sandbox can tell it is gone
// while there is no route).
func (st *selfTest) beforeStart(e *Engine, id names.Identity) error {
	if st == nil {
		return nil
	}
	if err := st.firewall(); err != nil {
		return st.conclude(e, id, selftest.Result{Failed: selftest.CheckFirewall, Checks: []selftest.Check{{Name: selftest.CheckFirewall, Detail: err.Error()}}})
	}
	return nil
}

// await waits for the agent-side report (written before the agent's command runs),
// then checks the host side. The error names the failed check.
func (st *selfTest) await(ctx context.Context, e *Engine, id names.Identity) error {
	deadline := time.Now().Add(selfTestReportTimeout)
	for {
		r, err := selftest.ReadReport(st.report)
		if err == nil {
			return st.conclude(e, id, r)
		}
		if !errors.Is(err, selftest.ErrNoReport) {
			return st.failed(e, id, err)
		}
		if time.Now().After(deadline) {
			return st.failed(e, id, fmt.Errorf("no report from inside the agent's sandbox within %s (%v)", selfTestReportTimeout, err))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// conclude records a report, completed with the host side (the firewall was checked
// before the agent started; the canary must have seen nothing), as one JSON line in the
// bottle's log, and returns the failure.
func (st *selfTest) conclude(e *Engine, id names.Identity, r selftest.Result) error {
	if r.Passed {
		canary := selftest.Check{Name: selftest.CheckCanary, OK: true, Detail: fmt.Sprintf("the canary on %s saw no connection", st.cfg.Gateway)}
		if n := st.hits.Load(); n > 0 {
			canary.OK, canary.Detail = false, fmt.Sprintf("the canary on %s saw %d connection(s)", st.cfg.Gateway, n)
			r.Passed, r.Failed = false, selftest.CheckCanary
		}
		r.Checks = append(r.Checks, selftest.Check{Name: selftest.CheckFirewall, OK: true, Detail: "the bottle's firewall chain is in force"}, canary)
	}
	st.record(e, id, r)
	if !r.Passed {
		return fmt.Errorf("bottle %s failed its self-test: %s", id, r.Failure())
	}
	return nil
}

// failed records a self-test that gave no usable report.
func (st *selfTest) failed(e *Engine, id names.Identity, err error) error {
	st.record(e, id, selftest.Result{Failed: "report", Checks: []selftest.Check{{Name: "report", Detail: err.Error()}}})
	return fmt.Errorf("bottle %s failed its self-test: %w", id, err)
}

// record writes the result into the bottle's audit trail and as one JSON line in its log.
// A start whose self-test failed is taken back, but its trail stays: it is the record of
// a bottle that was not sealed.
func (st *selfTest) record(e *Engine, id names.Identity, r selftest.Result) {
	st.keepTrail = e.recordHost(id, auditSelfTest, r) == nil && !r.Passed
	data, _ := json.Marshal(r)
	if r.Passed {
		e.log.Info("self-test passed", "identity", id, "micros", r.Micros, "result", string(data))
		return
	}
	e.log.Error("self-test failed", "identity", id, "check", r.Failed, "result", string(data))
}

// injectDefaultRoute is FaultDefaultRoute: a default route via the egress gateway,
// on-link, in the agent's netns.
func injectDefaultRoute(ctx context.Context, nsPath string, gateway netip.Addr) error {
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+nsPath, "ip", "route", "add", "default", "via", gateway.String(), "dev", "eth0", "onlink")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("fault %s: %w: %s", FaultDefaultRoute, err, strings.TrimSpace(string(out)))
	}
	return nil
}
