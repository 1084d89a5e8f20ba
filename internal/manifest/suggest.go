package manifest

import (
	"strconv"
	"strings"
)

// maxSuggestDistance is how many single-character edits a near miss may be from a known
// word: a typo or two ("hots" for "host", "runcs" for "runsc").
const maxSuggestDistance = 2

// suggest returns the known word closest to got if it is a near miss (at most
// maxSuggestDistance edits, ignoring case, and fewer edits than got has characters), else "".
// Of equally near words the first in known wins.
func suggest(got string, known []string) string {
	best, bestDist := "", maxSuggestDistance+1
	g := strings.ToLower(got)
	for _, k := range known {
		if d := editDistance(g, strings.ToLower(k)); d < bestDist && d < len([]rune(got)) {
			best, bestDist = k, d
		}
	}
	return best
}

// DidYouMean is "; did you mean "X"?" for a near miss of one of known, else "".
func DidYouMean(got string, known []string) string {
	if s := suggest(got, known); s != "" {
		return "; did you mean " + strconv.Quote(s) + "?"
	}
	return ""
}

// editDistance is the edit distance between a and b in runes, a swap of two neighbours
// counting as one edit (optimal string alignment): "runcs" is one edit from "runsc".
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}
