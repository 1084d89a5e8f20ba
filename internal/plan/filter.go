package plan

import (
	"fmt"
	"strings"

	"github.com/bottle-dev/bottle/internal/manifest"
)

// Filter implementations (a bottle runs exactly one).
const (
	FilterBuiltin  = "builtin"
	FilterPipelock = "pipelock"
)

// FilterPort is the port the filter listens on (the agent's HTTPS_PROXY).
const FilterPort = 8888

// chooseFilter resolves a filter choice: "auto" is pipelock when its image is present.
func chooseFilter(choice string, pipelockPresent bool) (string, error) {
	switch choice {
	case "auto":
		if pipelockPresent {
			return FilterPipelock, nil
		}
		return FilterBuiltin, nil
	case FilterBuiltin, FilterPipelock:
		return choice, nil
	}
	return "", fmt.Errorf("unknown filter %q; use one of: %s", choice, strings.Join(manifest.FilterChoices, ", "))
}
