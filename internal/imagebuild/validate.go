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
		if kw := keyword(in.text); !knownInstructions[kw] {
			return fmt.Errorf("%w: line %d: unknown instruction %q", ErrRefused, in.line, kw)
		}
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

// instructions joins continued lines (a trailing backslash) into logical instructions
// as BuildKit's parser does: the next line is appended as it is, with no separator and
// its leading blanks kept (`--fr\` + `om=x` is `--from=x` to BuildKit). Comments and
// blank lines are skipped, also inside a continued instruction.
func instructions(lines []string) []instruction {
	var out []instruction
	var cur strings.Builder
	start := 0
	for n, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		piece := strings.TrimRight(l, " \t\r")
		if cur.Len() == 0 {
			start = n + 1
			piece = t
		}
		if cont, ok := strings.CutSuffix(piece, `\`); ok {
			cur.WriteString(cont)
			continue
		}
		cur.WriteString(piece)
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

// knownInstructions are the Dockerfile instructions a build may use (ONBUILD is refused
// below); anything else is refused rather than guessed at.
var knownInstructions = map[string]bool{"FROM": true, "RUN": true, "CMD": true, "LABEL": true, "MAINTAINER": true, "EXPOSE": true,
	"ENV": true, "ADD": true, "COPY": true, "ENTRYPOINT": true, "VOLUME": true, "USER": true, "WORKDIR": true, "ARG": true,
	"ONBUILD": true, "STOPSIGNAL": true, "HEALTHCHECK": true, "SHELL": true}

// squeeze is text as BuildKit's flag reader may see it once it has removed quotes and
// backslash escapes: lower case, without quotes, backslashes or blanks. Looking for a
// flag in it can only refuse too much, never too little.
func squeeze(text string) string {
	return strings.Map(func(r rune) rune {
		if r == '"' || r == '\'' || r == '\\' || unicode.IsSpace(r) {
			return -1
		}
		return unicode.ToLower(r)
	}, text)
}

// checkInstruction refuses what would fetch anything, use another image or stage, or
// leave the build sandbox. The flag checks run over the squeezed text (see squeeze), so
// quoting or escaping a flag's name does not hide it.
func checkInstruction(text, base string) error {
	f := strings.Fields(text)
	if len(f) == 0 {
		return nil
	}
	kw := strings.ToUpper(f[0])
	sq := squeeze(text)
	switch kw {
	case "FROM":
		return checkFrom(f[1:], base)
	case "ADD":
		if strings.Contains(sq, "://") || strings.Contains(sq, "git@") {
			return errors.New("ADD from a URL or git repository fetches from the network; nothing is fetched in a bottle build")
		}
	case "ONBUILD":
		return errors.New("ONBUILD is not supported")
	}
	if strings.Contains(sq, "--from") {
		return errors.New("--from names another image or stage; only one stage is built")
	}
	if strings.Contains(sq, "--mount") && strings.Contains(sq, "from=") {
		return errors.New("a RUN mount from another image is not allowed")
	}
	if strings.Contains(sq, "--security") {
		return errors.New("RUN --security is not allowed")
	}
	for rest := sq; ; {
		i := strings.Index(rest, "--network")
		if i < 0 {
			break
		}
		rest = rest[i+len("--network"):]
		if !strings.HasPrefix(rest, "=none") && !strings.HasPrefix(rest, "=default") {
			return errors.New("RUN --network other than none/default is not allowed (builds have no network)")
		}
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
