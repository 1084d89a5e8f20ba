package gitgate

import (
	"fmt"
	"slices"

	"github.com/bottle-dev/bottle/internal/reload"
)

// PushRuleChanges are push rules approved while the bottle runs (supervise), by remote
// name. The host keeps them in Config.RulesFile, which git-gate re-reads while it
// serves: an approval takes effect without restarting anything.
type PushRuleChanges struct {
	Remotes map[string][]PushRule `json:"remotes,omitempty"`
}

func decodePushRuleChanges(data []byte) (PushRuleChanges, error) {
	var ch PushRuleChanges
	if err := reload.DecodeJSON(data, &ch); err != nil {
		return ch, err
	}
	for name, rules := range ch.Remotes {
		for j, pr := range rules {
			if err := CheckRefPattern(pr.Ref); err != nil {
				return ch, fmt.Errorf("remote %s push[%d]: %w", name, j, err)
			}
		}
	}
	return ch, nil
}

// rulesFile puts a rules file in force in extra.
func (g *Gate) rulesFile(path string) *reload.File {
	return &reload.File{Path: path, Apply: func(data []byte) error {
		ch, err := decodePushRuleChanges(data)
		if err != nil {
			return err
		}
		for name := range ch.Remotes {
			if g.remotes[name] == nil {
				return fmt.Errorf("push rules for %q, which is not a declared remote", name)
			}
		}
		g.extra.Store(&ch)
		g.log.Info("push rule changes loaded", "remotes", len(ch.Remotes))
		return nil
	}}
}

// rulesOf is a remote's push rules in force: its own and the approved ones.
func (g *Gate) rulesOf(r *gateRemote) []PushRule {
	ch := g.extra.Load()
	if ch == nil || len(ch.Remotes[r.name]) == 0 {
		return r.rules
	}
	return append(slices.Clone(r.rules), ch.Remotes[r.name]...)
}
