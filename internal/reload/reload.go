// Package reload lets a sidecar take a host-written file into force while it serves: the
// host rewrites the file atomically in a directory mounted into the sidecar (a rename is
// seen inside gVisor, where a rewritten single-file bind mount may not be), and the
// sidecar polls it.
package reload

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"
)

// Interval is how often a File is looked at.
const Interval = time.Second

// MaxSize bounds a file; host-written, but a sidecar reads nothing unbounded.
const MaxSize = 1 << 20

// File is a file whose content apply puts in force each time it changes. A missing
// file is empty content.
type File struct {
	Path  string
	Apply func(data []byte) error
	last  []byte
	read  bool
}

// Load reads the file and applies it when its content changed since the last Load that
// applied. An error (unreadable, or refused by Apply) leaves what is in force.
func (f *File) Load() error {
	data, err := os.ReadFile(f.Path)
	if errors.Is(err, os.ErrNotExist) {
		data, err = nil, nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", f.Path, err)
	}
	if len(data) > MaxSize {
		return fmt.Errorf("%s is larger than %d bytes", f.Path, MaxSize)
	}
	if f.read && string(data) == string(f.last) {
		return nil
	}
	if err := f.Apply(data); err != nil {
		return fmt.Errorf("%s: %w", f.Path, err)
	}
	f.last, f.read = data, true
	return nil
}

// Watch calls Load every Interval until ctx ends, logging what fails.
func (f *File) Watch(ctx context.Context, log *slog.Logger) {
	t := time.NewTicker(Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := f.Load(); err != nil {
				log.Error("changes not applied", "error", err.Error())
			}
		}
	}
}

// DecodeJSON decodes a changes file strictly (no unknown fields); empty content leaves v
// as it is (no changes).
func DecodeJSON(data []byte, v any) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}
