// Package audit is a bottle's audit trail: one JSON-lines file per source (the host and
// each of bottle's own sidecars), each record chained to the previous record of its
// source by a SHA-256 hash, merged into one ordered stream for `bottle audit`.
//
// The host writes its own file; each sidecar writes its own file in a directory that is
// bind-mounted into that sidecar only. The host reads the sidecars' files as untrusted
// input: bounded lines and files, a strict schema per kind, canonical bytes only.
package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/bottle-dev/bottle/internal/names"
)

// SourceHost is the host's own source; the other sources are the roles of bottle's own
// sidecars (pipelock writes no trail: see README).
const SourceHost = "host"

// sidecarKinds is the one kind each sidecar source may write.
var sidecarKinds = map[string]string{
	names.RoleFilter:      KindFilter,
	names.RoleEgressProxy: KindRequest,
	names.RoleGitGate:     KindPush,
	names.RoleSupervise:   KindProposal,
}

// Sources lists every source, in the order records of the same instant are merged.
var Sources = []string{SourceHost, names.RoleFilter, names.RoleEgressProxy, names.RoleGitGate, names.RoleSupervise}

// Kinds with a fixed schema.
const (
	KindLifecycle = "lifecycle"
	KindFilter    = "filter"
	KindRequest   = "request"
	KindPush      = "push"
	KindProposal  = "proposal"
)

// Limits on what a reader accepts (and a writer writes).
const (
	// MaxLine bounds one record's line (without its newline).
	MaxLine = 16 << 10
	// MaxFile bounds one source's file; a writer refuses to grow it beyond.
	MaxFile = 64 << 20
	// maxString bounds each string field a typed record carries (writers clip).
	maxString = 1024
)

// Event is the typed payload of a record.
type Event interface{ Kind() string }

// Lifecycle is a host record: a bottle was started, stopped, resumed or removed, and by
// which host user. Heads seals each sidecar source as it was at that moment, so --verify
// notices a sidecar record edited or dropped at the end of its file.
type Lifecycle struct {
	Event string `json:"event"`
	User  string `json:"user"`
	Heads []Head `json:"heads,omitempty"`
}

// Head is the last record of a source: its sequence number and hash.
type Head struct {
	Source string `json:"source"`
	Seq    uint64 `json:"seq"`
	Hash   string `json:"hash"`
}

// FilterDecision is one connection through the builtin filter, recorded when it ends.
type FilterDecision struct {
	Method     string `json:"method"`
	Host       string `json:"host"`
	Port       uint16 `json:"port"`
	Verdict    string `json:"verdict"` // allow or deny
	Reason     string `json:"reason,omitempty"`
	Status     int    `json:"status"`
	BytesUp    int64  `json:"bytes_up"`
	BytesDown  int64  `json:"bytes_down"`
	DurationMS int64  `json:"duration_ms"`
}

// ProxyRequest is one request through the egress-proxy. Path never has the query;
// Credential says whether the route's credential was injected (never its value).
type ProxyRequest struct {
	Route      string `json:"route"`
	Method     string `json:"method"`
	Path       string `json:"path"`
	Status     int    `json:"status"`
	BytesIn    int64  `json:"bytes_in"`
	BytesOut   int64  `json:"bytes_out"`
	DurationMS int64  `json:"duration_ms"`
	Credential bool   `json:"credential"`
	Error      string `json:"error,omitempty"`
}

// Push is one git-gate push decision.
type Push struct {
	Remote  string      `json:"remote"`
	Refs    []RefUpdate `json:"refs"`
	Verdict string      `json:"verdict"` // allow or deny
	Reason  string      `json:"reason,omitempty"`
}

// RefUpdate is one ref a push updates.
type RefUpdate struct {
	Ref string `json:"ref"`
	Old string `json:"old"`
	New string `json:"new"`
}

// Proposal is one proposal the agent made to the supervise sidecar and the answer it
// got: approved or denied (a person's decision, or the timeout), or refused (invalid,
// never shown to a person; N is 0 then).
type Proposal struct {
	N             int    `json:"n"`
	Change        string `json:"change"`
	Justification string `json:"justification"`
	Outcome       string `json:"outcome"`
	Reason        string `json:"reason,omitempty"`
}

func (Proposal) Kind() string       { return KindProposal }
func (Lifecycle) Kind() string      { return KindLifecycle }
func (FilterDecision) Kind() string { return KindFilter }
func (ProxyRequest) Kind() string   { return KindRequest }
func (Push) Kind() string           { return KindPush }

// typed decodes the fields of a kind with a schema strictly; other kinds (host only)
// are any JSON object.
func typed(kind string) any {
	switch kind {
	case KindLifecycle:
		return &Lifecycle{}
	case KindFilter:
		return &FilterDecision{}
	case KindRequest:
		return &ProxyRequest{}
	case KindPush:
		return &Push{}
	case KindProposal:
		return &Proposal{}
	}
	return nil
}

// Record is one line of a source's file.
type Record struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Source string    `json:"source"`
	Kind   string    `json:"kind"`
	// Prev is the hash of the source's previous record ("" for its first).
	Prev   string          `json:"prev"`
	Fields json.RawMessage `json:"fields"`
}

