package audit

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// WriteJSON writes r as one JSON line with every non-ASCII character escaped, so that no
// control or direction-changing character a sidecar wrote reaches a terminal.
func WriteJSON(w io.Writer, r Record) error {
	line, err := encode(r)
	if err != nil {
		return err
	}
	_, err = w.Write(append(asciiJSON(line), '\n'))
	return err
}

// asciiJSON escapes every non-ASCII rune of valid JSON (they only occur inside strings).
func asciiJSON(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		switch {
		case r < utf8.RuneSelf:
			out = append(out, b[0])
		case r > 0xffff:
			r1, r2 := utf16Surrogates(r)
			out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
		default:
			out = fmt.Appendf(out, `\u%04x`, r)
		}
		b = b[size:]
	}
	return out
}

func utf16Surrogates(r rune) (rune, rune) {
	r -= 0x10000
	return 0xd800 + (r>>10)&0x3ff, 0xdc00 + r&0x3ff
}

// WriteText writes r as one human-readable line; every string a record carries is
// shown quoted with escapes when it holds anything but printable characters.
func WriteText(w io.Writer, r Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-12s ", r.Time.UTC().Format("2006-01-02T15:04:05.000Z"), r.Source)
	switch r.Kind {
	case KindLifecycle:
		var l Lifecycle
		if err := strictUnmarshal(r.Fields, &l); err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s by %s", safe(l.Event), safe(l.User))
	case KindFilter:
		var f FilterDecision
		if err := strictUnmarshal(r.Fields, &f); err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %s %s:%d status=%d up=%d down=%d %s", safe(f.Verdict), safe(f.Method), safe(f.Host), f.Port, f.Status, f.BytesUp, f.BytesDown, ms(f.DurationMS))
		if f.Reason != "" {
			b.WriteString(" reason=" + strconv.QuoteToASCII(f.Reason))
		}
	case KindRequest:
		var p ProxyRequest
		if err := strictUnmarshal(r.Fields, &p); err != nil {
			return err
		}
		cred := "no"
		if p.Credential {
			cred = "yes"
		}
		fmt.Fprintf(&b, "%s %s %s status=%d in=%d out=%d %s credential=%s", safe(p.Route), safe(p.Method), safe(p.Path), p.Status, p.BytesIn, p.BytesOut, ms(p.DurationMS), cred)
		if p.Error != "" {
			b.WriteString(" error=" + strconv.QuoteToASCII(p.Error))
		}
	case KindPush:
		var p Push
		if err := strictUnmarshal(r.Fields, &p); err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s push %s", safe(p.Verdict), safe(p.Remote))
		for _, ref := range p.Refs {
			fmt.Fprintf(&b, " %s %s..%s", safe(ref.Ref), safe(short(ref.Old)), safe(short(ref.New)))
		}
		if p.Reason != "" {
			b.WriteString(" reason=" + strconv.QuoteToASCII(p.Reason))
		}
	case KindProposal:
		var p Proposal
		if err := strictUnmarshal(r.Fields, &p); err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s proposal %d %s justification=%s", safe(p.Outcome), p.N, safe(p.Change), strconv.QuoteToASCII(p.Justification))
		if p.Reason != "" {
			b.WriteString(" reason=" + strconv.QuoteToASCII(p.Reason))
		}
	default:
		var m map[string]any
		if err := json.Unmarshal(r.Fields, &m); err != nil {
			return err
		}
		b.WriteString(safe(r.Kind))
		for _, k := range slices.Sorted(maps.Keys(m)) {
			v, _ := json.Marshal(m[k])
			s := string(v)
			if str, ok := m[k].(string); ok {
				s = safe(str)
			}
			fmt.Fprintf(&b, " %s=%s", safe(k), s)
		}
	}
	b.WriteString("\n")
	_, err := io.WriteString(w, asciiSafe(b.String()))
	return err
}

// safe shows s as it is when it is a plain word, else quoted with escapes.
func safe(s string) string {
	if s == "" {
		return `""`
	}
	for _, c := range s {
		if c == ' ' || c == '"' || c == '\\' || !unicode.IsPrint(c) || c >= utf8.RuneSelf {
			return strconv.QuoteToASCII(s)
		}
	}
	return s
}

// asciiSafe is a last guard: no control character but the newline leaves WriteText.
func asciiSafe(s string) string {
	return strings.Map(func(c rune) rune {
		if c == '\n' || (c >= ' ' && c < 0x7f) {
			return c
		}
		return '?'
	}, s)
}

func short(hash string) string {
	if len(hash) > 12 {
		return hash[:12]
	}
	return hash
}

func ms(d int64) string { return (time.Duration(d) * time.Millisecond).String() }
