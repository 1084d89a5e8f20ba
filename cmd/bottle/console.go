package main

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/bottle-dev/bottle/internal/ctr"
)

// console is bottle's stderr: log lines, and the progress of image imports. On a
// terminal the progress is one line updated in place (and drawn again below each log
// line); elsewhere (a log file, a pipe) it is one line per step, without carriage returns.
type console struct {
	mu    sync.Mutex
	w     io.Writer
	tty   bool
	now   func() time.Time
	start time.Time // of the import under way; zero when none
	step  string    // the step last reported
	shown string    // the progress line on the terminal, "" when none
	drawn time.Time // when shown was drawn
}

// redrawEvery bounds how often the progress line is drawn again (reads come per 32 KiB).
const redrawEvery = 100 * time.Millisecond

// clearLine returns the cursor to column 0 and erases the line.
const clearLine = "\r\x1b[K"

func newConsole(w io.Writer, tty bool) *console {
	return &console{w: w, tty: tty, now: time.Now}
}

// Write writes log lines. On a terminal every line ends in \r\n: while an attached agent
// has the terminal in raw mode a bare \n would not return to column 0 (a cooked
// terminal shows \r\n as it shows \n).
func (c *console) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.tty {
		return c.w.Write(b)
	}
	var out bytes.Buffer
	if c.shown != "" {
		out.WriteString(clearLine)
	}
	out.Write(bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n")))
	out.WriteString(c.shown)
	if _, err := c.w.Write(out.Bytes()); err != nil {
		return 0, err
	}
	return len(b), nil
}

// progress shows an import's progress report; it is a ctr.ProgressFunc.
func (c *console) progress(p ctr.Progress) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if c.start.IsZero() {
		c.start = now
	}
	elapsed := now.Sub(c.start)
	switch {
	case p.Finished:
		line := finishedLine(p, elapsed)
		if c.tty {
			line = clearLine + line + "\r\n"
		} else {
			line += "\n"
		}
		_, _ = io.WriteString(c.w, line)
		c.start, c.step, c.shown = time.Time{}, "", ""
	case !c.tty:
		if p.Step != c.step {
			c.step = p.Step
			_, _ = io.WriteString(c.w, stepLine(p, elapsed)+"\n")
		}
	case p.Step != c.step || now.Sub(c.drawn) >= redrawEvery:
		c.step, c.drawn = p.Step, now
		c.shown = progressLine(p, elapsed)
		_, _ = io.WriteString(c.w, clearLine+c.shown)
	}
}

// stepLine is the one line a step gets off a terminal.
func stepLine(p ctr.Progress, elapsed time.Duration) string {
	var b strings.Builder
	b.WriteString("bottle: " + p.Step)
	if p.Total > 0 && p.Done == 0 {
		fmt.Fprintf(&b, " (%s)", formatBytes(p.Total))
	}
	if p.Done > 0 {
		fmt.Fprintf(&b, " (%s read)", formatBytes(p.Done))
	}
	fmt.Fprintf(&b, " [%s]", formatElapsed(elapsed))
	return b.String()
}

// progressLine is the updating line of a terminal: the step, bytes and percent.
func progressLine(p ctr.Progress, elapsed time.Duration) string {
	var b strings.Builder
	b.WriteString("bottle: " + p.Step)
	switch {
	case p.Total > 0:
		done := min(p.Done, p.Total)
		fmt.Fprintf(&b, ": %s of %s (%d%%)", formatBytes(done), formatBytes(p.Total), done*100/p.Total)
	case p.Done > 0:
		fmt.Fprintf(&b, ": %s", formatBytes(p.Done))
	}
	fmt.Fprintf(&b, " [%s]", formatElapsed(elapsed))
	return b.String()
}

// finishedLine ends an import.
func finishedLine(p ctr.Progress, elapsed time.Duration) string {
	if p.Failed {
		return fmt.Sprintf("bottle: import failed after %s", formatElapsed(elapsed))
	}
	return fmt.Sprintf("bottle: imported %s in %s", formatBytes(p.Done), formatElapsed(elapsed))
}

func formatBytes(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2f GB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	}
	return fmt.Sprintf("%d B", n)
}

func formatElapsed(d time.Duration) string {
	return fmt.Sprintf("%.1fs", d.Seconds())
}
