package runtime

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2"

	"github.com/bottle-dev/bottle/internal/hostfile"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/state"
)

// SaveAllowlist writes an approved allowlist change into bottle id's manifest: the
// bottle's one-line `allowlist = [...]` is replaced, so comments and the rest of the
// layout stay. When the file has no such line (or the result would not read back as
// intended), nothing is written and the snippet to paste is returned instead.
func SaveAllowlist(opts Options, id names.Identity, add, remove []string) (written bool, snippet string, err error) {
	e := newEngine(opts.withDefaults(), nil, nil)
	m, err := e.store.Load(id)
	if err != nil {
		return false, "", err
	}
	data, err := hostfile.Read(m.ManifestPath, hostfile.MaxManifest)
	if err != nil {
		return false, "", fmt.Errorf("manifest of %s: %w", id, err)
	}
	man, err := manifest.Load(m.ManifestPath, data)
	if err != nil {
		return false, "", err
	}
	agent := man.Agents[id.Agent()]
	if agent == nil || man.Bottles[agent.Bottle] == nil {
		return false, "", fmt.Errorf("manifest %s no longer has agent %s", m.ManifestPath, id.Agent())
	}
	bottle := agent.Bottle
	list := slices.DeleteFunc(slices.Clone(man.Bottles[bottle].Allowlist), func(e string) bool { return slices.Contains(remove, e) })
	for _, a := range add {
		if !slices.Contains(list, a) {
			list = append(list, a)
		}
	}
	value, err := toml.Marshal(map[string][]string{"allowlist": list})
	if err != nil {
		return false, "", err
	}
	line := strings.TrimSpace(string(value))
	snippet = fmt.Sprintf("[bottles.%s]\n%s\n", bottle, line)
	edited, ok := replaceAllowlistLine(string(data), bottle, line)
	if !ok {
		return false, snippet, nil
	}
	check, err := manifest.Load(m.ManifestPath, []byte(edited))
	if err != nil || !slices.Equal(check.Bottles[bottle].Allowlist, list) {
		return false, snippet, nil
	}
	fi, err := os.Stat(m.ManifestPath)
	if err != nil {
		return false, snippet, err
	}
	if err := state.WriteFile(m.ManifestPath, []byte(edited), fi.Mode().Perm()); err != nil {
		return false, snippet, fmt.Errorf("write %s: %w", m.ManifestPath, err)
	}
	return true, snippet, nil
}

var tableHeader = regexp.MustCompile(`^\s*\[`)

// replaceAllowlistLine replaces the one-line allowlist of [bottles.NAME] in a manifest.
func replaceAllowlistLine(src, bottle, line string) (string, bool) {
	lines := strings.Split(src, "\n")
	header := regexp.MustCompile(`^\s*\[\s*bottles\s*\.\s*"?` + regexp.QuoteMeta(bottle) + `"?\s*\]\s*(#.*)?$`)
	assign := regexp.MustCompile(`^\s*allowlist\s*=\s*\[[^\]]*\]\s*(#.*)?$`)
	in := false
	for i, l := range lines {
		switch {
		case header.MatchString(l):
			in = true
		case tableHeader.MatchString(l):
			if in { // the table has no one-line allowlist
				return "", false
			}
		case in && assign.MatchString(l):
			lines[i] = line
			if comment := assign.FindStringSubmatch(l)[1]; comment != "" {
				lines[i] += " " + comment
			}
			return strings.Join(lines, "\n"), true
		}
	}
	return "", false
}
