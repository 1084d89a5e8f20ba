package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/names"
)

// newTrail writes a host start, three filter records and a host stop (which seals the
// filter's file) into a fresh trail dir.
func newTrail(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := Prepare(dir, []string{names.RoleFilter}, os.Getuid()); err != nil {
		t.Fatal(err)
	}
	tr := Open(dir)
	if err := tr.Append(SourceHost, KindLifecycle, Lifecycle{Event: "start", User: "alice"}); err != nil {
		t.Fatal(err)
	}
	w := NewWriter(file(dir, names.RoleFilter), names.RoleFilter, func(err error) { t.Error(err) })
	for _, host := range []string{"a.example", "b.example", "c.example"} {
		w.Record(FilterDecision{Method: "CONNECT", Host: host, Port: 443, Verdict: "allow", Status: 200})
	}
	w.Close()
	heads, err := Heads(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Append(SourceHost, KindLifecycle, Lifecycle{Event: "stop", User: "alice", Heads: heads}); err != nil {
		t.Fatal(err)
	}
	return dir
}

func readAll(t *testing.T, dir string) ([]Record, []Problem) {
	t.Helper()
	var recs []Record
	problems, err := Read(context.Background(), dir, Options{}, func(r Record) error { recs = append(recs, r); return nil })
	if err != nil {
		t.Fatal(err)
	}
	return recs, problems
}

func lines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
}

