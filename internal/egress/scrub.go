package egress

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
)

// CredentialPlaceholder is the non-secret value the agent holds instead of a routed
// credential (plan.ClaudePlaceholderToken). The egress-proxy writes it, in the same
// encoding, wherever an upstream reflects the real credential.
const CredentialPlaceholder = "egress-proxy-placeholder"

// minDerivedLen is the shortest encoded or derived form of a credential that is
// scrubbed: shorter strings occur in ordinary text and would be mangled. The raw
// credential is scrubbed whatever its length.
const minDerivedLen = 8

// scrubber replaces every form of one credential in response headers and bodies.
// At each position the longest pattern wins; matching resumes after a replacement.
type scrubber struct {
	pats, repls [][]byte
	// heads and masks hold each pattern's first (up to) 8 bytes, for a quick reject.
	heads, masks []uint64
	maxLen       int
	// Scan filters, on hashes of 4 bytes: first4 of each pattern's first 4, grams of
	// its 4 at offsets 0..stride-1 (see candidate). stride is 0 if a pattern is
	// shorter than 4 bytes: then every position is checked.
	first4, grams bitset
	stride        int
}

// maxStride bounds the sampling stride of the scan.
const maxStride = 32

// bitset is a set of 16-bit values.
type bitset [1 << 16 / 8]byte

func (b *bitset) set(v uint16)      { b[v>>3] |= 1 << (v & 7) }
func (b *bitset) has(v uint16) bool { return b[v>>3]&(1<<(v&7)) != 0 }

// quad hashes the first 4 bytes of p.
func quad(p []byte) uint16 { return uint16(binary.LittleEndian.Uint32(p) * 0x9e3779b1 >> 16) }

// credentialEncodings are the text encodings in which an upstream realistically
// reflects a header value: URL query and path escaping, JSON string escaping (Go's,
// which also escapes <>&, and the common "\/" variant).
var credentialEncodings = []func(string) string{
	url.QueryEscape,
	url.PathEscape,
	jsonEscape,
	func(s string) string { return strings.ReplaceAll(jsonEscape(s), "/", `\/`) },
}

// newScrubber returns the scrubber of a credential sent as "<scheme> <token>". It
// covers the raw token (so also the whole header value), its text encodings, and its
// standard and URL base64 forms both alone (padded) and at any offset inside a longer
// base64 text, such as a base64 "user:token" or a whole encoded header block. For the
// Basic scheme it also covers the decoded "user:password" and the password.
func newScrubber(scheme, token string) *scrubber {
	s := &scrubber{}
	secrets := []string{token}
	if strings.EqualFold(scheme, "Basic") {
		if dec, err := base64.StdEncoding.DecodeString(token); err == nil {
			if _, pass, ok := strings.Cut(string(dec), ":"); ok {
				secrets = append(secrets, string(dec), pass)
			}
		}
	}
	seen := map[string]bool{}
	add := func(pat, repl string) {
		if seen[pat] || (len(pat) < minDerivedLen && pat != token) || pat == "" {
			return
		}
		seen[pat] = true
		s.pats = append(s.pats, []byte(pat))
		s.repls = append(s.repls, []byte(repl))
		var head [8]byte
		k := copy(head[:], pat)
		s.heads = append(s.heads, binary.LittleEndian.Uint64(head[:]))
		s.masks = append(s.masks, ^uint64(0)>>(64-8*k))
		s.maxLen = max(s.maxLen, len(pat))
	}
	for _, sec := range secrets {
		add(sec, CredentialPlaceholder)
		for _, enc := range credentialEncodings {
			add(enc(sec), enc(CredentialPlaceholder))
		}
		for _, e := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
			add(e.EncodeToString([]byte(sec)), e.EncodeToString([]byte(CredentialPlaceholder)))
			for off := range 3 {
				add(base64Core(e, sec, off), base64Core(e, CredentialPlaceholder, off))
			}
		}
	}
	minLen := s.maxLen
	for _, p := range s.pats {
		minLen = min(minLen, len(p))
	}
	if minLen >= 4 {
		s.stride = min(maxStride, minLen-3)
		for _, p := range s.pats {
			s.first4.set(quad(p))
			for off := range s.stride {
				s.grams.set(quad(p[off:]))
			}
		}
	}
	return s
}

