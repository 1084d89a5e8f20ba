package e2e

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestTeamExampleStarts: examples/team.toml as shipped starts once its two remotes point
// at the test's forge (URLs, SSH key, pinned host key: the only lines replaced): two
// agents, supervise, two credential routes, resources and the allowlist. The agent's
// supervise server shows the example's allowlist and routes, with no credential.
func TestTeamExampleStarts(t *testing.T) {
	e, forge, resolv, workspace := newForgeEnv(t)
	data, err := os.ReadFile("../examples/team.toml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	for _, r := range []struct{ pattern, with string }{
		{`"git@github.com:example/project.git"`, strconv.Quote(gitSSHURL)},
		{`"/home/me/.ssh/bottle_ed25519"`, strconv.Quote(forge.keyFile)},
		{`known_hosts = "[^"]*"`, "known_hosts = " + strconv.Quote(forge.knownHosts)},
		{`"https://github.com/example/upstream.git"`, strconv.Quote(gitHTTPSURL)},
	} {
		re := regexp.MustCompile(r.pattern)
		if n := len(re.FindAllStringIndex(text, -1)); n != 1 {
			t.Fatalf("examples/team.toml has %d matches of %s, want 1: update this test with the example", n, r.pattern)
		}
		text = re.ReplaceAllLiteralString(text, r.with)
	}
	if err := os.WriteFile(e.manifest, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	const routeToken = "sk-team-example-route-token"
	cmd := e.command([]string{"MY_CLAUDE_OAUTH=" + routeToken, "GITHUB_TOKEN=" + routeToken, "UPSTREAM_GIT_TOKEN=" + forge.token, "GITHUB_USER=tester"},
		"start", "--detach", "--ca-file", forge.caFile, "--resolv-conf", resolv, "--add-host", gitHost+":"+upstreamAddr.Addr().String(),
		"coder", "--", "/bin/sleep", "600")
	cmd.Dir = workspace
	if out, errOut, code := runCmd(t, cmd); code != 0 {
		t.Fatalf("start of examples/team.toml: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	id := e.identityOf("coder")
	for _, b := range e.ps() {
		if b.Identity != id {
			continue
		}
		for _, role := range []string{"agent", "filter", "egress-proxy", "git-gate", "supervise"} {
			if b.Containers[role] != "running" {
				t.Errorf("%s of %s is %q, want running (ps: %+v)", role, id, b.Containers[role], b)
			}
		}
	}
	caps := e.must("exec", id, "--", "curl", "-sS", "--noproxy", "*", "http://supervise:8080/v1/capabilities")
	for _, want := range []string{"registry.npmjs.org", "api.anthropic.com", "api.github.com", "refs/heads/scratch/*"} {
		if !strings.Contains(caps, want) {
			t.Errorf("supervise's capabilities lack %q:\n%s", want, caps)
		}
	}
	if strings.Contains(caps, routeToken) || strings.Contains(caps, forge.token) {
		t.Errorf("supervise's capabilities show a credential:\n%s", caps)
	}
	e.must("rm", "--force", id)
	e.assertNothingLeft(id)
}
