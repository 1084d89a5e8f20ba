// Package envname checks environment variable names, shared by the manifest and the
// sidecars that read credentials by name.
package envname

// Valid reports whether s is a portable environment variable name: letters, digits and
// '_', not starting with a digit.
func Valid(s string) bool {
	if s == "" || ('0' <= s[0] && s[0] <= '9') {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}
