package envname

import "testing"

func TestValid(t *testing.T) {
	for s, want := range map[string]bool{
		"A": true, "_x": true, "GIT_TOKEN_2": true, "": false, "2X": false, "A-B": false, "A B": false, "Ä": false, "A=B": false,
	} {
		if got := Valid(s); got != want {
			t.Errorf("Valid(%q) = %v, want %v", s, got, want)
		}
	}
}
