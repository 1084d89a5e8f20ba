package supervise

import (
	"fmt"
	"slices"
	"strings"
)

// UnifiedDiff renders the line diff of a and b as a unified diff with 3 lines of
// context (an LCS diff: proposals are small, MaxDockerfileBytes bounds the work).
func UnifiedDiff(nameA, nameB, a, b string) string {
	x, y := splitLines(a), splitLines(b)
	// lcs[i][j] is the longest common subsequence of x[i:] and y[j:].
	lcs := make([][]int, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	type op struct {
		kind byte // ' ', '-', '+'
		line string
		ai   int // lines of a before this one
		bi   int
	}
	var ops []op
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		switch {
		case i < len(x) && j < len(y) && x[i] == y[j]:
			ops = append(ops, op{' ', x[i], i, j})
			i, j = i+1, j+1
		case i < len(x) && (j == len(y) || lcs[i+1][j] >= lcs[i][j+1]):
			ops = append(ops, op{'-', x[i], i, j})
			i++
		default:
			ops = append(ops, op{'+', y[j], i, j})
			j++
		}
	}
	const context = 3
	var out strings.Builder
	fmt.Fprintf(&out, "--- %s\n+++ %s\n", nameA, nameB)
	for k := 0; k < len(ops); {
		if ops[k].kind == ' ' {
			k++
			continue
		}
		start := max(k-context, 0)
		end := k
		// Extend the hunk while changes are within 2*context lines of each other.
		for end < len(ops) {
			if ops[end].kind != ' ' {
				end++
				continue
			}
			run := end
			for run < len(ops) && ops[run].kind == ' ' {
				run++
			}
			if run == len(ops) || run-end > 2*context {
				end = min(end+context, len(ops))
				break
			}
			end = run
		}
		var na, nb int
		for _, o := range ops[start:end] {
			if o.kind != '+' {
				na++
			}
			if o.kind != '-' {
				nb++
			}
		}
		fmt.Fprintf(&out, "@@ -%s +%s @@\n", hunkRange(ops[start].ai, na), hunkRange(ops[start].bi, nb))
		for _, o := range ops[start:end] {
			out.WriteByte(o.kind)
			out.WriteString(o.line)
			out.WriteByte('\n')
		}
		k = end
	}
	return out.String()
}

func hunkRange(before, n int) string {
	if n == 0 {
		return fmt.Sprintf("%d,0", before)
	}
	if n == 1 {
		return fmt.Sprint(before + 1)
	}
	return fmt.Sprintf("%d,%d", before+1, n)
}

func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

// ListDiff renders a list change as before and after, one entry a line.
func ListDiff(what string, before, after []string) string {
	var out strings.Builder
	fmt.Fprintf(&out, "%s before: %s\n", what, listOrNone(before))
	fmt.Fprintf(&out, "%s after:  %s\n", what, listOrNone(after))
	for _, e := range after {
		if !slices.Contains(before, e) {
			fmt.Fprintf(&out, "  + %s\n", Clean(e))
		}
	}
	for _, e := range before {
		if !slices.Contains(after, e) {
			fmt.Fprintf(&out, "  - %s\n", Clean(e))
		}
	}
	return out.String()
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "(none)"
	}
	c := make([]string, len(l))
	for i, e := range l {
		c[i] = Clean(e)
	}
	return strings.Join(c, ", ")
}
