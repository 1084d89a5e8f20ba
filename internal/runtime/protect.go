package runtime

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/protect"
)

// gitFindings lists the hooks and dangerous git config beneath rel of dir that the
// original (when not "") does not have at the same place.
func gitFindings(dir, rel, original string) ([]protect.Finding, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	after, err := protect.Scan(root, rel)
	if err != nil || original == "" {
		return after, err
	}
	orig, err := os.OpenRoot(original)
	if err != nil {
		return after, nil // the original is gone: everything counts
	}
	defer orig.Close()
	before, err := protect.Scan(orig, rel)
	if err != nil {
		return after, nil
	}
	return protect.Appeared(before, after), nil
}

// warnFindings tells the person what could run on the host at their next git command.
func warnFindings(log *slog.Logger, what string, found []protect.Finding, err error) {
	if err != nil {
		log.Warn(what+": could not look for git hooks and config that run code", "error", err)
	}
	for _, f := range found {
		log.Warn(fmt.Sprintf("%s: %s; it can run code at the next git command where it lands: inspect it before you run git there", what, f))
	}
}

// warnCopyFindings warns, once the agent of a --cwd copy has exited, about the hooks and
// dangerous git config that appeared in the copy, before a person copies them out.
func (e *Engine) warnCopyFindings(id names.Identity, copyDir, original string) {
	found, err := gitFindings(copyDir, ".", original)
	warnFindings(e.log, fmt.Sprintf("the workspace copy of bottle %s holds new git hook or config", id), found, err)
}
