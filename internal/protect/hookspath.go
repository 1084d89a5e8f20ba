package protect

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/bottle-dev/bottle/internal/hostfile"
)

// User is what git reads outside the repository for the person who runs git on the
// workspace afterwards: their home (for "~/") and their config files in git's order
// (UserGitConfigs: system, XDG, global).
type User struct {
	Home    string
	Configs []string
}

// configWorktree is the per-worktree config git reads when the repository's config sets
// extensions.worktreeConfig.
const configWorktree = ".git/config.worktree"

// repoConfig is what bottle needs of the workspace's git config: core.hooksPath as git
// resolves it (the last file that sets it wins), and whether extensions.worktreeConfig
// is on. Includes are not followed.
type repoConfig struct {
	hooksPath      string
	worktreeConfig bool
}

// readRepoConfig reads the user's config files, then the workspace's .git/config and,
// when that turns extensions.worktreeConfig on, .git/config.worktree (never following a
// link in the workspace). For a linked worktree (.git a file) it reads the repository's
// config and the worktree's config.worktree where .git and commondir point, outside the
// workspace.
func readRepoConfig(root *os.Root, u User) (repoConfig, error) {
	var c repoConfig
	apply := func(entries []ConfigEntry, repo bool) {
		for _, e := range entries {
			switch {
			case e.Section == "core" && e.Subsection == "" && e.Name == "hookspath":
				c.hooksPath = e.Value
			case repo && e.Section == "extensions" && e.Subsection == "" && e.Name == "worktreeconfig":
				c.worktreeConfig = isTrue(e.Value)
			}
		}
	}
	for _, file := range u.Configs {
		data, err := readUserConfig(file)
		if err != nil {
			return c, fmt.Errorf("git config %s: %w", file, err)
		}
		entries, _ := ParseConfig(bytes.NewReader(data)) // what parses before an error counts, as for git's warnings
		apply(entries, false)
	}
	if k, _, err := kind(root, ".git"); err == nil && k == 0 {
		return c, readLinkedConfig(root, &c, apply)
	}
	for _, file := range []string{".git/config", configWorktree} {
		if file == configWorktree && !c.worktreeConfig {
			break
		}
		data, err := readWorkspaceConfig(root, file)
		if err != nil {
			return c, fmt.Errorf("%s: %w", file, err)
		}
		entries, _ := ParseConfig(bytes.NewReader(data))
		apply(entries, file == ".git/config")
	}
	return c, nil
}

// readLinkedConfig reads the config of a linked worktree's repository: .git holds
// "gitdir: DIR" (the worktree's admin dir), DIR/commondir names the repository's git
// dir (relative to DIR). Those are the person's, outside the workspace.
func readLinkedConfig(root *os.Root, c *repoConfig, apply func([]ConfigEntry, bool)) error {
	link, err := readWorkspaceConfig(root, ".git")
	if err != nil {
		return fmt.Errorf(".git: %w", err)
	}
	gitdir, ok := strings.CutPrefix(strings.TrimSpace(string(link)), "gitdir:")
	if !ok {
		return nil // not a git link: git finds no repository here
	}
	gitdir = strings.TrimSpace(gitdir)
	if !filepath.IsAbs(gitdir) {
		gitdir = filepath.Join(root.Name(), gitdir)
	}
	common := gitdir
	if b, err := readUserConfig(filepath.Join(gitdir, "commondir")); err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(gitdir, "commondir"), err)
	} else if cd := strings.TrimSpace(string(b)); cd != "" {
		common = cd
		if !filepath.IsAbs(cd) {
			common = filepath.Join(gitdir, cd)
		}
	}
	for _, file := range []string{filepath.Join(common, "config"), filepath.Join(gitdir, "config.worktree")} {
		if strings.HasSuffix(file, "config.worktree") && !c.worktreeConfig {
			break
		}
		data, err := readUserConfig(file)
		if err != nil {
			return fmt.Errorf("git config %s: %w", file, err)
		}
		entries, _ := ParseConfig(bytes.NewReader(data))
		apply(entries, !strings.HasSuffix(file, "config.worktree"))
	}
	return nil
}

// isTrue is git's boolean truth for a config value.
func isTrue(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true", "yes", "on", "1":
		return true
	}
	return false
}

// readWorkspaceConfig reads a config file of the workspace, bounded, not through a link
// (nil when it does not exist).
func readWorkspaceConfig(root *os.Root, p string) ([]byte, error) {
	if _, exists, err := kind(root, p); err != nil || !exists {
		return nil, err
	}
	f, err := root.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readBounded(f)
}

// readUserConfig reads one of the user's own config files, bounded (nil when it does not
// exist or cannot be read). Links are followed: they are the user's own (dotfile managers
// link them), out of the agent's reach; hostfile.Read opens nothing but a regular file.
func readUserConfig(file string) ([]byte, error) {
	data, err := hostfile.Read(file, maxConfigSize)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
		return nil, nil
	}
	return data, err
}

func readBounded(f *os.File) ([]byte, error) {
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err == nil && len(data) > maxConfigSize {
		err = fmt.Errorf("larger than %d bytes", maxConfigSize)
	}
	return data, err
}

// hooksPathIn is where core.hooksPath value v lands in the workspace dir, relative to it
// ("" when it is outside): git takes a relative value relative to the worktree's root,
// the workspace, and expands a leading "~/".
func hooksPathIn(dir, v, home string) string {
	if v == "" {
		return ""
	}
	switch {
	case v == "~" || strings.HasPrefix(v, "~/"):
		if home == "" {
			return ""
		}
		v = filepath.Join(home, strings.TrimPrefix(v, "~"))
	case !filepath.IsAbs(v):
		v = filepath.Join(dir, v)
	}
	if rel, ok := within(dir, filepath.Clean(v)); ok {
		return rel
	}
	// The same place by another name: a link outside the workspace (the person's own)
	// into it.
	realDir, err1 := filepath.EvalSymlinks(dir)
	realV, err2 := filepath.EvalSymlinks(v)
	if err1 == nil && err2 == nil {
		if rel, ok := within(realDir, realV); ok {
			return rel
		}
	}
	return ""
}

// within is p relative to dir, when p is dir or beneath it.
func within(dir, p string) (string, bool) {
	rel, err := filepath.Rel(filepath.Clean(dir), p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", false
	}
	return filepath.ToSlash(rel), true
}
