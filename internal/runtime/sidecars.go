package runtime

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bottle-dev/bottle/internal/ctr"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
)

// startSidecar starts a sidecar's task (again) and waits until it serves; the ready and
// error files of an earlier run go first.
func (e *Engine) startSidecar(ctx context.Context, p *plan.Plan, c *plan.Container) error {
	if c.Ready == nil {
		return fmt.Errorf("start %s: the plan says no way to see it ready", c.Name)
	}
	for _, f := range []string{c.Ready.File, c.Ready.ErrorFile} {
		if err := os.Remove(f); f != "" && err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("start %s: %w", c.Name, err)
		}
	}
	if _, err := e.ctr.Start(ctx, c.Name, e.logPath(p.Identity, c.Role)); err != nil {
		return err
	}
	return e.waitReady(ctx, p, c)
}

// waitReady waits until a sidecar serves, as its plan says (a file it creates, or a URL
// that answers 200), or its task ends.
func (e *Engine) waitReady(ctx context.Context, p *plan.Plan, c *plan.Container) error {
	ready := func() bool {
		if c.Ready.File == "" {
			return false
		}
		_, err := os.Stat(c.Ready.File)
		return err == nil
	}
	if url := c.Ready.URL; url != "" {
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
	// A sidecar that reports in a file wakes the wait itself when it creates the file,
	// so the task's status is asked less often; without a watch the wait polls.
	var watch *dirWatch
	maxDelay := 10 * time.Millisecond
	if c.Ready.URL == "" && c.Ready.File != "" {
		w, err := watchDir(filepath.Dir(c.Ready.File))
		if err != nil {
			e.log.Debug("polling for sidecar readiness", "sidecar", c.Name, "error", err)
		} else {
			watch, maxDelay = w, 50*time.Millisecond
			defer watch.close()
		}
	}
	deadline := time.Now().Add(sidecarReadyTimeout)
	for delay := 2 * time.Millisecond; ; delay = min(delay*2, maxDelay) {
		if ready() {
			return nil
		}
		info, err := e.ctr.Info(ctx, c.Name)
		if err == nil && info.TaskStatus != ctr.TaskRunning && info.TaskStatus != ctr.TaskCreated {
			if c.Ready.ErrorFile != "" {
				if reason, err := os.ReadFile(c.Ready.ErrorFile); err == nil {
					return fmt.Errorf("%s sidecar %s failed: %s", c.Role, c.Name, strings.TrimSpace(string(reason)))
				}
			}
			// The shim copies the task's output into the log file after the exit is
			// reported: give that copy a moment, or the tail misses the sidecar's error.
			e.waitLogSettled(ctx, p.Identity, c.Role)
			return fmt.Errorf("%s sidecar %s exited before it was ready; its log: %s", c.Role, c.Name, e.logTail(p.Identity, c.Role))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s sidecar %s not ready after %s; its log: %s", c.Role, c.Name, sidecarReadyTimeout, e.logTail(p.Identity, c.Role))
		}
		if watch != nil {
			if err := ctx.Err(); err != nil {
				return err
			}
			watch.wait(delay)
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
}

func (e *Engine) logPath(identity names.Identity, role string) string {
	return filepath.Join(e.store.LogDir(identity), role+".log")
}

// waitLogSettled waits (at most logSettleTimeout) until an exited task's log file is
// non-empty and has stopped growing.
func (e *Engine) waitLogSettled(ctx context.Context, identity names.Identity, role string) {
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

func (e *Engine) logTail(identity names.Identity, role string) string {
	data, err := os.ReadFile(e.logPath(identity, role))
	if err != nil || len(data) == 0 {
		return "(empty)"
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return strings.Join(lines[max(0, len(lines)-5):], " | ")
}
