package supervise

import (
	"fmt"
	"slices"
	"strings"
)

// UnifiedDiff renders the line diff of a and b as a unified diff with 3 lines of
// context.
func UnifiedDiff(nameA, nameB, a, b string) string {
	ops := lineDiff(splitLines(a), splitLines(b))
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

// diffOp is one line of a diff: kept (' '), removed ('-') or added ('+'), with the
// numbers of lines of a and b before it.
type diffOp struct {
	kind   byte
	line   string
	ai, bi int
}

// maxDiffCells bounds the LCS table (ints): a proposal is at most MaxDockerfileBytes, but
// 64 KiB of empty lines against another would need 34 GB. Beyond it the lines between
// the common prefix and suffix are shown as replaced whole.
const maxDiffCells = 1 << 22

// lineDiff is an LCS line diff of x and y, after their common prefix and suffix.
func lineDiff(x, y []string) []diffOp {
	var ops []diffOp
	p := 0
	for p < len(x) && p < len(y) && x[p] == y[p] {
		ops = append(ops, diffOp{' ', x[p], p, p})
		p++
	}
	q := 0
	for q < len(x)-p && q < len(y)-p && x[len(x)-1-q] == y[len(y)-1-q] {
		q++
	}
	mx, my := x[p:len(x)-q], y[p:len(y)-q]
	// lcs[i][j] is the longest common subsequence of mx[i:] and my[j:].
	var lcs [][]int
	if (len(mx)+1)*(len(my)+1) <= maxDiffCells {
		lcs = make([][]int, len(mx)+1)
		for i := range lcs {
			lcs[i] = make([]int, len(my)+1)
		}
		for i := len(mx) - 1; i >= 0; i-- {
			for j := len(my) - 1; j >= 0; j-- {
				if mx[i] == my[j] {
					lcs[i][j] = lcs[i+1][j+1] + 1
				} else {
					lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
				}
			}
		}
	}
	i, j := 0, 0
	for i < len(mx) || j < len(my) {
		switch {
		case lcs != nil && i < len(mx) && j < len(my) && mx[i] == my[j]:
			ops = append(ops, diffOp{' ', mx[i], p + i, p + j})
			i, j = i+1, j+1
		case i < len(mx) && (j == len(my) || lcs == nil || lcs[i+1][j] >= lcs[i][j+1]):
			ops = append(ops, diffOp{'-', mx[i], p + i, p + j})
			i++
		default:
			ops = append(ops, diffOp{'+', my[j], p + i, p + j})
			j++
		}
	}
	for k := 0; k < q; k++ {
		ops = append(ops, diffOp{' ', x[len(x)-q+k], len(x) - q + k, len(y) - q + k})
	}
	return ops
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
