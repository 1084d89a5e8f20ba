package protect

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// BareRecommendation is the host git setting that makes git ignore a bare repository
// it was not pointed at (git >= 2.38), such as one an agent lays out in a workspace.
const BareRecommendation = "git config --global safe.bareRepository explicit"

// UserGitConfigs are the config files git reads outside a repository for a user with
// this home (and XDG_CONFIG_HOME), in git's order: system, XDG, global.
func UserGitConfigs(home, xdgConfigHome string) []string {
	if xdgConfigHome == "" {
		xdgConfigHome = filepath.Join(home, ".config")
	}
	return []string{"/etc/gitconfig", filepath.Join(xdgConfigHome, "git", "config"), filepath.Join(home, ".gitconfig")}
}

// BareRepositoryPolicy is safe.bareRepository as git reads it from files (the last one
// that sets it wins), and the file that set it ("" and "" when none does). Includes are
// not followed.
func BareRepositoryPolicy(files []string) (value, from string) {
	for _, file := range files {
		data, err := readUserConfig(file)
		if err != nil {
			continue
		}
		entries, _ := ParseConfig(bytes.NewReader(data)) // what parses before an error counts
		for _, e := range entries {
			if e.Section == "safe" && e.Subsection == "" && e.Name == "barerepository" {
				value, from = e.Value, file
			}
		}
	}
	return value, from
}

// GitHonoursBare reports whether git version output ("git version 2.39.5") is 2.38 or
// newer, which knows safe.bareRepository.
func GitHonoursBare(versionOutput string) (bool, error) {
	f := strings.Fields(versionOutput)
	if len(f) < 3 || f[0] != "git" || f[1] != "version" {
		return false, fmt.Errorf("unexpected git version output %q", versionOutput)
	}
	parts := strings.SplitN(f[2], ".", 3)
	if len(parts) < 2 {
		return false, fmt.Errorf("unexpected git version %q", f[2])
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return false, fmt.Errorf("unexpected git version %q", f[2])
	}
	return major > 2 || major == 2 && minor >= 38, nil
}