// base64Core returns the base64 characters that depend only on s when s starts off
// bytes into the encoded data: every alignment of s inside a longer text contains one
// of the three cores.
func base64Core(e *base64.Encoding, s string, off int) string {
	enc := e.WithPadding(base64.NoPadding).EncodeToString(append(make([]byte, off), s...))
	return enc[(8*off+5)/6 : 8*(off+len(s))/6]
}

func jsonEscape(s string) string {
	b, _ := json.Marshal(s) // a string always marshals
	return string(b[1 : len(b)-1])
}

// scrub appends src with every pattern replaced to dst. Unless final, it holds back
// the shortest tail of src that may begin a pattern and returns its length, so a
// match split across writes is still found; everything before it is emitted at once.
func (s *scrubber) scrub(dst, src []byte, final bool) ([]byte, int) {
	n, done := len(src), 0
	for i := 0; i < n; i++ {
		if i = s.candidate(src, i); i == n {
			break
		}
		best, pending := s.at(src[i:], final)
		if pending {
			return append(dst, src[done:i]...), n - i
		}
		if best < 0 {
			continue
		}
		// A form starting inside this match and reaching past it goes too: crafted
		// bytes echoed before the credential must not save a part of it.
		end := i + len(s.pats[best])
		for k := i + 1; k < end; k++ {
			b, pending := s.at(src[k:], final)
			if pending {
				return append(dst, src[done:i]...), n - i
			}
			if b >= 0 {
				end = max(end, k+len(s.pats[b]))
			}
		}
		dst = append(append(dst, src[done:i]...), s.repls[best]...)
		done, i = end, end-1
	}
	return append(dst, src[done:]...), 0
}

// candidate returns the first position from i on where a pattern may start (len(src)
// if none). It hashes every stride-th 4 bytes: a pattern starting at p has one of its
// first stride quads at every sample from p to p+stride-1; only blocks whose sample is
// such a quad are checked position by position. Positions less than 4 bytes from the
// end are always candidates.
func (s *scrubber) candidate(src []byte, i int) int {
	n, st := len(src), s.stride
	if st == 0 {
		return i
	}
	for ; i+st+2 < n; i += st {
		if !s.grams.has(quad(src[i+st-1:])) {
			continue
		}
		for p := i; p < i+st; p++ {
			if s.first4.has(quad(src[p:])) {
				return p
			}
		}
	}
	for ; i+3 < n; i++ {
		if s.first4.has(quad(src[i:])) {
			return i
		}
	}
	return min(i, n)
}

// at returns the index of the longest pattern src starts with (-1 if none) and, unless
// final, whether a pattern longer than src starts with all of src.
func (s *scrubber) at(src []byte, final bool) (best int, pending bool) {
	best = -1
	var head uint64
	if len(src) >= 8 {
		head = binary.LittleEndian.Uint64(src)
	}
	for j, p := range s.pats {
		if len(src) >= 8 && head&s.masks[j] != s.heads[j] {
			continue
		}
		switch {
		case len(p) <= len(src):
			if (best < 0 || len(p) > len(s.pats[best])) && bytes.Equal(src[:len(p)], p) {
				best = j
			}
		case !final && bytes.HasPrefix(p, src):
			pending = true
		}
	}
	return best, pending
}

// string returns v scrubbed.
func (s *scrubber) string(v string) string {
	if out, _ := s.scrub(nil, []byte(v), true); string(out) != v {
		return string(out)
	}
	return v
}

// header scrubs every value of h in place.
func (s *scrubber) header(h map[string][]string) {
	for _, vs := range h {
		for i, v := range vs {
			vs[i] = s.string(v)
		}
	}
}

// error returns err, or an error with its text scrubbed if that quotes the credential:
// Go's HTTP client quotes malformed upstream header lines in its errors, which reach
// the agent's 502 and the log. The replacement does not wrap err (its text would leak
// through errors.As).
func (s *scrubber) error(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	if msg := s.string(err.Error()); msg != err.Error() {
		return errors.New(msg)
	}
	return err
}

