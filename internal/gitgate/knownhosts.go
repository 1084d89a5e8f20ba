package gitgate

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// MaxKnownHosts bounds a remote's known_hosts text.
const MaxKnownHosts = 64 << 10

// KnownHost is one host key line of a remote's known_hosts text.
type KnownHost struct {
	Line   int    // 1-based line number, for messages
	Marker string // "", "cert-authority" or "revoked"
	Hosts  []string
	Key    ssh.PublicKey
}

// ParseKnownHosts reads a remote's known_hosts text (the OpenSSH format of
// golang.org/x/crypto/ssh/knownhosts), line by line: every line that is not blank or a
// comment must be a host key line with no marker other than @cert-authority or @revoked.
// git-gate builds its host key check from it; the manifest checks the text with
// CheckKnownHosts before anything starts.
func ParseKnownHosts(text string) ([]KnownHost, error) {
	if len(text) > MaxKnownHosts {
		return nil, fmt.Errorf("known_hosts is longer than %d KiB", MaxKnownHosts>>10)
	}
	var out []KnownHost
	for n, line := range strings.Split(text, "\n") {
		line = strings.Trim(strings.TrimSuffix(line, "\r"), " \t")
		if line == "" || line[0] == '#' {
			continue
		}
		marker, hosts, key, _, _, err := ssh.ParseKnownHosts([]byte(line))
		if err == io.EOF {
			err = errors.New("not a known_hosts line (HOSTS KEY-TYPE BASE64-KEY)")
		}
		if err == nil && marker != "" && marker != "cert-authority" && marker != "revoked" {
			err = fmt.Errorf("unknown marker @%s", marker)
		}
		if err != nil {
			return nil, fmt.Errorf("known_hosts line %d: %v", n+1, err)
		}
		out = append(out, KnownHost{Line: n + 1, Marker: marker, Hosts: hosts, Key: key})
	}
	return out, nil
}

// CheckKnownHosts checks a remote's known_hosts text at least as strictly as git-gate
// reads it: ParseKnownHosts must accept it, every line's host patterns must be valid,
// and one line that is not @revoked must pin the key of host:port, where git-gate
// connects.
func CheckKnownHosts(text, host, port string) error {
	lines, err := ParseKnownHosts(text)
	if err != nil {
		return err
	}
	pinned := false
	for _, l := range lines {
		match, err := hostsMatch(l.Hosts, host, port)
		if err != nil {
			return fmt.Errorf("known_hosts line %d: %v", l.Line, err)
		}
		pinned = pinned || (match && l.Marker != "revoked")
	}
	if !pinned {
		return fmt.Errorf("known_hosts pins no key of %s, where the url connects", knownhosts.Normalize(net.JoinHostPort(host, port)))
	}
	return nil
}

// hostsMatch checks a known_hosts line's host patterns as knownhosts parses them and
// reports whether they match host:port: a hashed name (|1|salt|hash) stands alone;
// otherwise a comma-separated list of patterns ('*' and '?' wildcards, [host]:port for a
// port other than 22) where a matching negated pattern (!pattern) wins.
func hostsMatch(patterns []string, host, port string) (bool, error) {
	if strings.HasPrefix(patterns[0], "|") {
		if len(patterns) > 1 {
			return false, errors.New("a hashed host name must be the line's only host")
		}
		parts := strings.Split(patterns[0], "|")
		if len(parts) != 4 || parts[1] != "1" {
			return false, errors.New("malformed hashed host name (want |1|SALT|HASH)")
		}
		salt, err1 := base64.StdEncoding.DecodeString(parts[2])
		hash, err2 := base64.StdEncoding.DecodeString(parts[3])
		if err1 != nil || err2 != nil {
			return false, errors.New("malformed hashed host name (SALT and HASH are base64)")
		}
		mac := hmac.New(sha1.New, salt)
		mac.Write([]byte(knownhosts.Normalize(net.JoinHostPort(host, port))))
		return bytes.Equal(mac.Sum(nil), hash), nil
	}
	matched := false
	for _, p := range patterns {
		if p == "" {
			continue
		}
		negate := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(p, "!")
		if p == "" {
			return false, errors.New("negation without a host name")
		}
		h, pp, err := net.SplitHostPort(p)
		if err != nil && strings.HasPrefix(p, "[") {
			return false, fmt.Errorf("host pattern %q: %v", p, err)
		} else if err != nil {
			h, pp = p, "22"
		}
		if pp == port && wildcardMatch(h, host) {
			if negate {
				return false, nil
			}
			matched = true
		}
	}
	return matched, nil
}

// wildcardMatch matches OpenSSH host patterns: '*' is any run of characters, '?' one.
func wildcardMatch(pat, s string) bool {
	for pat != "" {
		switch {
		case pat[0] == '*':
			for i := 0; i <= len(s); i++ {
				if wildcardMatch(pat[1:], s[i:]) {
					return true
				}
			}
			return false
		case s == "":
			return false
		case pat[0] == '?' || pat[0] == s[0]:
			pat, s = pat[1:], s[1:]
		default:
			return false
		}
	}
	return s == ""
}
