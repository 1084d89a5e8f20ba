package gitgate

import (
	"errors"
	"fmt"
	"io"
)

// maxPktPayload is the largest pkt-line payload git accepts (65520 - 4).
const maxPktPayload = 65516

// errFlush is returned by readPkt for a flush packet (0000); delim (0001) and
// response-end (0002) packets come back as errDelim and errResponseEnd.
var (
	errFlush       = errors.New("flush packet")
	errDelim       = errors.New("delim packet")
	errResponseEnd = errors.New("response-end packet")
)

// readPkt reads one pkt-line and returns its payload (without the length prefix).
func readPkt(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("truncated pkt-line length: %w", err)
		}
		return nil, err
	}
	n := 0
	for _, c := range hdr {
		v, ok := hexVal(c)
		if !ok {
			return nil, fmt.Errorf("malformed pkt-line length %q", hdr[:])
		}
		n = n<<4 | v
	}
	switch n {
	case 0:
		return nil, errFlush
	case 1:
		return nil, errDelim
	case 2:
		return nil, errResponseEnd
	case 3:
		return nil, fmt.Errorf("malformed pkt-line length %q", hdr[:])
	}
	if n-4 > maxPktPayload {
		return nil, fmt.Errorf("pkt-line of %d bytes exceeds the protocol limit", n)
	}
	buf := make([]byte, n-4)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("truncated pkt-line: %w", err)
	}
	return buf, nil
}

func hexVal(c byte) (int, bool) {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0'), true
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10, true
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10, true
	}
	return 0, false
}

// pkt encodes payload as one pkt-line. Callers keep payloads under maxPktPayload.
func pkt(payload string) []byte {
	return append(fmt.Appendf(nil, "%04x", len(payload)+4), payload...)
}

// appendPkt appends payload as one pkt-line to b.
func appendPkt(b []byte, payload []byte) []byte {
	b = fmt.Appendf(b, "%04x", len(payload)+4)
	return append(b, payload...)
}

const flushPkt = "0000"

// trimLF drops one trailing newline, as git does for text pkt-lines.
func trimLF(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		return b[:n-1]
	}
	return b
}