// scrubBody scrubs a response body as it streams.
type scrubBody struct {
	resp *http.Response
	body io.ReadCloser
	s    *scrubber
	in   []byte // held tail plus fresh input
	out  []byte // scrubbed output that did not fit the caller's buffer
	err  error  // from body, returned once in and out are drained
}

// scrubReadSize bounds one read from the upstream body (TLS records are 16 KiB).
const scrubReadSize = 32 << 10

func (b *scrubBody) Read(p []byte) (int, error) {
	if len(b.out) > 0 || len(p) == 0 {
		n := copy(p, b.out)
		b.out = b.out[n:]
		return n, nil
	}
	if b.in == nil {
		size := scrubReadSize
		if cl := b.resp.ContentLength; cl >= 0 && cl < scrubReadSize {
			size = int(cl) + 1 // +1 lets the read see EOF
		}
		b.in = make([]byte, 0, size+b.s.maxLen)
	}
	for {
		if b.err != nil && len(b.in) == 0 {
			return 0, b.err
		}
		if b.err == nil {
			// Read no more than p holds, so the output lands in p without a copy.
			held := len(b.in)
			n, err := b.body.Read(b.in[held:min(cap(b.in), held+max(len(p)-held, 1))])
			b.in, b.err = b.in[:held+n], b.s.error(err)
		}
		out, keep := b.s.scrub(p[:0:len(p)], b.in, b.err != nil)
		b.in = b.in[:copy(b.in, b.in[len(b.in)-keep:])]
		if len(out) > 0 && &out[0] != &p[0] { // replacements made it outgrow p
			n := copy(p, out)
			b.out = out[n:]
			return n, nil
		}
		if len(out) > 0 {
			return len(out), nil
		}
	}
}

// Close closes the upstream body, which fills resp.Trailer; the trailers are scrubbed
// before the reverse proxy copies them.
func (b *scrubBody) Close() error {
	err := b.body.Close()
	b.s.header(b.resp.Trailer)
	return err
}

// scrubTransport keeps a route's credential out of everything the upstream answers:
// headers (1xx, final, trailers) and bodies. It refuses what it cannot scrub: encoded
// (compressed) bodies, although the request asked for identity, and protocol upgrades,
// whose frames could not be rewritten.
type scrubTransport struct {
	next http.RoundTripper
	s    *scrubber
}

func (t *scrubTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	// The reverse proxy forwards 1xx headers from its own trace hook, which runs after
	// this one and sees the scrubbed map.
	ctx := httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(_ int, h textproto.MIMEHeader) error { t.s.header(h); return nil },
	})
	resp, err := t.next.RoundTrip(req.WithContext(ctx))
	if err != nil {
		return nil, t.s.error(err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body.Close()
		return nil, errors.New("protocol upgrades are not proxied: the upgraded stream could not be scrubbed of the credential")
	}
	t.s.header(resp.Header) // first: the refusal below quotes a header
	if ce := encoded(resp.Header); ce != "" && resp.Body != http.NoBody {
		resp.Body.Close()
		return nil, fmt.Errorf("upstream answered with Content-Encoding %q although identity was asked; an encoded body cannot be scrubbed of the credential", ce)
	}
	if resp.Body == http.NoBody {
		return resp, nil
	}
	batch := resp.ContentLength >= 0 && !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	resp.Body = &scrubBody{resp: resp, body: resp.Body, s: t.s}
	if batch {
		// A body of known length fills the copy buffer instead of passing one TLS record
		// at a time: it then passes in a few large writes, each a costly syscall inside
		// gVisor. Streams (unknown length, event streams) pass on as they arrive.
		resp.Body = fillingBody{resp.Body}
	}
	// A replacement may change the length. resp.ContentLength stays: the reverse proxy
	// reads it to flush streams (unknown length) at once and batch the rest, and the
	// server then sends a small body with its real length.
	resp.Header.Del("Content-Length")
	return resp, nil
}

// encoded returns the first content coding of h other than identity, or "".
func encoded(h http.Header) string {
	for _, v := range h.Values("Content-Encoding") {
		for c := range strings.SplitSeq(v, ",") {
			if c = strings.TrimSpace(c); c != "" && !strings.EqualFold(c, "identity") {
				return c
			}
		}
	}
	return ""
}
