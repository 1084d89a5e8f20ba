package audit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"syscall"
	"time"
)

// Problem is something wrong in a trail: a line that is not a valid record, or a break
// in a source's chain, named by source, line and sequence number.
type Problem struct {
	Source string
	Line   int // 0: not tied to a line
	Seq    uint64
	What   string
}

func (p Problem) String() string {
	s := p.Source
	if p.Line > 0 {
		s += fmt.Sprintf(" line %d", p.Line)
	}
	if p.Seq > 0 {
		s += fmt.Sprintf(" record seq %d", p.Seq)
	}
	// What may quote a sidecar's bytes (encoding/json names an unknown key as it is).
	return asciiSafe(s + ": " + p.What)
}

// source reads one source's file record by record, checking each line and the chain.
type source struct {
	name, path string
	f          *os.File
	br         *bufio.Reader
	read       int64 // bytes consumed
	line       int
	partial    []byte // an unterminated last line (a follow may see its end later)
	skipping   bool   // in an over-long line
	seq        uint64 // last record's seq
	hash       string // last record's hash
	linkBroken bool   // the line before was bad: the next link is not checked
	missing    map[uint64]bool
	seen       map[uint64]string // seq -> hash, for the host's seals
	problems   []Problem
}

func openSource(dir, name string) (*source, error) {
	s := &source{name: name, path: file(dir, name), missing: map[uint64]bool{}, seen: map[uint64]string{}}
	f, err := os.OpenFile(s.path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit: open %s: %w", s.path, err)
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("audit: %s is not a regular file", s.path)
	}
	s.f = f
	s.br = bufio.NewReaderSize(f, MaxLine+1)
	return s, nil
}

func (s *source) close() {
	if s.f != nil {
		s.f.Close()
	}
}

func (s *source) problem(line int, seq uint64, format string, args ...any) {
	s.problems = append(s.problems, Problem{Source: s.name, Line: line, Seq: seq, What: fmt.Sprintf(format, args...)})
}

// next returns the source's next valid record; ok is false at the end of what is
// written so far. Bad lines become problems and are skipped.
func (s *source) next() (Record, bool) {
	for {
		chunk, err := s.br.ReadSlice('\n')
		s.read += int64(len(chunk))
		if s.read > MaxFile {
			if len(s.problems) == 0 || s.problems[len(s.problems)-1].What != "file exceeds the size limit" {
				s.problem(s.line+1, 0, "file exceeds the size limit")
			}
			return Record{}, false
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			if !s.skipping {
				s.line++
				s.problem(s.line, 0, "line longer than %d bytes", MaxLine)
				s.linkBroken, s.skipping = true, true
			}
			continue
		case err != nil:
			// End of what is written: keep an unterminated line for a later look.
			if s.skipping {
				return Record{}, false
			}
			s.partial = append(s.partial, chunk...)
			if len(s.partial) > MaxLine {
				s.partial = s.partial[:0]
				s.line++
				s.problem(s.line, 0, "line longer than %d bytes", MaxLine)
				s.linkBroken, s.skipping = true, true
			}
			return Record{}, false
		}
		if s.skipping {
			s.skipping = false
			s.partial = s.partial[:0]
			continue
		}
		line := chunk[:len(chunk)-1]
		if len(s.partial) > 0 {
			line = append(s.partial, line...)
			s.partial = nil
		}
		s.line++
		if len(line) > MaxLine {
			s.problem(s.line, 0, "line longer than %d bytes", MaxLine)
			s.linkBroken = true
			continue
		}
		r, err := parseLine(s.name, line)
		if err != nil {
			s.problem(s.line, 0, "%v", err)
			s.linkBroken = true
			continue
		}
		s.link(r, Hash(line))
		return r, true
	}
}

// link checks r against the record before it in the file.
func (s *source) link(r Record, hash string) {
	defer func() {
		if _, dup := s.seen[r.Seq]; !dup { // a repeated seq does not replace the first
			s.seen[r.Seq] = hash
		}
		s.linkBroken = false
	}()
	switch {
	case r.Seq <= s.seq || s.missing[r.Seq]:
		if s.missing[r.Seq] {
			delete(s.missing, r.Seq)
			s.problem(s.line, r.Seq, "out of order: it comes after seq %d (reordered)", s.seq)
		} else {
			s.problem(s.line, r.Seq, "out of order or repeated: it comes after seq %d", s.seq)
		}
		// The chain goes on from the highest record seen.
		return
	case r.Seq > s.seq+1:
		for m := s.seq + 1; m < r.Seq && len(s.missing) < 1024; m++ {
			s.missing[m] = true
		}
	case !s.linkBroken && r.Prev != s.hash:
		if s.seq == 0 {
			s.problem(s.line, r.Seq, "the first record names a previous record (records before it were dropped?)")
		} else {
			s.problem(s.line-1, s.seq, "edited: its hash differs from what seq %d recorded", r.Seq)
		}
	}
	s.seq, s.hash = r.Seq, hash
}

// finish reports the records that never appeared and, with partial, an unterminated
// last line (a reader of a live trail may just see a record being written).
func (s *source) finish(partial bool) {
	if partial && len(s.partial) > 0 {
		s.problem(s.line+1, 0, "unterminated last line")
	}
	var gone []uint64
	for m := range s.missing {
		gone = append(gone, m)
	}
	slices.Sort(gone)
	for _, m := range gone {
		s.problem(0, m, "dropped: the records around it skip it")
	}
}

