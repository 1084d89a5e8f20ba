package plan

import (
	"fmt"
	"strings"

	"github.com/bottle-dev/bottle/internal/manifest"
)

// FilterPort is the port the filter listens on (the agent's HTTPS_PROXY).
const FilterPort = 8888

// filterBackend is a sidecar kind that implements the filter; a bottle runs exactly one,
// the one its filter choice names.
type filterBackend interface {
	sidecarKind
	name() string
}

// chooseFilter resolves a filter choice: "auto" is pipelock when its image is present,
// the builtin filter otherwise.
func chooseFilter(choice string, pipelockPresent bool) (string, error) {
	if choice == "auto" {
		if pipelockPresent {
			return FilterPipelock, nil
		}
		return FilterBuiltin, nil
	}
	for _, k := range sidecarKinds {
		if f, ok := k.(filterBackend); ok && f.name() == choice {
			return choice, nil
		}
	}
	return "", fmt.Errorf("unknown filter %q%s; use one of: %s", choice, manifest.DidYouMean(choice, manifest.FilterChoices), strings.Join(manifest.FilterChoices, ", "))
}
