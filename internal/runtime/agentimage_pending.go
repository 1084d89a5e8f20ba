package runtime

import (
	"context"
	"errors"
	"io"

	"github.com/bottle-dev/bottle/internal/names"
)

// ApplyAgentDockerfile is TEMPORARY: the buildkit branch's runtime/agentimage.go replaces
// this file at merge (it builds the image and restarts the agent on it).
func (e *Engine) ApplyAgentDockerfile(ctx context.Context, identity names.Identity, dockerfile string, progress io.Writer) (imageRef string, err error) {
	return "", errors.New("image builds are not wired yet")
}
