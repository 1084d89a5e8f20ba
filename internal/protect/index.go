package protect

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Index bounds: the index is the agent's to write, so its parse is bounded.
const (
	maxIndexSize  = 256 << 20
	maxIndexPath  = 64 << 10
	maxGitlinks   = 1000
	gitlinkMode   = 0o160000
	indexFixedLen = 40 // ctime, mtime, dev, ino, mode, uid, gid, size: 10 × uint32
)

var errNotIndex = errors.New("not a git index")

// Gitlinks lists the paths of the gitlink entries (submodules, mode 160000) of a git
// index file (gitformat-index(5), versions 2 to 4), at most maxGitlinks. The hash
// length (SHA-1 or SHA-256) is not in the file: the one that parses the whole entry
// table is used. errNotIndex: data does not start like an index.
func Gitlinks(data []byte) ([]string, error) {
	if len(data) < 12 || string(data[:4]) != "DIRC" {
		return nil, errNotIndex
	}
	var firstErr error
	for _, hashLen := range []int{20, 32} {
		links, err := gitlinks(data, hashLen)
		if err == nil {
			return links, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, firstErr
}

func gitlinks(data []byte, hashLen int) ([]string, error) {
	version := binary.BigEndian.Uint32(data[4:8])
	if version < 2 || version > 4 {
		return nil, fmt.Errorf("index version %d", version)
	}
	n := binary.BigEndian.Uint32(data[8:12])
	// An entry takes at least indexFixedLen+hashLen+2 bytes: a count beyond what the
	// data can hold is a lie, not a reason to loop.
	if uint64(n)*uint64(indexFixedLen+hashLen+2) > uint64(len(data)) {
		return nil, fmt.Errorf("index claims %d entries in %d bytes", n, len(data))
	}
	var out []string
	off := 12
	var prev []byte // v4: the previous entry's path
	for i := uint32(0); i < n; i++ {
		start := off
		if len(data)-off < indexFixedLen+hashLen+2 {
			return nil, fmt.Errorf("index entry %d: truncated", i)
		}
		mode := binary.BigEndian.Uint32(data[off+24 : off+28])
		off += indexFixedLen + hashLen
		flags := binary.BigEndian.Uint16(data[off : off+2])
		off += 2
		if flags&0x4000 != 0 { // extended flags
			if version < 3 {
				return nil, fmt.Errorf("index entry %d: extended flags in version %d", i, version)
			}
			if len(data)-off < 2 {
				return nil, fmt.Errorf("index entry %d: truncated", i)
			}
			off += 2
		}
		var name []byte
		if version == 4 {
			strip, used, err := indexVarint(data[off:])
			if err != nil {
				return nil, fmt.Errorf("index entry %d: %w", i, err)
			}
			off += used
			if strip > uint64(len(prev)) {
				return nil, fmt.Errorf("index entry %d: strips %d bytes of a %d-byte path", i, strip, len(prev))
			}
			end := bytes.IndexByte(data[off:], 0)
			if end < 0 {
				return nil, fmt.Errorf("index entry %d: unterminated path", i)
			}
			keep := len(prev) - int(strip)
			if keep+end > maxIndexPath {
				return nil, fmt.Errorf("index entry %d: path longer than %d bytes", i, maxIndexPath)
			}
			name = append(prev[:keep:keep], data[off:off+end]...)
			off += end + 1
			prev = name
		} else {
			end := bytes.IndexByte(data[off:], 0)
			if end < 0 || end > maxIndexPath {
				return nil, fmt.Errorf("index entry %d: unterminated or overlong path", i)
			}
			name = data[off : off+end]
			// NUL padding to a multiple of 8 bytes of the whole entry (at least one NUL).
			off = start + (off+end-start+8)&^7
			if off > len(data) {
				return nil, fmt.Errorf("index entry %d: truncated padding", i)
			}
		}
		if mode&0o170000 == gitlinkMode && len(out) < maxGitlinks {
			out = append(out, string(name))
		}
	}
	// What follows is extensions and the checksum: at least the hash must be there.
	if len(data)-off < hashLen {
		return nil, errors.New("index: no checksum after the entries")
	}
	return out, nil
}

// indexVarint decodes git's offset varint (each continuation adds one before the shift,
// so every value has one encoding).
func indexVarint(b []byte) (uint64, int, error) {
	var v uint64
	for i, c := range b {
		if i >= 9 {
			break
		}
		if i > 0 {
			v++
		}
		v = v<<7 | uint64(c&0x7f)
		if c&0x80 == 0 {
			return v, i + 1, nil
		}
	}
	return 0, 0, errors.New("bad path-prefix length")
}
