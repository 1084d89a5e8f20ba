package egress

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/bottle-dev/bottle/internal/names"
)

// AllowlistChanges are approved changes to a running bottle's allowlist (supervise). The
// host keeps them in a file the filter re-reads while it runs, so an approval takes effect
// without restarting anything, and a grant with Until stops allowing by itself, with no
// bottle process running. They are changes, not a whole list: a manifest edited between
// stop and resume still counts.
type AllowlistChanges struct {
	// Add are entries allowed besides the configured allowlist.
	Add []AllowlistGrant `json:"add,omitempty"`
	// Remove are configured entries (exact patterns) no longer allowed.
	Remove []string `json:"remove,omitempty"`
}

// AllowlistGrant is one added entry; a zero Until never expires.
type AllowlistGrant struct {
	Pattern string    `json:"pattern"`
	Until   time.Time `json:"until,omitzero"`
}

// ChangesPollInterval is how often the filter looks at its changes file.
const ChangesPollInterval = time.Second

// allowState is the allowlist in force: the configured entries minus the removed ones,
// and each grant with its end.
type allowState struct {
	base   *Allowlist
	grants []timedAllowlist
}

type timedAllowlist struct {
	allow *Allowlist
	until time.Time
}

func (s *allowState) match(host string, now time.Time) bool {
	if s.base.Match(host) {
		return true
	}
	for _, g := range s.grants {
		if (g.until.IsZero() || now.Before(g.until)) && g.allow.Match(host) {
			return true
		}
	}
	return false
}

func (s *allowState) entries() int { return len(s.base.exact) + len(s.base.suffixes) + len(s.grants) }

// newAllowState applies ch to the configured patterns.
func newAllowState(patterns []string, ch AllowlistChanges) (*allowState, error) {
	kept := slices.DeleteFunc(slices.Clone(patterns), func(p string) bool { return slices.Contains(ch.Remove, p) })
	base, err := NewAllowlist(kept)
	if err != nil {
		return nil, err
	}
	s := &allowState{base: base}
	for _, g := range ch.Add {
		a, err := NewAllowlist([]string{g.Pattern})
		if err != nil {
			return nil, err
		}
		s.grants = append(s.grants, timedAllowlist{allow: a, until: g.Until})
	}
	return s, nil
}

// ReadAllowlistChanges reads a changes file strictly; a missing file is no changes.
func ReadAllowlistChanges(path string) (AllowlistChanges, error) {
	var ch AllowlistChanges
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return ch, nil
	}
	if err != nil {
		return ch, fmt.Errorf("allowlist changes %s: %w", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ch); err != nil {
		return ch, fmt.Errorf("allowlist changes %s: %w", path, err)
	}
	for _, p := range ch.Remove {
		if err := names.CheckHostName(names.NormalizeHost(trimWildcard(p))); err != nil {
			return ch, fmt.Errorf("allowlist changes %s: remove %q: %w", path, p, err)
		}
	}
	return ch, nil
}

func trimWildcard(p string) string {
	if len(p) > 2 && p[:2] == "*." {
		return p[2:]
	}
	return p
}

// changesWatcher re-reads the changes file when it changes.
type changesWatcher struct {
	path     string
	patterns []string
	state    *atomic.Pointer[allowState]
	log      *slog.Logger
	last     string // the content in force
}

// load reads the file and, when its content differs from the last, puts it in force. A
// file that does not parse leaves the state in force (and is logged).
func (w *changesWatcher) load() error {
	data, err := os.ReadFile(w.path)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("allowlist changes %s: %w", w.path, err)
	}
	if string(data) == w.last {
		return nil
	}
	ch, err := ReadAllowlistChanges(w.path)
	if err != nil {
		return err
	}
	s, err := newAllowState(w.patterns, ch)
	if err != nil {
		return fmt.Errorf("allowlist changes %s: %w", w.path, err)
	}
	w.state.Store(s)
	w.last = string(data)
	w.log.Info("allowlist changes loaded", "added", len(ch.Add), "removed", len(ch.Remove))
	return nil
}

func (w *changesWatcher) run(ctx context.Context) {
	t := time.NewTicker(ChangesPollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := w.load(); err != nil {
				w.log.Error("allowlist changes not applied", "error", err.Error())
			}
		}
	}
}
