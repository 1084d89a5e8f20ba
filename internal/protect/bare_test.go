package protect

import (
	"path/filepath"
	"testing"
)

// TestBareRepositoryPolicy: the global config wins over the XDG one, which wins over
// none; a config without the key leaves it unset.
func TestBareRepositoryPolicy(t *testing.T) {
	home := t.TempDir()
	files := UserGitConfigs(home, "")[1:] // not the host's /etc/gitconfig
	if v, from := BareRepositoryPolicy(files); v != "" || from != "" {
		t.Errorf("no config: %q from %q", v, from)
	}
	write(t, home, ".config/git/config", "[safe]\n\tbareRepository = all\n")
	if v, _ := BareRepositoryPolicy(files); v != "all" {
		t.Errorf("xdg: %q, want all", v)
	}
	write(t, home, ".gitconfig", "[user]\n\tname = x\n[Safe]\n\tBareRepository = explicit\n")
	if v, from := BareRepositoryPolicy(files); v != "explicit" || from != filepath.Join(home, ".gitconfig") {
		t.Errorf("global: %q from %q, want explicit from ~/.gitconfig", v, from)
	}
	write(t, home, ".gitconfig", "[safe \"x\"]\n\tbareRepository = explicit\n")
	if v, _ := BareRepositoryPolicy(UserGitConfigs(home, filepath.Join(home, "none"))[1:]); v != "" {
		t.Errorf("a subsection's key counts: %q", v)
	}
}

func TestGitHonoursBare(t *testing.T) {
	for out, want := range map[string]bool{"git version 2.39.5": true, "git version 2.38.0": true, "git version 2.37.7": false, "git version 3.0.0": true, "git version 2.45.1.windows.1": true} {
		if got, err := GitHonoursBare(out); err != nil || got != want {
			t.Errorf("%q: %v %v, want %v", out, got, err, want)
		}
	}
	if _, err := GitHonoursBare("hub version 2"); err == nil {
		t.Error("garbage parsed")
	}
}
