package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/ctr"
)

// fakeClock advances by step on every reading.
func fakeClock(step time.Duration) func() time.Time {
	t := time.Unix(0, 0)
	return func() time.Time {
		t = t.Add(step)
		return t
	}
}

// importReports is what ctr reports for an import of a 300 MB archive: many reads, one
// unpack step, the end.
func importReports() []ctr.Progress {
	const total = 300e6
	ps := []ctr.Progress{{Step: "reading image archive", Total: total}}
	for done := int64(0); done < total; done += 32 << 10 * 100 {
		ps = append(ps, ctr.Progress{Step: "reading image archive", Done: done + 1, Total: total})
	}
	return append(ps,
		ctr.Progress{Step: "unpacking bottle.local/claude:latest", Done: total, Total: total},
		ctr.Progress{Step: "done", Done: total, Total: total, Finished: true})
}

func TestConsoleProgressWithoutTerminalIsOneLinePerStep(t *testing.T) {
	var buf bytes.Buffer
	c := newConsole(&buf, false)
	c.now = fakeClock(50 * time.Millisecond)
	for _, p := range importReports() {
		c.progress(p)
	}
	got := buf.String()
	if strings.Contains(got, "\r") || strings.Contains(got, "\x1b") {
		t.Errorf("carriage return or escape off a terminal: %q", got)
	}
	lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	want := []string{
		"bottle: reading image archive (300.0 MB) [0.0s]",
		"bottle: unpacking bottle.local/claude:latest (300.0 MB read) [",
		"bottle: imported 300.0 MB in ",
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want one per step (%d):\n%s", len(lines), len(want), got)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d = %q, want prefix %q", i, lines[i], w)
		}
	}
}

func TestConsoleProgressOnTerminalUpdatesOneLine(t *testing.T) {
	var buf bytes.Buffer
	c := newConsole(&buf, true)
	c.now = fakeClock(50 * time.Millisecond)
	reports := importReports()
	for _, p := range reports[:len(reports)/2] {
		c.progress(p)
	}
	// A log line meanwhile goes above the progress line, which is drawn again.
	if _, err := c.Write([]byte("bottle: something happened\n")); err != nil {
		t.Fatal(err)
	}
	for _, p := range reports[len(reports)/2:] {
		c.progress(p)
	}
	got := buf.String()
	if n := strings.Count(got, "\n"); n != 2 {
		t.Errorf("%d line feeds, want 2 (the log line and the end): %q", n, got)
	}
	draws := strings.Count(got, clearLine)
	if draws < 10 || draws > len(reports)*2/3 {
		t.Errorf("progress line drawn %d times for %d reports, want throttled updates", draws, len(reports))
	}
	for _, want := range []string{
		clearLine + "bottle: reading image archive: 0 B of 300.0 MB (0%) [0.0s]",
		"MB of 300.0 MB (", "%) [",
		clearLine + "bottle: something happened\r\n" + "bottle: reading image archive: ",
		clearLine + "bottle: unpacking bottle.local/claude:latest: 300.0 MB of 300.0 MB (100%)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%q", want, got)
		}
	}
	if !strings.HasSuffix(got, clearLine+"bottle: imported 300.0 MB in "+formatElapsed(time.Duration(len(reports)-1)*50*time.Millisecond)+"\r\n") {
		t.Errorf("output does not end with the import's summary line: %q", got[max(0, len(got)-200):])
	}
}

func TestConsoleLogLinesOnTerminalEndInCRLF(t *testing.T) {
	var buf bytes.Buffer
	c := newConsole(&buf, true)
	if _, err := c.Write([]byte("bottle: a\nbottle: b\n")); err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); got != "bottle: a\r\nbottle: b\r\n" {
		t.Errorf("got %q", got)
	}
	buf.Reset()
	c = newConsole(&buf, false)
	_, _ = c.Write([]byte("bottle: a\n"))
	if got := buf.String(); got != "bottle: a\n" {
		t.Errorf("off a terminal got %q", got)
	}
}

func TestProgressFormats(t *testing.T) {
	cases := []struct {
		p         ctr.Progress
		tty, step string
	}{
		{ctr.Progress{Step: "s", Done: 1500, Total: 3000}, "bottle: s: 1.5 kB of 3.0 kB (50%) [2.0s]", "bottle: s (1.5 kB read) [2.0s]"},
		{ctr.Progress{Step: "writing image x", Done: 25e6}, "bottle: writing image x: 25.0 MB [2.0s]", "bottle: writing image x (25.0 MB read) [2.0s]"},
		{ctr.Progress{Step: "s", Total: 2e9}, "bottle: s: 0 B of 2.00 GB (0%) [2.0s]", "bottle: s (2.00 GB) [2.0s]"},
		{ctr.Progress{Step: "s"}, "bottle: s [2.0s]", "bottle: s [2.0s]"},
	}
	for _, c := range cases {
		if got := progressLine(c.p, 2*time.Second); got != c.tty {
			t.Errorf("progressLine(%+v) = %q, want %q", c.p, got, c.tty)
		}
		if got := stepLine(c.p, 2*time.Second); got != c.step {
			t.Errorf("stepLine(%+v) = %q, want %q", c.p, got, c.step)
		}
	}
	if got := finishedLine(ctr.Progress{Failed: true, Finished: true}, time.Second); got != "bottle: import failed after 1.0s" {
		t.Errorf("failed: %q", got)
	}
}