// Options select what Read yields.
type Options struct {
	// Since leaves out records before it.
	Since time.Time
	// Follow keeps reading as the files grow until ctx ends.
	Follow bool
	// PollInterval is how often Follow looks again (default 300 ms).
	PollInterval time.Duration
}

// Read merges every source of the trail in dir into one stream ordered by time (each
// source's own order kept; ties go by source) and calls emit for each record. It
// returns the problems it met; a missing dir is an error.
func Read(ctx context.Context, dir string, opts Options, emit func(Record) error) ([]Problem, error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("audit trail %s: %w", dir, err)
	}
	var srcs []*source
	defer func() {
		for _, s := range srcs {
			s.close()
		}
	}()
	open := func() error {
		for _, name := range Sources {
			if slices.ContainsFunc(srcs, func(s *source) bool { return s.name == name }) {
				continue
			}
			s, err := openSource(dir, name)
			if err != nil {
				return err
			}
			if s != nil {
				srcs = append(srcs, s)
			}
		}
		return nil
	}
	if err := open(); err != nil {
		return nil, err
	}
	heads := make([]*Record, len(Sources))
	poll := opts.PollInterval
	if poll <= 0 {
		poll = 300 * time.Millisecond
	}
	for {
		// Peek each source's next record, then emit the earliest.
		for i, s := range srcs {
			if heads[i] == nil {
				if r, ok := s.next(); ok {
					heads[i] = &r
				}
			}
		}
		best := -1
		for i, h := range heads[:len(srcs)] {
			if h != nil && (best < 0 || h.Time.Before(heads[best].Time)) {
				best = i
			}
		}
		if best >= 0 {
			r := *heads[best]
			heads[best] = nil
			if r.Time.Before(opts.Since) {
				continue
			}
			if err := emit(r); err != nil {
				return collect(srcs), err
			}
			continue
		}
		if !opts.Follow {
			break
		}
		select {
		case <-ctx.Done():
			return collect(srcs), nil
		case <-time.After(poll):
		}
		if err := open(); err != nil { // a sidecar's file may appear later
			return collect(srcs), err
		}
	}
	for _, s := range srcs {
		s.finish(false)
	}
	return collect(srcs), nil
}

func collect(srcs []*source) []Problem {
	var all []Problem
	for _, s := range srcs {
		all = append(all, s.problems...)
	}
	return all
}

// Verify reads the whole trail in dir and returns every problem: bad lines, and records
// edited, dropped or reordered in any source's chain, including the last records of a
// sidecar's file, which the host's lifecycle records seal. n is the number of valid
// records.
func Verify(dir string) (n int, problems []Problem, err error) {
	if _, err := os.Stat(dir); err != nil {
		return 0, nil, fmt.Errorf("audit trail %s: %w", dir, err)
	}
	type seal struct {
		head    Head
		hostSeq uint64
	}
	var seals []seal
	bySource := map[string]*source{}
	for _, name := range Sources {
		s, err := openSource(dir, name)
		if err != nil {
			return n, problems, err
		}
		if s == nil {
			continue
		}
		bySource[name] = s
		for {
			r, ok := s.next()
			if !ok {
				break
			}
			n++
			if r.Kind == KindLifecycle && name == SourceHost {
				var l Lifecycle
				if err := strictUnmarshal(r.Fields, &l); err == nil {
					for _, h := range l.Heads {
						seals = append(seals, seal{h, r.Seq})
					}
				}
			}
		}
		s.finish(true)
		s.close()
		problems = append(problems, s.problems...)
	}
	for _, sl := range seals {
		s := bySource[sl.head.Source]
		got, ok := "", false
		if s != nil {
			got, ok = s.seen[sl.head.Seq]
		}
		switch {
		case !ok && (s == nil || s.seq < sl.head.Seq):
			problems = append(problems, Problem{Source: sl.head.Source, Seq: sl.head.Seq, What: fmt.Sprintf("dropped: host record seq %d sealed the source up to it", sl.hostSeq)})
		case ok && got != sl.head.Hash:
			problems = append(problems, Problem{Source: sl.head.Source, Seq: sl.head.Seq, What: fmt.Sprintf("edited: its hash differs from the seal in host record seq %d", sl.hostSeq)})
		}
	}
	problems = dedupe(problems)
	return n, problems, nil
}

// dedupe drops a problem reported twice (a seal and the chain can name the same record).
func dedupe(ps []Problem) []Problem {
	sort.SliceStable(ps, func(i, j int) bool {
		return slices.Index(Sources, ps[i].Source) < slices.Index(Sources, ps[j].Source)
	})
	var out []Problem
	for _, p := range ps {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// Heads returns the last valid record of each sidecar source in dir (for a seal).
func Heads(dir string) ([]Head, error) {
	var heads []Head
	for _, name := range Sources[1:] {
		s, err := openSource(dir, name)
		if err != nil {
			return nil, err
		}
		if s == nil {
			continue
		}
		for {
			if _, ok := s.next(); !ok {
				break
			}
		}
		s.close()
		if s.seq > 0 {
			heads = append(heads, Head{Source: name, Seq: s.seq, Hash: s.hash})
		}
	}
	return heads, nil
}
