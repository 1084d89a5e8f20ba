package runtime

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/bottle-dev/bottle/internal/plan"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// finalizeSpec completes a planned spec with what only the runtime knows: the image's env
// and default command, the netns path and the terminal. The plan itself is not changed.
func finalizeSpec(c *plan.Container, imageEnv, imageArgs []string, nsPath string, tty bool) (*specs.Spec, error) {
	data, err := json.Marshal(c.Spec)
	if err != nil {
		return nil, err
	}
	var s specs.Spec
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, err
	}
	s.Process.Env = mergeEnv(imageEnv, s.Process.Env)
	if len(s.Process.Args) == 0 {
		if len(imageArgs) == 0 {
			return nil, fmt.Errorf("container %s: image %s has no default command; set `command` in the manifest", c.Name, c.Image)
		}
		s.Process.Args = imageArgs
	}
	s.Process.Terminal = tty
	for i := range s.Linux.Namespaces {
		if s.Linux.Namespaces[i].Type == specs.NetworkNamespace {
			s.Linux.Namespaces[i].Path = nsPath
		}
	}
	return &s, nil
}

// mergeEnv puts the planned env over the image's env; PATH gets a default if neither has it.
func mergeEnv(image, planned []string) []string {
	vals := map[string]string{}
	var order []string
	for _, kv := range append(slices.Clone(image), planned...) {
		k, v, _ := strings.Cut(kv, "=")
		if _, seen := vals[k]; !seen {
			order = append(order, k)
		}
		vals[k] = v
	}
	if _, ok := vals["PATH"]; !ok {
		order = append(order, "PATH")
		vals["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vals[k])
	}
	return out
}
