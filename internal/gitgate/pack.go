package gitgate

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"
	"strings"
)

// Pack object types (gitformat-pack).
const (
	objCommit   = 1
	objTree     = 2
	objBlob     = 3
	objTag      = 4
	objOfsDelta = 6
	objRefDelta = 7
)

const (
	// maxKeptObject caps one commit or tag object (or a delta that may produce one)
	// held in memory while reading a pack.
	maxKeptObject = 64 << 20
	// maxPendingDeltas caps the REF_DELTA data kept for bases that appear later in the
	// pack (or outside it: thin packs). Beyond it such deltas are skipped, which can
	// only make a fast-forward unprovable, never a force push pass.
	maxPendingDeltas = 64 << 20
)

// commitGraph holds the parents of every commit object found in a pushed pack.
type commitGraph struct {
	parents map[string][]string
}

// packEntry is what the reader remembers about one object by pack offset.
type packEntry struct {
	typ  int    // resolved type (objCommit..objTag), 0 when unknown
	data []byte // content, kept for commits and tags only
}

type pendingDelta struct {
	base  string
	delta []byte
}

// countingReader tracks the pack offset. It implements io.ByteReader, so zlib and
// flate read exactly their stream and never past it.
type countingReader struct {
	r *bufio.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.n++
	}
	return b, err
}

// readPackCommits reads a packfile (as sent by git push) and returns the parents of
// every commit it contains. Trees and blobs are inflated and dropped. hashLen is 20
// (SHA-1) or 32 (SHA-256). The trailing checksum is not verified: the upstream's
// index-pack does that, and a corrupted pack fails there.
func readPackCommits(r io.Reader, hashLen int) (*commitGraph, error) {
	cr := &countingReader{r: bufio.NewReaderSize(r, 64<<10)}
	var hdr [12]byte
	if _, err := io.ReadFull(cr, hdr[:]); err != nil {
		return nil, fmt.Errorf("pack header: %w", err)
	}
	if string(hdr[:4]) != "PACK" {
		return nil, fmt.Errorf("pack: bad signature")
	}
	if v := binary.BigEndian.Uint32(hdr[4:8]); v != 2 && v != 3 {
		return nil, fmt.Errorf("pack: unsupported version %d", v)
	}
	count := binary.BigEndian.Uint32(hdr[8:12])

	g := &commitGraph{parents: map[string][]string{}}
	byOffset := map[int64]*packEntry{}
	byID := map[string]*packEntry{} // commits and tags, for REF_DELTA bases
	var pending []pendingDelta
	pendingBytes := 0
	var zr io.ReadCloser

	keep := func(typ int, data []byte) error {
		id := objectID(typ, data, hashLen)
		e := &packEntry{typ: typ, data: data}
		byID[id] = e
		if typ == objCommit {
			ps, err := commitParents(data, hashLen)
			if err != nil {
				return fmt.Errorf("malformed commit %s: %w; git-gate takes commits only as git writes them", id, err)
			}
			g.parents[id] = ps
		}
		return nil
	}

	for i := uint32(0); i < count; i++ {
		offset := cr.n
		typ, size, err := readObjHeader(cr)
		if err != nil {
			return nil, fmt.Errorf("pack object %d: %w", i, err)
		}
		var baseOff int64 = -1
		var baseID string
		switch typ {
		case objOfsDelta:
			d, err := readOfsDelta(cr)
			if err != nil {
				return nil, fmt.Errorf("pack object %d: %w", i, err)
			}
			baseOff = offset - d
		case objRefDelta:
			id := make([]byte, hashLen)
			if _, err := io.ReadFull(cr, id); err != nil {
				return nil, fmt.Errorf("pack object %d: %w", i, err)
			}
			baseID = hex.EncodeToString(id)
		case objCommit, objTree, objBlob, objTag:
		default:
			return nil, fmt.Errorf("pack object %d: bad type %d", i, typ)
		}
		if zr == nil {
			zr, err = zlib.NewReader(cr)
		} else {
			err = zr.(zlib.Resetter).Reset(cr, nil)
		}
		if err != nil {
			return nil, fmt.Errorf("pack object %d: %w", i, err)
		}

		// Decide whether the inflated bytes are worth keeping.
		want := false
		var base *packEntry
		switch typ {
		case objCommit, objTag:
			want = true
		case objOfsDelta:
			base = byOffset[baseOff]
			if base == nil {
				return nil, fmt.Errorf("pack object %d: delta base offset %d not found", i, baseOff)
			}
			want = base.typ == objCommit || base.typ == objTag
		case objRefDelta:
			base = byID[baseID]
			// Unknown base: a later object or (thin pack) one outside the pack.
			want = base != nil || pendingBytes+int(size) <= maxPendingDeltas
		}
		if want && size > maxKeptObject {
			return nil, fmt.Errorf("pack object %d: %d bytes is too large for a commit", i, size)
		}
		var data []byte
		if want {
			data, err = io.ReadAll(io.LimitReader(zr, int64(size)+1))
		} else {
			_, err = io.Copy(io.Discard, zr)
		}
		if err == nil {
			err = drainZlib(zr)
		}
		if err != nil {
			return nil, fmt.Errorf("pack object %d: inflate: %w", i, err)
		}
		if want && uint64(len(data)) != size {
			return nil, fmt.Errorf("pack object %d: size mismatch", i)
		}

		entry := &packEntry{}
		byOffset[offset] = entry
		switch typ {
		case objCommit, objTag:
			entry.typ = typ
			if err := keep(typ, data); err != nil {
				return nil, err
			}
			entry.data = data
		case objTree, objBlob:
			entry.typ = typ
		case objOfsDelta, objRefDelta:
			switch {
			case base != nil && base.data != nil:
				out, err := applyDelta(base.data, data)
				if err != nil {
					return nil, fmt.Errorf("pack object %d: %w", i, err)
				}
				entry.typ, entry.data = base.typ, out
				if err := keep(base.typ, out); err != nil {
					return nil, err
				}
			case base != nil:
				entry.typ = base.typ // a tree or blob delta
			case want:
				pending = append(pending, pendingDelta{base: baseID, delta: data})
				pendingBytes += len(data)
			}
		}
	}
	if zr != nil {
		_ = zr.Close()
	}
	// Resolve REF_DELTAs whose base came later, until nothing changes.
	for progress := true; progress && len(pending) > 0; {
		progress = false
		rest := pending[:0]
		for _, p := range pending {
			base := byID[p.base]
			if base == nil {
				rest = append(rest, p)
				continue
			}
			out, err := applyDelta(base.data, p.delta)
			if err != nil {
				return nil, err
			}
			if err := keep(base.typ, out); err != nil {
				return nil, err
			}
			progress = true
		}
		pending = rest
	}
	return g, nil
}