func writeLines(t *testing.T, path string, ls []string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strings.Join(ls, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func verifyProblems(t *testing.T, dir string) []string {
	t.Helper()
	_, problems, err := Verify(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range problems {
		out = append(out, p.String())
	}
	return out
}

func TestChainMergeAndVerify(t *testing.T) {
	dir := newTrail(t)
	recs, problems := readAll(t, dir)
	if len(problems) > 0 {
		t.Fatalf("problems in an untouched trail: %v", problems)
	}
	var got []string
	for _, r := range recs {
		got = append(got, r.Source+"/"+r.Kind)
	}
	want := "host/lifecycle filter/filter filter/filter filter/filter host/lifecycle"
	if strings.Join(got, " ") != want {
		t.Fatalf("merged order %q, want %q", strings.Join(got, " "), want)
	}
	// Each source's own chain: seq from 1, prev the hash of the line before.
	fl := lines(t, file(dir, names.RoleFilter))
	for i, l := range fl {
		r, err := parseLine(names.RoleFilter, []byte(l))
		if err != nil {
			t.Fatal(err)
		}
		wantPrev := ""
		if i > 0 {
			wantPrev = Hash([]byte(fl[i-1]))
		}
		if r.Seq != uint64(i+1) || r.Prev != wantPrev {
			t.Errorf("line %d: seq %d prev %q, want %d %q", i+1, r.Seq, r.Prev, i+1, wantPrev)
		}
	}
	n, ps, err := Verify(dir)
	if err != nil || len(ps) > 0 || n != 5 {
		t.Fatalf("verify: %d records, %v, %v", n, ps, err)
	}
}

func TestWriterContinuesChainAcrossWriters(t *testing.T) {
	dir := newTrail(t)
	// A resumed sidecar: a new writer on the same file goes on from seq 4.
	w := NewWriter(file(dir, names.RoleFilter), names.RoleFilter, func(err error) { t.Error(err) })
	w.Record(FilterDecision{Method: "GET", Host: "d.example", Port: 80, Verdict: "deny", Status: 403, Reason: "not allowed"})
	w.Close()
	fl := lines(t, file(dir, names.RoleFilter))
	r, err := parseLine(names.RoleFilter, []byte(fl[3]))
	if err != nil || r.Seq != 4 || r.Prev != Hash([]byte(fl[2])) {
		t.Fatalf("4th record %+v %v: want seq 4 chained to the 3rd", r, err)
	}
	if ps := verifyProblems(t, dir); len(ps) > 0 {
		t.Fatal(ps)
	}
}

func TestVerifyNamesEditedDroppedReordered(t *testing.T) {
	edit := func(l string) string { return strings.Replace(l, "b.example", "x.example", 1) }
	for _, tc := range []struct {
		name   string
		change func([]string) []string
		want   string
	}{
		{"edited middle", func(ls []string) []string { ls[1] = edit(ls[1]); return ls }, "filter line 2 record seq 2: edited"},
		{"dropped middle", func(ls []string) []string { return append(ls[:1], ls[2:]...) }, "filter record seq 2: dropped"},
		{"reordered", func(ls []string) []string { ls[1], ls[2] = ls[2], ls[1]; return ls }, "filter line 3 record seq 2: out of order"},
		{"replayed", func(ls []string) []string { return append(ls, ls[0]) }, "filter line 4 record seq 1: out of order or repeated"},
		// The last record has no successor: the host's stop record sealed it.
		{"edited last", func(ls []string) []string {
			ls[2] = strings.Replace(ls[2], "c.example", "x.example", 1)
			return ls
		}, "filter record seq 3: edited: its hash differs from the seal in host record seq 2"},
		{"dropped last", func(ls []string) []string { return ls[:2] }, "filter record seq 3: dropped: host record seq 2 sealed"},
		{"not canonical", func(ls []string) []string { ls[0] = strings.Replace(ls[0], `"seq":1,`, `"seq": 1,`, 1); return ls }, "filter line 1: not in canonical form"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := newTrail(t)
			path := file(dir, names.RoleFilter)
			writeLines(t, path, tc.change(lines(t, path)))
			ps := verifyProblems(t, dir)
			found := false
			for _, p := range ps {
				found = found || strings.Contains(p, tc.want)
			}
			if !found {
				t.Fatalf("problems %q do not name %q", ps, tc.want)
			}
		})
	}
	// The host's own file: an edited start record.
	dir := newTrail(t)
	path := file(dir, SourceHost)
	ls := lines(t, path)
	ls[0] = strings.Replace(ls[0], "alice", "mallory", 1)
	writeLines(t, path, ls)
	if ps := verifyProblems(t, dir); len(ps) != 1 || !strings.Contains(ps[0], "host line 1 record seq 1: edited") {
		t.Fatalf("problems %q", ps)
	}
}

// TestHostileSidecarLines: what a sidecar writes is untrusted; every bad line is
// refused and named, and the good records around it still read.
func TestHostileSidecarLines(t *testing.T) {
	good := func(seq uint64, prev string, fields string) string {
		line, err := encode(Record{Seq: seq, Time: time.Unix(1, 0), Source: names.RoleFilter, Kind: KindFilter, Prev: prev, Fields: json.RawMessage(fields)})
		if err != nil {
			t.Fatal(err)
		}
		return string(line)
	}
	ok1 := good(1, "", `{"method":"GET","host":"a","port":80,"verdict":"allow","status":200,"bytes_up":0,"bytes_down":0,"duration_ms":0}`)
	for _, tc := range []struct{ name, line, want string }{
		{"oversized", `{"seq":2,` + strings.Repeat(" ", MaxLine+10) + `}`, "longer than"},
		{"bad JSON", `{"seq":2,`, "bad record"},
		{"unknown top-level field", strings.Replace(good(2, Hash([]byte(ok1)), `{"method":"GET","host":"b","port":80,"verdict":"allow","status":200,"bytes_up":0,"bytes_down":0,"duration_ms":0}`), `"seq":2,`, `"seq":2,"x":1,`, 1), "unknown field"},
		{"unknown field in fields", good(2, Hash([]byte(ok1)), `{"method":"GET","host":"b","port":80,"verdict":"allow","status":200,"bytes_up":0,"bytes_down":0,"duration_ms":0,"token":"x"}`), "unknown field"},
		{"kind of another source", strings.Replace(good(2, Hash([]byte(ok1)), `{}`), `"kind":"filter"`, `"kind":"push"`, 1), "may not write kind"},
		{"source of another file", strings.Replace(ok1, `"source":"filter"`, `"source":"host"`, 1), "claims source"},
		{"not UTF-8", "\xff\xfe", "not UTF-8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := file(dir, names.RoleFilter)
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				t.Fatal(err)
			}
			writeLines(t, path, []string{ok1, tc.line})
			recs, problems := readAll(t, dir)
			if len(recs) != 1 || len(problems) == 0 || !strings.Contains(problems[0].String(), "filter line 2: ") || !strings.Contains(problems[0].String(), tc.want) {
				t.Fatalf("records %d, problems %v; want line 2 refused with %q", len(recs), problems, tc.want)
			}
		})
	}
	// A symlink in place of the file is not followed.
	dir := t.TempDir()
	if err := os.MkdirAll(SidecarDir(dir, names.RoleFilter), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", file(dir, names.RoleFilter)); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(context.Background(), dir, Options{}, func(Record) error { return nil }); err == nil {
		t.Fatal("a symlinked sidecar file was read")
	}
}

