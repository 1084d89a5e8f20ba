package plan

import (
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/names"
)

// EgressProxyPort is the port the egress-proxy listens on.
const EgressProxyPort = 9000

// ClaudePlaceholderToken is what the agent holds instead of the real OAuth token: the
// value the egress-proxy also writes where an upstream echoes the real one.
const ClaudePlaceholderToken = egress.CredentialPlaceholder

// RouteURL is the base URL through which the agent reaches a route's upstream.
func RouteURL(host string) string {
	return fmt.Sprintf("http://%s:%d/%s", names.RoleEgressProxy, EgressProxyPort, host)
}

// egressProxy injects the routes' credentials (internal/egress); its config names each
// credential, the values go only into its process env.
type egressProxy struct{}

func (egressProxy) role() string           { return names.RoleEgressProxy }
func (egressProxy) wanted(b *builder) bool { return len(b.p.Routes) > 0 }
func (egressProxy) records()               {}
func (egressProxy) container(b *builder) (*Container, error) {
	c := b.newContainer(names.RoleEgressProxy, b.in.SidecarImage, true)
	env := map[string]string{}
	for _, r := range b.p.Routes {
		b.secret(c, env, r.TokenRef, fmt.Sprintf("token_ref of route %s: export the credential; only the egress-proxy gets it", r.Host))
	}
	cfg := egress.ProxyConfig{
		Listen: fmt.Sprintf("%s:%d", b.addr(names.RoleEgressProxy, names.NetInternal), EgressProxyPort),
		Routes: b.p.Routes,
	}
	mount, err := b.stageJSON("egress-proxy/routes.json", "/etc/bottle/routes.json", cfg)
	if err != nil {
		return nil, err
	}
	ca, _ := b.extraCA()
	c.Spec, err = b.sidecarSpec(names.RoleEgressProxy, []string{"/bottle", "sidecar", "egress-proxy", "--config", "/etc/bottle/routes.json"}, env, append([]specs.Mount{mount}, ca...))
	c.Ready = b.readyFiles(names.RoleEgressProxy)
	return c, err
}