// drainZlib reads the stream to its end so its checksum is consumed and verified.
func drainZlib(zr io.Reader) error {
	var b [1]byte
	n, err := zr.Read(b[:])
	if n > 0 {
		return fmt.Errorf("object longer than its header says")
	}
	if errors.Is(err, io.EOF) {
		return nil
	}
	if err == nil {
		return drainZlib(zr)
	}
	return err
}

func readObjHeader(r io.ByteReader) (typ int, size uint64, err error) {
	c, err := r.ReadByte()
	if err != nil {
		return 0, 0, err
	}
	typ = int(c>>4) & 7
	size = uint64(c & 0x0f)
	shift := 4
	for c&0x80 != 0 {
		if shift > 57 {
			return 0, 0, fmt.Errorf("object size overflows")
		}
		if c, err = r.ReadByte(); err != nil {
			return 0, 0, err
		}
		size |= uint64(c&0x7f) << shift
		shift += 7
	}
	return typ, size, nil
}

func readOfsDelta(r io.ByteReader) (int64, error) {
	c, err := r.ReadByte()
	if err != nil {
		return 0, err
	}
	off := int64(c & 0x7f)
	for c&0x80 != 0 {
		if off > 1<<55 {
			return 0, fmt.Errorf("delta offset overflows")
		}
		if c, err = r.ReadByte(); err != nil {
			return 0, err
		}
		off = (off+1)<<7 | int64(c&0x7f)
	}
	return off, nil
}

func objectID(typ int, data []byte, hashLen int) string {
	var h hash.Hash
	if hashLen == sha256.Size {
		h = sha256.New()
	} else {
		h = sha1.New()
	}
	name := map[int]string{objCommit: "commit", objTree: "tree", objBlob: "blob", objTag: "tag"}[typ]
	h.Write([]byte(name + " " + strconv.Itoa(len(data)) + "\x00"))
	h.Write(data)
	return hex.EncodeToString(h.Sum(nil))
}

