package supervise

import "github.com/bottle-dev/bottle/internal/imagebuild"

// CheckDockerfile checks a proposed Dockerfile: text the terminal may show, and the
// rules of the image build (imagebuild.Validate: one stage FROM exactly the current
// agent image, nothing that fetches or names another image, no parser directive or
// heredoc), so a proposal the build would refuse is refused before a person sees it.
func CheckDockerfile(content, agentImage string) error {
	if err := checkText("dockerfile", content, MaxDockerfileBytes, true); err != nil {
		return err
	}
	return imagebuild.Validate(content, agentImage)
}

// BaseDockerfile is the Dockerfile shown for an agent image bottle has no source of.
func BaseDockerfile(image string) string { return "FROM " + image + "\n" }
