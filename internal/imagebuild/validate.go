package imagebuild

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode"
)

// MaxDockerfileSize bounds a Dockerfile: it comes from the agent.
const MaxDockerfileSize = 64 << 10

// ErrRefused wraps every reason a Dockerfile is refused (errors.Is).
var ErrRefused = errors.New("dockerfile refused")

// directive matches a parser directive line (`# syntax=...`, `# escape=...`, `# check=...`).
var directive = regexp.MustCompile(`(?i)^#\s*([a-z][a-z0-9]*)\s*=`)

// heredoc is the start of a heredoc ("<<EOF", "<<-EOF", `<<"EOF"`): BuildKit reads the
// lines after it as data, which this line reader would check as instructions.
var heredoc = regexp.MustCompile(`<<-?["']?[A-Za-z_]`)

// Validate checks that dockerfile builds one image FROM base and can fetch nothing: one
// stage FROM exactly base, no other image (COPY --from, RUN --mount from=), no remote
// ADD, no host network, no parser directive that loads a frontend image or changes how
// lines are read. The checks run over every logical instruction and, so that a line
// this reader joins differently from BuildKit cannot slip through, over every physical
// line as well; the cost is that such a line is refused where BuildKit might not need to.
func Validate(dockerfile, base string) error {
	if len(dockerfile) > MaxDockerfileSize {
		return fmt.Errorf("%w: %d bytes, more than %d", ErrRefused, len(dockerfile), MaxDockerfileSize)
	}
	if base == "" {
		return fmt.Errorf("%w: no base image to build from", ErrRefused)
	}
	for i, r := range dockerfile {
		if r == unicode.ReplacementChar || (unicode.IsControl(r) && r != '\n' && r != '\t' && r != '\r') {
			return fmt.Errorf("%w: control or invalid character at byte %d", ErrRefused, i)
		}
	}
	lines := strings.Split(strings.ReplaceAll(dockerfile, "\r\n", "\n"), "\n")
	for n, l := range lines {
		t := strings.TrimSpace(l)
		if m := directive.FindStringSubmatch(t); m != nil {
			// Anywhere, not only in the header where BuildKit reads them: refusing a
			// comment that looks like one costs nothing.
			switch {
			case strings.EqualFold(m[1], "check"):
				// Only selects BuildKit's lint checks.
				continue
			case strings.EqualFold(m[1], "syntax"):
				return fmt.Errorf("%w: line %d: a `# syntax=` parser directive would load a frontend image; remove it (the built-in Dockerfile frontend is used)", ErrRefused, n+1)
			}
			return fmt.Errorf("%w: line %d: the parser directive %q is not allowed", ErrRefused, n+1, m[1])
		}
		if strings.HasPrefix(t, "#") {
			continue
		}
		if heredoc.MatchString(t) {
			return fmt.Errorf("%w: line %d: heredocs are not allowed; write the commands on RUN lines", ErrRefused, n+1)
		}
		if err := checkInstruction(t, base); err != nil {
			return fmt.Errorf("%w: line %d: %w", ErrRefused, n+1, err)
		}
	}
	froms := 0
	for _, in := range instructions(lines) {
		if err := checkInstruction(in.text, base); err != nil {
			return fmt.Errorf("%w: line %d: %w", ErrRefused, in.line, err)
		}
		switch kw := keyword(in.text); {
		case kw == "FROM":
			froms++
		case froms == 0 && kw == "ARG":
			return fmt.Errorf("%w: line %d: ARG before FROM is not allowed (the base is fixed)", ErrRefused, in.line)
		case froms == 0:
			return fmt.Errorf("%w: line %d: the first instruction must be FROM %s", ErrRefused, in.line, base)
		}
	}
	switch {
	case froms == 0:
		return fmt.Errorf("%w: no FROM line; start with `FROM %s`", ErrRefused, base)
	case froms > 1:
		return fmt.Errorf("%w: %d FROM lines; only one stage, FROM %s, is built", ErrRefused, froms, base)
	}
	return nil
}

type instruction struct {
	line int // where it starts, from 1
	text string
}

// instructions joins continued lines (a trailing backslash) into logical instructions,
// skipping comments and blank lines.
func instructions(lines []string) []instruction {
	var out []instruction
	var cur strings.Builder
	start := 0
	for n, l := range lines {
		t := strings.TrimSpace(l)
		if cur.Len() == 0 && (t == "" || strings.HasPrefix(t, "#")) {
			continue
		}
		if cur.Len() > 0 && strings.HasPrefix(t, "#") {
			continue // comments inside a continued instruction are dropped
		}
		if cur.Len() == 0 {
			start = n + 1
		}
		if cont, ok := strings.CutSuffix(t, `\`); ok {
			cur.WriteString(cont + " ")
			continue
		}
		cur.WriteString(t)
		out = append(out, instruction{line: start, text: cur.String()})
		cur.Reset()
	}
	if cur.Len() > 0 {
		out = append(out, instruction{line: start, text: cur.String()})
	}
	return out
}

// keyword is an instruction's first word, upper-cased.
func keyword(text string) string {
	f := strings.Fields(text)
	if len(f) == 0 {
		return ""
	}
	return strings.ToUpper(f[0])
}

// checkInstruction refuses what would fetch anything or use another image.
func checkInstruction(text, base string) error {
	f := strings.Fields(text)
	if len(f) == 0 {
		return nil
	}
	kw := strings.ToUpper(f[0])
	lower := strings.ToLower(text)
	switch kw {
	case "FROM":
		return checkFrom(f[1:], base)
	case "ADD":
		for _, a := range f[1:] {
			la := strings.ToLower(a)
			if strings.Contains(la, "://") || strings.HasPrefix(la, "git@") {
				return fmt.Errorf("ADD of %q fetches from the network; nothing is fetched in a bottle build", a)
			}
		}
	case "ONBUILD":
		return errors.New("ONBUILD is not supported")
	}
	// Flags of COPY/ADD/RUN that name another image or the host network.
	if strings.Contains(lower, "--from") {
		return errors.New("--from names another image or stage; only one stage is built")
	}
	if strings.Contains(lower, "--mount") && strings.Contains(lower, "from=") {
		return errors.New("a RUN mount from another image is not allowed")
	}
	if strings.Contains(lower, "--network") && !strings.Contains(lower, "--network=none") && !strings.Contains(lower, "--network=default") {
		return errors.New("RUN --network other than none/default is not allowed (builds have no network)")
	}
	return nil
}

// checkFrom accepts `FROM [--platform=...] base [AS name]` with base exactly the current
// agent image, no variables.
func checkFrom(args []string, base string) error {
	var ref []string
	for _, a := range args {
		if strings.HasPrefix(a, "--") {
			return fmt.Errorf("FROM flag %q is not allowed", a)
		}
		ref = append(ref, a)
	}
	if len(ref) == 3 && strings.EqualFold(ref[1], "AS") {
		ref = ref[:1]
	}
	if len(ref) != 1 {
		return fmt.Errorf("FROM must be `FROM %s` (optionally `AS name`)", base)
	}
	if ref[0] != base {
		return fmt.Errorf("FROM %s: only the bottle's current agent image %s can be the base", ref[0], base)
	}
	return nil
}