// commitParents returns a commit's parents as git reads them: only the "parent"
// lines right after the first line, "tree <id>". The fast-forward proof must see the
// parents git sees, so a commit of any other shape is refused, not guessed at: tree,
// parent, author or committer lines elsewhere, author and committer missing, ids not
// lowercase hex of the right length, a NUL or no blank line ending the header.
func commitParents(data []byte, hashLen int) ([]string, error) {
	header, _, ok := bytes.Cut(data, []byte("\n\n"))
	if !ok {
		return nil, errors.New("no blank line ends the header")
	}
	if bytes.IndexByte(header, 0) >= 0 {
		return nil, errors.New("NUL byte in the header")
	}
	lines := strings.Split(string(header), "\n")
	id := func(line, key string) (string, bool) {
		v, ok := strings.CutPrefix(line, key+" ")
		return v, ok && len(v) == 2*hashLen && isHex(v)
	}
	if _, ok := id(lines[0], "tree"); !ok {
		return nil, errors.New(`the first line is not "tree <id>"`)
	}
	i := 1
	var parents []string
	for ; i < len(lines) && strings.HasPrefix(lines[i], "parent "); i++ {
		p, ok := id(lines[i], "parent")
		if !ok {
			return nil, fmt.Errorf("malformed parent line %q", truncate(lines[i], 100))
		}
		parents = append(parents, p)
	}
	if i+1 >= len(lines) || !strings.HasPrefix(lines[i], "author ") || !strings.HasPrefix(lines[i+1], "committer ") {
		return nil, errors.New("author and committer lines do not follow tree and parents")
	}
	for _, line := range lines[i+2:] {
		switch key, _, _ := strings.Cut(line, " "); key {
		case "tree", "parent", "author", "committer":
			return nil, fmt.Errorf("a %q line after the committer line (git would not read it as one)", key)
		}
	}
	return parents, nil
}

// applyDelta applies a git delta to base.
func applyDelta(base, delta []byte) ([]byte, error) {
	d := bytes.NewReader(delta)
	srcSize, err := binary.ReadUvarint(d)
	if err != nil || srcSize != uint64(len(base)) {
		return nil, fmt.Errorf("delta: base size mismatch")
	}
	dstSize, err := binary.ReadUvarint(d)
	if err != nil || dstSize > maxKeptObject {
		return nil, fmt.Errorf("delta: bad result size")
	}
	out := make([]byte, 0, dstSize)
	for {
		op, err := d.ReadByte()
		if err == io.EOF {
			break
		}
		switch {
		case op&0x80 != 0:
			var off, n uint64
			for bit := 0; bit < 4; bit++ {
				if op&(1<<bit) != 0 {
					b, err := d.ReadByte()
					if err != nil {
						return nil, fmt.Errorf("delta: truncated copy")
					}
					off |= uint64(b) << (8 * bit)
				}
			}
			for bit := 0; bit < 3; bit++ {
				if op&(0x10<<bit) != 0 {
					b, err := d.ReadByte()
					if err != nil {
						return nil, fmt.Errorf("delta: truncated copy")
					}
					n |= uint64(b) << (8 * bit)
				}
			}
			if n == 0 {
				n = 0x10000
			}
			if off+n > uint64(len(base)) || uint64(len(out))+n > dstSize {
				return nil, fmt.Errorf("delta: copy out of range")
			}
			out = append(out, base[off:off+n]...)
		case op != 0:
			if d.Len() < int(op) || uint64(len(out))+uint64(op) > dstSize {
				return nil, fmt.Errorf("delta: truncated insert")
			}
			start := len(delta) - d.Len()
			out = append(out, delta[start:start+int(op)]...)
			_, _ = d.Seek(int64(op), io.SeekCurrent)
		default:
			return nil, fmt.Errorf("delta: reserved opcode")
		}
	}
	if uint64(len(out)) != dstSize {
		return nil, fmt.Errorf("delta: result size mismatch")
	}
	return out, nil
}

// provesFastForward reports whether oldID is an ancestor of newID using only the
// commits in the pack: it walks parents from newID through pack commits. A parent
// outside the pack ends that path (it already exists upstream, and the gate cannot
// see its history), so a true fast-forward whose path to oldID leaves the pack is
// not proven and gets refused.
func (g *commitGraph) provesFastForward(oldID, newID string) bool {
	if oldID == newID {
		return true
	}
	if _, ok := g.parents[newID]; !ok {
		return false
	}
	seen := map[string]bool{newID: true}
	queue := []string{newID}
	for len(queue) > 0 {
		c := queue[0]
		queue = queue[1:]
		for _, p := range g.parents[c] {
			if p == oldID {
				return true
			}
			if _, inPack := g.parents[p]; inPack && !seen[p] {
				seen[p] = true
				queue = append(queue, p)
			}
		}
	}
	return false
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if _, ok := hexVal(s[i]); !ok || ('A' <= s[i] && s[i] <= 'F') {
			return false
		}
	}
	return len(s) > 0
}
