package egress

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/reload"
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

func decodeAllowlistChanges(data []byte) (AllowlistChanges, error) {
	var ch AllowlistChanges
	if err := reload.DecodeJSON(data, &ch); err != nil {
		return ch, err
	}
	for _, p := range ch.Remove {
		name, _ := strings.CutPrefix(p, "*.")
		if err := names.CheckHostName(names.NormalizeHost(name)); err != nil {
			return ch, fmt.Errorf("remove %q: %w", p, err)
		}
	}
	return ch, nil
}

// changesFile puts a changes file in force over the configured patterns.
func changesFile(path string, patterns []string, state *atomic.Pointer[allowState], log *slog.Logger) *reload.File {
	return &reload.File{Path: path, Apply: func(data []byte) error {
		ch, err := decodeAllowlistChanges(data)
		if err != nil {
			return err
		}
		s, err := newAllowState(patterns, ch)
		if err != nil {
			return err
		}
		state.Store(s)
		log.Info("allowlist changes loaded", "added", len(ch.Add), "removed", len(ch.Remove))
		return nil
	}}
}
