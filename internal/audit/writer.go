package audit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/bottle-dev/bottle/internal/names"
)

// Dir is where a bottle's trail lives: under the state dir but outside the bottle's own
// dir, so it outlives `bottle rm` until `bottle audit prune`.
func Dir(stateDir string, id names.Identity) string {
	return filepath.Join(Root(stateDir), id.String())
}

// Root holds every bottle's trail.
func Root(stateDir string) string { return filepath.Join(stateDir, "audit") }

// SidecarDir is the directory of a sidecar's file in a trail: the runtime creates it
// owned by the sidecar's user and mounts it (and nothing else of the trail) at
// SidecarMount in that sidecar only.
func SidecarDir(dir, role string) string { return filepath.Join(dir, role) }

// SidecarMount is where a sidecar sees its SidecarDir; SidecarFile is its file there.
const (
	SidecarMount = "/var/log/bottle"
	SidecarFile  = SidecarMount + "/" + fileName
)

const (
	fileName = "audit.jsonl"
	hostFile = "host.jsonl"
)

// file is the path of source's file in the trail dir.
func file(dir, source string) string {
	if source == SourceHost {
		return filepath.Join(dir, hostFile)
	}
	return filepath.Join(SidecarDir(dir, source), fileName)
}

// Recorder receives a sidecar's records (egress and gitgate call it; nil records nothing).
type Recorder interface{ Record(Event) }

// Trail is a bottle's trail dir, as the host writes it.
type Trail struct{ dir string }

// Open returns the trail in dir (see Dir); files are created on the first Append.
func Open(dir string) *Trail { return &Trail{dir: dir} }

// Append adds a record of kind to source's file, chained to its last record. fields is
// a typed Event or, for the host's other kinds, any value that marshals to a JSON object.
// The host writes SourceHost; sidecars write through a Writer.
func (t *Trail) Append(source, kind string, fields any) error {
	if !slices.Contains(Sources, source) {
		return fmt.Errorf("audit: unknown source %q", source)
	}
	if err := os.MkdirAll(filepath.Dir(file(t.dir, source)), 0o700); err != nil {
		return fmt.Errorf("audit trail %s: %w", t.dir, err)
	}
	a := &appender{path: file(t.dir, source), source: source}
	defer a.close()
	return a.append(kind, fields, time.Now())
}

// Writer appends a sidecar's records to its file; it is the sidecar's Recorder.
type Writer struct {
	mu      sync.Mutex
	a       appender
	onError func(error)
}

// NewWriter writes source's records to path (a sidecar: SidecarFile); onError hears
// of records that could not be written (the sidecar logs them and serves on).
func NewWriter(path, source string, onError func(error)) *Writer {
	return &Writer{a: appender{path: path, source: source}, onError: onError}
}

// Record implements Recorder.
func (w *Writer) Record(e Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.a.append(e.Kind(), e, time.Now()); err != nil && w.onError != nil {
		w.onError(err)
	}
}

// Close closes the file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.a.close()
}

// appender appends to one source's file under an exclusive lock, continuing the chain
// from the file's last record; an open appender remembers that record while the file
// keeps the size it left it at.
type appender struct {
	path, source string
	f            *os.File
	size         int64
	seq          uint64
	hash         string
}

func (a *appender) close() error {
	if a.f == nil {
		return nil
	}
	err := a.f.Close()
	a.f = nil
	return err
}

func (a *appender) append(kind string, fields any, now time.Time) error {
	if err := checkKind(a.source, kind); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if a.f == nil {
		f, err := os.OpenFile(a.path, os.O_RDWR|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("audit: open %s: %w", a.path, err)
		}
		a.f, a.size = f, -1
	}
	if err := syscall.Flock(int(a.f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("audit: lock %s: %w", a.path, err)
	}
	defer syscall.Flock(int(a.f.Fd()), syscall.LOCK_UN) //nolint:errcheck // closing unlocks too
	st, err := a.f.Stat()
	if err != nil {
		return fmt.Errorf("audit: %s: %w", a.path, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("audit: %s is not a regular file", a.path)
	}
	if st.Size() >= MaxFile {
		return fmt.Errorf("audit: %s is full (%d bytes); records are dropped until the trail is pruned", a.path, MaxFile)
	}
	if st.Size() != a.size {
		// Another writer appended (or this is the first append): read its last record.
		if err := a.readTail(st.Size()); err != nil {
			return err
		}
	}
	raw, err := canonicalFields(kind, fields)
	if err != nil {
		return fmt.Errorf("audit: %s record: %w", kind, err)
	}
	line, err := encode(Record{Seq: a.seq + 1, Time: now, Source: a.source, Kind: kind, Prev: a.hash, Fields: raw})
	if err != nil {
		return fmt.Errorf("audit: %s record: %w", kind, err)
	}
	if a.size+int64(len(line))+1 > MaxFile {
		return fmt.Errorf("audit: %s is full (%d bytes); records are dropped until the trail is pruned", a.path, MaxFile)
	}
	if _, err := a.f.Write(append(line, '\n')); err != nil {
		a.size = -1
		return fmt.Errorf("audit: write %s: %w", a.path, err)
	}
	a.size += int64(len(line)) + 1
	a.seq++
	a.hash = Hash(line)
	return nil
}

// readTail reads the last good record of a file of size bytes. A line that does not
// parse (a write cut short, an edit) is left for --verify to report; the chain goes on
// from the last good record before it.
func (a *appender) readTail(size int64) error {
	a.seq, a.hash, a.size = 0, "", -1
	if size == 0 {
		a.size = 0
		return nil
	}
	start := max(0, size-2*MaxLine-2)
	buf := make([]byte, size-start)
	if _, err := a.f.ReadAt(buf, start); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("audit: read %s: %w", a.path, err)
	}
	if buf[len(buf)-1] != '\n' {
		// End the cut-short line, so it reads as one bad line, not as part of the next.
		if _, err := a.f.Write([]byte{'\n'}); err != nil {
			return fmt.Errorf("audit: write %s: %w", a.path, err)
		}
		size++
	}
	lines := bytes.Split(bytes.TrimSuffix(buf, []byte{'\n'}), []byte{'\n'})
	if start > 0 {
		lines = lines[1:] // may begin mid-line
	}
	for i := len(lines) - 1; i >= 0; i-- {
		if r, err := parseLine(a.source, lines[i]); err == nil {
			a.seq, a.hash, a.size = r.Seq, Hash(lines[i]), size
			return nil
		}
	}
	if start == 0 {
		a.size = size // nothing good in the whole file: a new chain
		return nil
	}
	return fmt.Errorf("audit: %s: no valid record at its end; run bottle audit --verify", a.path)
}
