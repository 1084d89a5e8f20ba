package firewall

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Verify checks that chain isolates bridge as Install left it, in every family: the
// chain holds exactly its rules and every jump to it is in place. The start self-test
// calls it right before the agent's task starts.
func Verify(ctx context.Context, chain, bridge string) error {
	fams, err := families()
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range fams {
		lines, err := t.rules(ctx, "filter", "")
		if err != nil {
			return err
		}
		want := [][]string{
			{"-N", chain},
			{"-A", chain, "-i", bridge, "-o", bridge, "-j", "ACCEPT"},
			{"-A", chain, "-j", "DROP"},
		}
		for _, j := range jumps(bridge, chain) {
			want = append(want, append([]string{"-A"}, j...))
		}
		var inChain []string
		for _, l := range lines {
			if f := strings.Fields(l); len(f) >= 2 && f[1] == chain && f[0] == "-A" {
				inChain = append(inChain, l)
			}
		}
		for _, w := range want {
			if !slices.Contains(lines, strings.Join(w, " ")) {
				errs = append(errs, fmt.Errorf("%s: chain %s: missing %q", t.bin, chain, strings.Join(w, " ")))
			}
		}
		if len(inChain) != 2 {
			errs = append(errs, fmt.Errorf("%s: chain %s holds %d rules, want 2", t.bin, chain, len(inChain)))
		}
	}
	return errors.Join(errs...)
}
