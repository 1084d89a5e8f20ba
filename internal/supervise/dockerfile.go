package supervise

import (
	"fmt"
	"regexp"
	"strings"
)

// directive is a Dockerfile parser directive ("# syntax=...", "# escape=...", "# check=...").
var directive = regexp.MustCompile(`^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=`)

// heredoc is the start of a heredoc ("<<EOF", "<<-EOF", `<<"EOF"`).
var heredoc = regexp.MustCompile(`<<-?["']?[A-Za-z_]`)

// CheckDockerfile checks a proposed Dockerfile with a strict line parser: no parser
// directive (a syntax directive picks another frontend image, an escape directive
// changes how lines join), no heredocs, exactly one FROM, and that FROM is the bottle's
// current agent image (no variables, no platform), and nothing else brings in another
// image (COPY/ADD --from, RUN --mount with from=). What this parser does not
// understand is refused, not guessed at.
func CheckDockerfile(content, agentImage string) error {
	if err := checkText("dockerfile", content, MaxDockerfileBytes, true); err != nil {
		return err
	}
	froms := 0
	inHeader := true // parser directives are only read before anything else
	for _, ins := range instructions(content) {
		if ins.comment {
			if m := directive.FindStringSubmatch(ins.text); inHeader && m != nil {
				return fmt.Errorf("dockerfile line %d: the parser directive %q is not allowed", ins.line, Clean(m[1]))
			}
			continue
		}
		inHeader = false
		if heredoc.MatchString(ins.text) {
			return fmt.Errorf("dockerfile line %d: heredocs are not allowed; write the commands on RUN lines", ins.line)
		}
		fields := strings.Fields(ins.text)
		cmd := strings.ToUpper(fields[0])
		var flags, args []string
		for _, f := range fields[1:] {
			if strings.HasPrefix(f, "--") && len(args) == 0 {
				flags = append(flags, strings.ToLower(f))
			} else {
				args = append(args, f)
			}
		}
		switch cmd {
		case "FROM":
			froms++
			if len(flags) > 0 {
				return fmt.Errorf("dockerfile line %d: FROM takes no flags here", ins.line)
			}
			if len(args) != 1 && !(len(args) == 3 && strings.EqualFold(args[1], "AS")) {
				return fmt.Errorf("dockerfile line %d: write FROM %s", ins.line, agentImage)
			}
			if args[0] != agentImage {
				return fmt.Errorf("dockerfile line %d: FROM %s: the image must build FROM the current agent image %s", ins.line, Clean(args[0]), agentImage)
			}
		case "ARG":
			if froms == 0 {
				return fmt.Errorf("dockerfile line %d: ARG before FROM is not allowed", ins.line)
			}
		}
		if froms == 0 && cmd != "FROM" {
			return fmt.Errorf("dockerfile line %d: the first instruction must be FROM %s", ins.line, agentImage)
		}
		for _, f := range flags {
			if strings.HasPrefix(f, "--from") || (strings.HasPrefix(f, "--mount") && strings.Contains(f, "from=")) {
				return fmt.Errorf("dockerfile line %d: %s brings in another image; the agent image is the only base", ins.line, Clean(f))
			}
		}
	}
	if froms != 1 {
		return fmt.Errorf("dockerfile: exactly one FROM (the current agent image %s) is required, found %d", agentImage, froms)
	}
	return nil
}

type instruction struct {
	line    int // where it starts, from 1
	text    string
	comment bool
}

// instructions splits a Dockerfile into comments and instructions, joining lines that
// end in a backslash (comment lines inside a continued instruction are dropped, as the
// Dockerfile parser does).
func instructions(content string) []instruction {
	var out []instruction
	var cur *instruction
	for i, raw := range strings.Split(content, "\n") {
		line := strings.TrimSpace(raw)
		if cur == nil {
			if line == "" {
				continue
			}
			if strings.HasPrefix(line, "#") {
				out = append(out, instruction{line: i + 1, text: line, comment: true})
				continue
			}
			cur = &instruction{line: i + 1}
		} else if strings.HasPrefix(line, "#") {
			continue
		}
		body, cont := strings.CutSuffix(line, "\\")
		cur.text += body + " "
		if !cont {
			cur.text = strings.TrimSpace(cur.text)
			out = append(out, *cur)
			cur = nil
		}
	}
	if cur != nil && strings.TrimSpace(cur.text) != "" {
		cur.text = strings.TrimSpace(cur.text)
		out = append(out, *cur)
	}
	return out
}

// BaseDockerfile is the Dockerfile shown for an agent image bottle has no source of.
func BaseDockerfile(image string) string { return "FROM " + image + "\n" }
