package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/state"
)

// TestAgentReachesOnlyServedSidecarPorts scans, from inside the agent, every TCP port of
// every address of every sidecar: on the internal network only the ports the sidecars
// serve accept a connection, and nothing at all on their egress addresses (the agent has
// no route there). A listener a sidecar opens by mistake, or addresses that come to be
// shared by several sidecars, show up here.
func TestAgentReachesOnlyServedSidecarPorts(t *testing.T) {
	e := newEnv(t)
	e.writeBenchManifest("scan") // the builtin filter and an egress-proxy route
	if out, errOut, code := e.bottle([]string{benchTokenRef + "=dummy-scan-token"}, "start", "--detach", "scan"); code != 0 {
		t.Fatalf("start: exit %d: %s %s", code, out, errOut)
	}
	id := e.identityOf("scan")
	meta, err := state.Store{Dir: e.stateDir}.Load(names.Identity(id))
	if err != nil {
		t.Fatal(err)
	}
	served := map[string]string{names.RoleFilter: strconv.Itoa(plan.FilterPort), names.RoleEgressProxy: strconv.Itoa(plan.EgressProxyPort)}
	scanned := 0
	for _, c := range meta.Containers {
		if c.Role == names.RoleAgent {
			continue
		}
		want, ok := served[c.Role]
		if !ok {
			t.Fatalf("sidecar %s of role %s: the test does not know what it serves", c.Name, c.Role)
		}
		for _, a := range c.Attachments {
			if a.Network != names.NetInternal {
				want = "" // the agent has no route to the egress network
			}
			t0 := time.Now()
			got := e.probe(id, "portscan", a.Address.String(), "1", "65535")
			t.Logf("%s (%s on %s): %s in %v", a.Address, c.Role, a.Network, got, time.Since(t0).Round(time.Millisecond))
			var open string
			var refused, other int
			if _, err := fmt.Sscanf(strings.Replace(got, "open= ", "open=- ", 1), "PORTS open=%s refused=%d other=%d", &open, &refused, &other); err != nil {
				t.Fatalf("portscan of %s (%s on %s): %q: %v", a.Address, c.Role, a.Network, got, err)
			}
			if open == "-" {
				open = ""
			}
			if open != want {
				t.Errorf("the agent reaches ports [%s] of %s (%s on %s), want only [%s] (%s)", open, a.Address, c.Role, a.Network, want, got)
			}
			scanned++
		}
	}
	if scanned != 4 {
		t.Errorf("scanned %d sidecar addresses, want 4 (filter and egress-proxy, each on internal and egress)", scanned)
	}
}
