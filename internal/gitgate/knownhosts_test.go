package gitgate

import (
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func TestKnownHosts(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	pub, err := ssh.NewPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	key := strings.SplitN(knownhosts.Line([]string{"x"}, pub), " ", 2)[1] // "TYPE BASE64"
	line := func(hosts string) string { return hosts + " " + key }
	for _, tc := range []struct {
		text, host, port string
		want             string // "" for accepted
	}{
		{line("github.com"), "github.com", "22", ""},
		{"# comment\r\n\n  " + line("a.example,github.com") + " comment\r\n", "github.com", "22", ""},
		{knownhosts.Line([]string{knownhosts.HashHostname("github.com")}, pub), "github.com", "22", ""},
		{knownhosts.Line([]string{knownhosts.HashHostname("[git.example]:2222")}, pub), "git.example", "2222", ""},
		{line("*.example.com"), "git.example.com", "22", ""},
		{line("[git.example.com]:2222"), "git.example.com", "2222", ""},
		{line("[::1]:2222"), "::1", "2222", ""},
		{"@cert-authority *.example.com " + key, "git.example.com", "22", ""},
		{line("github.com"), "GitHub.com", "22", "pins no key of GitHub.com"}, // git-gate compares as written
		{line("github.com"), "github.com", "2222", "pins no key of [github.com]:2222"},
		{line("*.example.com,!git.example.com"), "git.example.com", "22", "pins no key"},
		{"@revoked github.com " + key, "github.com", "22", "pins no key"},
		{knownhosts.Line([]string{knownhosts.HashHostname("gitlab.com")}, pub), "github.com", "22", "pins no key"},
		{"garbage", "github.com", "22", "line 1: not a known_hosts line"},
		{line("github.com") + "\ngithub.com ssh-ed25519", "github.com", "22", "line 2"},
		{"github.com ssh-rsa " + strings.Fields(key)[1], "github.com", "22", "line 1: ssh: known hosts key type mismatch"},
		{"@marker github.com " + key, "github.com", "22", "unknown marker @marker"},
		{line("|1|AAAA|BBBB,github.com"), "github.com", "22", "hashed host name must be the line's only host"},
		{line("|2|AAAA|BBBB"), "github.com", "22", "malformed hashed host name"},
		{line("|1|!!|BBBB"), "github.com", "22", "malformed hashed host name"},
		{line("!"), "github.com", "22", "negation without a host name"},
		{line("[github.com:22"), "github.com", "22", "host pattern"},
		{strings.Repeat("#", MaxKnownHosts+1), "github.com", "22", "longer than 64 KiB"},
	} {
		err := CheckKnownHosts(tc.text, tc.host, tc.port)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%.60q for %s:%s: %v, want %q", tc.text, tc.host, tc.port, err, tc.want)
		}
		if tc.want == "" {
			// What the manifest accepts, git-gate's knownhosts accepts for this host.
			f := filepath.Join(t.TempDir(), "known_hosts")
			os.WriteFile(f, []byte(tc.text), 0o600)
			cb, err := knownhosts.New(f)
			if err == nil {
				err = cb(net.JoinHostPort(tc.host, tc.port), &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 22}, pub)
			}
			if err != nil {
				t.Errorf("%.60q: knownhosts refuses the key of %s:%s: %v", tc.text, tc.host, tc.port, err)
			}
		}
	}
}
