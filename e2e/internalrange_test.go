package e2e

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// internalAddr is in 198.18.0.0/15 (benchmarking): internal for the filters but outside
// RFC 1918, the kind of range the filter's first list missed. It is put on the test's
// own upstream bridge, so nothing sent to it leaves the host.
var internalAddr = netip.MustParseAddr("198.18.0.7")

const internalName = "api.internal.test"

// internalTarget puts internalAddr on the upstream bridge (newUpstream must run first)
// and serves TLS for internalName there, so an admitted tunnel would complete its
// handshake. It returns the --add-host flag that points the sidecars at it.
func internalTarget(t *testing.T) []string {
	t.Helper()
	if out, err := exec.Command("ip", "addr", "add", internalAddr.String()+"/32", "dev", "bte2e-up").CombinedOutput(); err != nil {
		t.Fatalf("add %s to the test bridge: %v: %s", internalAddr, err, out)
	}
	_, cert := testCA(t, internalName)
	ln, err := tls.Listen("tcp", netip.AddrPortFrom(internalAddr, 443).String(), &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	acceptEach(t, ln, func(c net.Conn) { c.(*tls.Conn).Handshake(); c.Close() })
	// Positive control: the target answers TLS, so only the filter can stop a tunnel.
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", netip.AddrPortFrom(internalAddr, 443).String(), &tls.Config{ServerName: internalName, InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("control: the internal target does not answer TLS: %v", err)
	}
	c.Close()
	return []string{"--add-host", internalName + ":" + internalAddr.String()}
}

// TestFilterRefusesAllowlistedNameInInternalRange: an allowlisted name that resolves into
// a non-RFC1918 internal range is refused by the builtin filter (pipelock's side is in
// TestPipelockFilter).
func TestFilterRefusesAllowlistedNameInInternalRange(t *testing.T) {
	e := newEnv(t)
	newUpstream(t)
	manifest := fmt.Sprintf(`[agents.ranges]
bottle = "b"
image = %q
command = ["/bin/sleep", "600"]

[bottles.b]
runtime = "runsc-runc"
filter = "builtin"
allowlist = ["api.allowed.test", %q]
`, testImage, internalName)
	if err := os.WriteFile(e.manifest, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"start", "--detach", "--add-host", "api.allowed.test:" + upstreamAddr.Addr().String()}, internalTarget(t)...)
	if out, errOut, code := e.bottle(nil, append(args, "ranges")...); code != 0 {
		t.Fatalf("start: exit %d: %s %s", code, out, errOut)
	}
	id := e.identityOf("ranges")
	expectPrefix(t, e.probe(id, "connect", "filter:8888", "api.allowed.test:443", "api.allowed.test"), "TLSOK", "CONNECT to an allowlisted public host (control)")
	expectPrefix(t, e.probe(id, "connect", "filter:8888", internalName+":443", internalName), "REFUSED 403", "CONNECT to an allowlisted name inside 198.18.0.0/15")
	expectPrefix(t, e.probe(id, "get", "http://filter:8888", "http://"+internalName+"/"), "STATUS 403", "plain HTTP to an allowlisted name inside 198.18.0.0/15")
	if logs := e.must("logs", id, "--role", "filter"); !strings.Contains(logs, "inside internal range 198.18.0.0/15") {
		t.Errorf("filter log lacks the internal-range refusal:\n%s", logs)
	}
	e.must("rm", "--force", id)
	e.assertNothingLeft(id)
}
