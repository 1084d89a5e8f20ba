package names

import (
	"net/netip"
	"strings"
	"testing"
)

func TestIdentity(t *testing.T) {
	id, err := NewIdentity("claude", "a1b2c3")
	if err != nil {
		t.Fatal(err)
	}
	if id != "claude-a1b2c3" || id.Agent() != "claude" {
		t.Fatalf("identity %q agent %q", id, id.Agent())
	}
	if got := id.Container(RoleEgressProxy); got != "bottle-claude-a1b2c3-egress-proxy" {
		t.Fatalf("container name %q", got)
	}
	for _, role := range Roles {
		back, ok := IdentityOfContainer(id.Container(role))
		if !ok || back != id {
			t.Fatalf("IdentityOfContainer(%q) = %q, %v", id.Container(role), back, ok)
		}
	}
	for _, bad := range []string{"", "claude", "claude-a1b2c", "Claude-a1b2c3", "claude-A1B2C3", "1claude-a1b2c3", "claude-a1b2c3-", "claude-a1b2c3\n"} {
		if _, err := ParseIdentity(bad); err == nil {
			t.Errorf("ParseIdentity(%q) accepted", bad)
		}
	}
	for _, bad := range []string{"bottle-claude-a1b2c3-other", "bottle-claude-a1b2c", "claude-a1b2c3-agent"} {
		if _, ok := IdentityOfContainer(bad); ok {
			t.Errorf("IdentityOfContainer(%q) accepted", bad)
		}
	}
	if _, err := NewIdentity("claude", "xyz123"); err == nil {
		t.Error("NewIdentity accepted a suffix that is not hex")
	}
}

func TestCheckAgentName(t *testing.T) {
	for _, ok := range []string{"a", "claude", "my-agent-2", strings.Repeat("a", 24)} {
		if err := CheckAgentName(ok); err != nil {
			t.Errorf("CheckAgentName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Claude", "2x", "-x", strings.Repeat("a", 25), "a-123456", "a-abcdef-b", "a_b"} {
		if err := CheckAgentName(bad); err == nil {
			t.Errorf("CheckAgentName(%q) accepted", bad)
		}
	}
}

func TestHostNames(t *testing.T) {
	for _, ok := range []string{"example.com", "api.anthropic.com", "a", "_svc.example.com", "x-y.example", strings.Repeat("a", 63) + ".com"} {
		if err := CheckHostName(ok); err != nil {
			t.Errorf("CheckHostName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "127.0.0.1", "127.1", "2130706433", "0x7f000001", "Example.com", "a..b", "-a.com", "a-.com",
		"a.com:443", "*.a.com", "http://a.com", "ex ample.com", "ex\u00e4mple.com", strings.Repeat("a", 64) + ".com", strings.Repeat("a.", 127) + "ab", "[::1]"} {
		if err := CheckHostName(bad); err == nil {
			t.Errorf("CheckHostName(%q) accepted", bad)
		}
	}
	if got := NormalizeHost("API.Example.COM."); got != "api.example.com" {
		t.Errorf("NormalizeHost = %q", got)
	}
}

func TestParseHostEntry(t *testing.T) {
	for in, want := range map[string]HostEntry{
		"mirror.internal:10.1.2.3": {Name: "mirror.internal", Addr: netip.MustParseAddr("10.1.2.3")},
		"Git.Example.:2001:db8::1": {Name: "git.example", Addr: netip.MustParseAddr("2001:db8::1")},
	} {
		got, err := ParseHostEntry(in)
		if err != nil || got != want {
			t.Errorf("ParseHostEntry(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "name", ":10.0.0.1", "name:", "name:300.1.1.1", "1.2.3.4:1.2.3.4", "bad_-name!:10.0.0.1"} {
		if _, err := ParseHostEntry(bad); err == nil {
			t.Errorf("ParseHostEntry(%q) accepted", bad)
		}
	}
}