// TestNoControlCharactersReachTheTerminal: strings a sidecar chose (escape sequences,
// direction overrides, C1 controls) come out escaped in both output forms.
func TestNoControlCharactersReachTheTerminal(t *testing.T) {
	dir := t.TempDir()
	w := NewWriter(filepath.Join(dir, "f"), names.RoleFilter, func(err error) { t.Error(err) })
	evil := "a\x1b]0;pwned\x07b\u202ec\u009bd\r\n"
	w.Record(FilterDecision{Method: evil, Host: evil, Reason: evil, Verdict: evil})
	w.Close()
	data, err := os.ReadFile(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := parseLine(names.RoleFilter, bytes.TrimSuffix(data, []byte("\n")))
	if err != nil {
		t.Fatal(err)
	}
	for _, form := range []func(*bytes.Buffer, Record) error{
		func(b *bytes.Buffer, r Record) error { return WriteText(b, r) },
		func(b *bytes.Buffer, r Record) error { return WriteJSON(b, r) },
	} {
		var b bytes.Buffer
		if err := form(&b, r); err != nil {
			t.Fatal(err)
		}
		out := strings.TrimSuffix(b.String(), "\n")
		for _, c := range out {
			if c < ' ' || c >= 0x7f {
				t.Fatalf("output %q holds %U", out, c)
			}
		}
		if !strings.Contains(out, "pwned") {
			t.Fatalf("output %q lost the content", out)
		}
	}
	// The JSON form still decodes to the same strings.
	var b bytes.Buffer
	if err := WriteJSON(&b, r); err != nil {
		t.Fatal(err)
	}
	var back struct{ Fields FilterDecision }
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || back.Fields.Host != evil {
		t.Fatalf("JSON form decodes to %q, %v", back.Fields.Host, err)
	}
}

func TestWriterBoundsRecords(t *testing.T) {
	dir := t.TempDir()
	w := NewWriter(filepath.Join(dir, "f"), names.RoleEgressProxy, func(err error) { t.Error(err) })
	w.Record(ProxyRequest{Route: "r", Method: "GET", Path: "/" + strings.Repeat("x", 1<<20)})
	w.Close()
	data, err := os.ReadFile(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > MaxLine || !strings.Contains(string(data), `xxx..."`) {
		t.Fatalf("record of %d bytes: want the path clipped under %d", len(data), MaxLine)
	}
}

func TestHostRecordsOfOtherKinds(t *testing.T) {
	dir := t.TempDir()
	tr := Open(dir)
	type selfTest struct {
		Result string   `json:"result"`
		Checks []string `json:"checks"`
		Millis float64  `json:"ms"`
	}
	if err := tr.Append(SourceHost, "selftest", selfTest{Result: "pass", Checks: []string{"no default route"}, Millis: 12.5}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Append(SourceHost, "selftest", []string{"not an object"}); err == nil {
		t.Fatal("a non-object record was written")
	}
	if err := tr.Append(names.RoleFilter, "selftest", selfTest{}); err == nil {
		t.Fatal("the host wrote a sidecar kind it may not")
	}
	recs, problems := readAll(t, dir)
	if len(recs) != 1 || len(problems) > 0 {
		t.Fatalf("%d records, %v", len(recs), problems)
	}
	var b bytes.Buffer
	if err := WriteText(&b, recs[0]); err != nil {
		t.Fatal(err)
	}
	if got := b.String(); !strings.Contains(got, `selftest checks=["no default route"] ms=12.5 result=pass`) {
		t.Fatalf("text form %q", got)
	}
}

func TestReadSinceAndFollow(t *testing.T) {
	dir := newTrail(t)
	var recs []Record
	if _, err := Read(context.Background(), dir, Options{Since: time.Now().Add(time.Hour)}, func(r Record) error { recs = append(recs, r); return nil }); err != nil || len(recs) != 0 {
		t.Fatalf("since an hour ahead: %d records, %v", len(recs), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan Record, 16)
	done := make(chan error, 1)
	go func() {
		_, err := Read(ctx, dir, Options{Follow: true, PollInterval: 10 * time.Millisecond}, func(r Record) error { got <- r; return nil })
		done <- err
	}()
	for range 5 {
		<-got
	}
	if err := Open(dir).Append(SourceHost, KindLifecycle, Lifecycle{Event: "resume", User: "bob"}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if !strings.Contains(string(r.Fields), "resume") {
			t.Fatalf("followed record %s", r.Fields)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follow did not see the new record")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestTrailsAndRemove(t *testing.T) {
	state := t.TempDir()
	id := names.Identity("claude-a1b2c3")
	if err := Open(Dir(state, id)).Append(SourceHost, KindLifecycle, Lifecycle{Event: "start", User: "u"}); err != nil {
		t.Fatal(err)
	}
	ids, err := Trails(state)
	if err != nil || len(ids) != 1 || ids[0] != id {
		t.Fatalf("trails %v %v", ids, err)
	}
	if last, err := LastWrite(Dir(state, id)); err != nil || time.Since(last) > time.Minute {
		t.Fatalf("last write %v %v", last, err)
	}
	if err := Remove(state, id); err != nil {
		t.Fatal(err)
	}
	if ids, _ := Trails(state); len(ids) != 0 {
		t.Fatalf("trails after remove: %v", ids)
	}
}

// TestCutShortRecord: a record cut short (a crash mid-write) is not shown while it may
// still be being written, --verify names it, and the next record ends it and goes on
// from the last whole record.
func TestCutShortRecord(t *testing.T) {
	dir := newTrail(t)
	path := file(dir, names.RoleFilter)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"seq":4,"time":"20`)
	f.Close()
	if recs, problems := readAll(t, dir); len(recs) != 5 || len(problems) != 0 {
		t.Fatalf("reading a trail being written: %d records, %v", len(recs), problems)
	}
	if ps := verifyProblems(t, dir); len(ps) != 1 || ps[0] != "filter line 4: unterminated last line" {
		t.Fatalf("verify: %q", ps)
	}
	w := NewWriter(path, names.RoleFilter, func(err error) { t.Error(err) })
	w.Record(FilterDecision{Method: "GET", Host: "e.example", Port: 80, Verdict: "allow", Status: 200})
	w.Close()
	ls := lines(t, path)
	r, err := parseLine(names.RoleFilter, []byte(ls[4]))
	if err != nil || r.Seq != 4 || r.Prev != Hash([]byte(ls[2])) {
		t.Fatalf("record after the cut: %+v %v; want seq 4 chained to seq 3", r, err)
	}
	if ps := verifyProblems(t, dir); len(ps) != 1 || !strings.HasPrefix(ps[0], "filter line 4: bad record") {
		t.Fatalf("verify: %q", ps)
	}
}

// FuzzParseLine: whatever a sidecar writes, a line is either refused or a record whose
// canonical form is exactly that line, of the file's own source and kind.
func FuzzParseLine(f *testing.F) {
	fields, err := canonicalFields(KindFilter, FilterDecision{Method: "GET", Host: "a.example", Port: 80, Verdict: "allow", Status: 200})
	if err != nil {
		f.Fatal(err)
	}
	line, err := encode(Record{Seq: 2, Time: time.Now(), Source: names.RoleFilter, Kind: KindFilter, Prev: Hash(nil), Fields: fields})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(line)
	f.Add([]byte(`{"seq":1,"time":"2026-01-01T00:00:00Z","source":"filter","kind":"filter","prev":"","fields":{}}`))
	f.Add([]byte("{\"seq\":1,\"fields\":{\"host\":\"\\u001b[31m\"}}"))
	f.Fuzz(func(t *testing.T, line []byte) {
		r, err := parseLine(names.RoleFilter, line)
		if err != nil {
			return
		}
		again, err := encode(r)
		if err != nil || !bytes.Equal(again, line) || r.Source != names.RoleFilter || r.Kind != KindFilter || r.Seq == 0 {
			t.Fatalf("accepted %q as %+v (re-encoded %q, %v)", line, r, again, err)
		}
	})
}

// TestFileSizeLimit: a sidecar file beyond MaxFile is read only up to the limit (and
// the rest named), and a writer does not grow it further.
func TestFileSizeLimit(t *testing.T) {
	dir := newTrail(t)
	path := file(dir, names.RoleFilter)
	if err := os.Truncate(path, MaxFile+4096); err != nil { // sparse: zeros after the records
		t.Fatal(err)
	}
	recs, problems := readAll(t, dir)
	if len(recs) != 5 {
		t.Errorf("%d records, want the 5 before the junk", len(recs))
	}
	found := false
	for _, p := range problems {
		found = found || strings.Contains(p.String(), "file exceeds the size limit")
	}
	if !found {
		t.Errorf("problems %v do not name the size limit", problems)
	}
	var failed error
	w := NewWriter(path, names.RoleFilter, func(err error) { failed = err })
	w.Record(FilterDecision{Method: "GET", Host: "x", Port: 80, Verdict: "allow"})
	w.Close()
	if st, _ := os.Stat(path); failed == nil || !strings.Contains(failed.Error(), "is full") || st.Size() != MaxFile+4096 {
		t.Errorf("writer on a full file: %v, size %d", failed, st.Size())
	}
}

// TestProblemHasNoEscapes: a problem quoting a hostile line (an unknown key holding an
// escape sequence) reaches the terminal without control characters.
func TestProblemHasNoEscapes(t *testing.T) {
	p := Problem{Source: "filter", Line: 3, What: "json: unknown field \"\x1b]0;pwn\a\""}
	got := p.String()
	if strings.ContainsAny(got, "\x1b\a") {
		t.Fatalf("problem text carries control characters: %q", got)
	}
	if !strings.Contains(got, "filter line 3: json: unknown field") {
		t.Errorf("problem text %q", got)
	}
}