// Hash is the hex SHA-256 of a record's canonical line (without its newline).
func Hash(line []byte) string {
	sum := sha256.Sum256(line)
	return hex.EncodeToString(sum[:])
}

// encode renders r as its canonical line (compact JSON, fixed key order, UTC time).
func encode(r Record) ([]byte, error) {
	r.Time = r.Time.UTC()
	line, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	if len(line) > MaxLine {
		return nil, fmt.Errorf("record of %d bytes exceeds %d", len(line), MaxLine)
	}
	return line, nil
}

// canonicalFields renders fields as the canonical JSON object a reader re-creates: a
// typed kind through its struct (strings clipped), any other kind through a generic
// object (sorted keys, numbers kept as written).
func canonicalFields(kind string, fields any) (json.RawMessage, error) {
	if e, ok := fields.(Event); ok {
		fields = clip(e)
	}
	raw, err := json.Marshal(fields)
	if err != nil {
		return nil, err
	}
	return decodeFields(kind, raw)
}

// decodeFields decodes raw strictly and re-encodes it canonically.
func decodeFields(kind string, raw []byte) (json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	v := typed(kind)
	var obj map[string]any
	if v == nil {
		v = &obj
	}
	if err := dec.Decode(v); err != nil {
		return nil, fmt.Errorf("fields of kind %s: %w", kind, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("fields of kind %s: trailing data", kind)
	}
	if typed(kind) == nil && obj == nil {
		return nil, fmt.Errorf("fields of kind %s: not a JSON object", kind)
	}
	return json.Marshal(v)
}

// clip bounds the strings of a typed event, so an agent-chosen path or host cannot make
// a record exceed MaxLine.
func clip(e Event) Event {
	switch v := e.(type) {
	case FilterDecision:
		v.Method, v.Host, v.Reason = clipString(v.Method), clipString(v.Host), clipString(v.Reason)
		return v
	case ProxyRequest:
		v.Route, v.Method, v.Path, v.Error = clipString(v.Route), clipString(v.Method), clipString(v.Path), clipString(v.Error)
		return v
	case Push:
		v.Remote, v.Reason = clipString(v.Remote), clipString(v.Reason)
		if len(v.Refs) > 32 {
			v.Reason = clipString(fmt.Sprintf("%s (%d more refs not listed)", v.Reason, len(v.Refs)-32))
			v.Refs = v.Refs[:32]
		}
		refs := make([]RefUpdate, len(v.Refs))
		for i, r := range v.Refs {
			refs[i] = RefUpdate{Ref: clipString(r.Ref), Old: clipString(r.Old), New: clipString(r.New)}
		}
		v.Refs = refs
		return v
	}
	return e
}

func clipString(s string) string {
	if len(s) <= maxString {
		return s
	}
	s = s[:maxString]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "..."
}

// errNotCanonical marks a line whose bytes are not what its writer would have written.
var errNotCanonical = errors.New("not in canonical form (edited?)")

// parseLine decodes one line of source strictly: known keys only, the source's own
// kinds, a schema per kind, and the exact canonical bytes.
func parseLine(source string, line []byte) (Record, error) {
	if len(line) > MaxLine {
		return Record{}, fmt.Errorf("line of more than %d bytes", MaxLine)
	}
	if !utf8.Valid(line) {
		return Record{}, errors.New("not UTF-8")
	}
	var r Record
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return Record{}, fmt.Errorf("bad record: %w", err)
	}
	if dec.More() {
		return Record{}, errors.New("bad record: trailing data")
	}
	if r.Source != source {
		return Record{}, fmt.Errorf("record claims source %q in the file of %s", r.Source, source)
	}
	if err := checkKind(source, r.Kind); err != nil {
		return Record{}, err
	}
	if r.Seq == 0 {
		return Record{}, errors.New("sequence number 0")
	}
	if r.Prev != "" && !isHash(r.Prev) {
		return Record{}, errors.New("prev is not a SHA-256 hash")
	}
	fields, err := decodeFields(r.Kind, r.Fields)
	if err != nil {
		return Record{}, err
	}
	r.Fields = fields
	again, err := encode(r)
	if err != nil {
		return Record{}, err
	}
	if !bytes.Equal(again, line) {
		return Record{}, errNotCanonical
	}
	return r, nil
}

// checkKind accepts the kinds a source may write: a sidecar its one kind, the host any
// well-formed kind but the sidecars'.
func checkKind(source, kind string) error {
	if want, sidecar := sidecarKinds[source]; sidecar && kind != want {
		return fmt.Errorf("source %s may not write kind %q", source, kind)
	}
	for _, k := range sidecarKinds {
		if source == SourceHost && kind == k {
			return fmt.Errorf("source %s may not write kind %q", source, kind)
		}
	}
	if !validKind(kind) {
		return fmt.Errorf("invalid kind %q", kind)
	}
	return nil
}

// validKind accepts host kinds: short lowercase words with dots and dashes.
func validKind(k string) bool {
	if k == "" || len(k) > 32 {
		return false
	}
	for _, c := range k {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '.' && c != '-' && c != '_' {
			return false
		}
	}
	return true
}

func isHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && s == strings.ToLower(s)
}

// strictUnmarshal decodes raw into v, refusing unknown fields.
func strictUnmarshal(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}
