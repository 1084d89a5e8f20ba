package runtime

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bottle-dev/bottle/internal/ctr"
	"github.com/bottle-dev/bottle/internal/plan"
)

// startSidecar starts a sidecar's task (again) and waits until it serves; the ready and
// error files of an earlier run go first.
func (e *Engine) startSidecar(ctx context.Context, p *plan.Plan, c *plan.Container) error {
	dir := filepath.Join(p.StageDir, plan.SidecarRunDir(c.Role))
	for _, f := range []string{plan.SidecarReadyFile, plan.SidecarErrorFile} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("start %s: %w", c.Name, err)
		}
	}
	if _, err := e.ctr.Start(ctx, c.Name, e.logPath(p.Identity, c.Role)); err != nil {
		return err
	}
	return e.waitReady(ctx, p, c)
}

// waitReady waits until a sidecar serves, or its task ends. Our sidecars create a ready
// file; pipelock is asked GET /health on its egress address (the host cannot reach the
// internal network).
func (e *Engine) waitReady(ctx context.Context, p *plan.Plan, c *plan.Container) error {
	ready := func() bool {
		_, err := os.Stat(filepath.Join(p.StageDir, plan.SidecarRunDir(c.Role), plan.SidecarReadyFile))
		return err == nil
	}
	if c.Role == plan.RoleFilter && p.Filter == plan.FilterPipelock {
		url := fmt.Sprintf("http://%s/health", netip.AddrPortFrom(egressAddr(c), plan.FilterPort))
		client := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil}}
		ready = func() bool {
			resp, err := client.Get(url)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		}
	}
	deadline := time.Now().Add(sidecarReadyTimeout)
	for delay := 2 * time.Millisecond; ; delay = min(delay*2, 10*time.Millisecond) {
		if ready() {
			return nil
		}
		info, err := e.ctr.Info(ctx, c.Name)
		if err == nil && info.TaskStatus != ctr.TaskRunning && info.TaskStatus != ctr.TaskCreated {
			if reason, err := os.ReadFile(filepath.Join(p.StageDir, plan.SidecarRunDir(c.Role), plan.SidecarErrorFile)); err == nil {
				return fmt.Errorf("%s sidecar %s failed: %s", c.Role, c.Name, strings.TrimSpace(string(reason)))
			}
			// The shim copies the task's output into the log file after the exit is
			// reported: give that copy a moment, or the tail misses the sidecar's error.
			e.waitLogSettled(ctx, p.Identity, c.Role)
			return fmt.Errorf("%s sidecar %s exited before it was ready; its log: %s", c.Role, c.Name, e.logTail(p.Identity, c.Role))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s sidecar %s not ready after %s; its log: %s", c.Role, c.Name, sidecarReadyTimeout, e.logTail(p.Identity, c.Role))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
}

func (e *Engine) logPath(identity, role string) string {
	return filepath.Join(e.store.LogDir(identity), role+".log")
}

// waitLogSettled waits (at most logSettleTimeout) until an exited task's log file is
// non-empty and has stopped growing.
func (e *Engine) waitLogSettled(ctx context.Context, identity, role string) {
	deadline := time.Now().Add(logSettleTimeout)
	last := int64(-1)
	for time.Now().Before(deadline) {
		st, err := os.Stat(e.logPath(identity, role))
		if err == nil && st.Size() > 0 && st.Size() == last {
			return
		}
		if err == nil {
			last = st.Size()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (e *Engine) logTail(identity, role string) string {
	data, err := os.ReadFile(e.logPath(identity, role))
	if err != nil || len(data) == 0 {
		return "(empty)"
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return strings.Join(lines[max(0, len(lines)-5):], " | ")
}

// egressAddr is a container's address on the egress network.
func egressAddr(c *plan.Container) netip.Addr {
	for _, a := range c.Attachments {
		if a.Network == plan.NetEgress {
			return a.Address
		}
	}
	return netip.Addr{}
}
