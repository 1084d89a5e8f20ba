package plan

import (
	"cmp"
	"fmt"
	"net/netip"
	"path"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
)

// DefaultPipelockImage is the pinned pipelock image.
const DefaultPipelockImage = "ghcr.io/luckypipewrench/pipelock:v2.3.0"

// PipelockImageFor is the pipelock image of a bottle: the override (a flag), else the
// manifest's, else the pinned default.
func PipelockImageFor(b *manifest.Bottle, override string) string {
	return cmp.Or(override, b.PipelockImage, DefaultPipelockImage)
}

// FilterPipelock names pipelock (github.com/luckyPipewrench/pipelock) as the filter.
const FilterPipelock = "pipelock"

type pipelockFilter struct{}

func (pipelockFilter) name() string           { return FilterPipelock }
func (pipelockFilter) role() string           { return names.RoleFilter }
func (pipelockFilter) wanted(b *builder) bool { return b.p.Filter == FilterPipelock }
func (pipelockFilter) container(b *builder) (*Container, error) {
	c := b.newContainer(names.RoleFilter, PipelockImageFor(b.bottle, b.in.PipelockImage), true)
	b.p.StageFiles = append(b.p.StageFiles, StageFile{Name: "filter/pipelock.yaml", Mode: 0o644, Content: PipelockConfig(b.p.Allowlist, egress.DefaultInternal)})
	// pipelock cannot report readiness in a file: it listens on every interface so the
	// host can ask GET /health on the egress side.
	spec, err := b.sidecarSpec(names.RoleFilter,
		[]string{"/pipelock", "run", "--listen", fmt.Sprintf("0.0.0.0:%d", FilterPort), "--config", "/etc/pipelock/pipelock.yaml"}, nil,
		[]specs.Mount{bind(path.Join(b.p.StageDir, "filter/pipelock.yaml"), "/etc/pipelock/pipelock.yaml", true)})
	c.Spec = spec
	c.Ready = &Readiness{URL: PipelockHealthURL(b.addr(names.RoleFilter, names.NetEgress))}
	return c, err
}

// PipelockHealthURL is where the host sees pipelock serve, at its egress address.
func PipelockHealthURL(egressAddr netip.Addr) string {
	return fmt.Sprintf("http://%s/health", netip.AddrPortFrom(egressAddr, FilterPort))
}

// PipelockEmptyAllowlistHost stands in for an empty allowlist in pipelock's config:
// strict mode refuses to start without an api_allowlist entry, and a name under the
// reserved .invalid top-level domain (RFC 6761) never resolves, so nothing is reachable.
const PipelockEmptyAllowlistHost = "nothing-allowed.invalid"

// PipelockConfig renders pipelock's YAML config (checked against pipelock v2.3.0, whose
// parser rejects unknown fields). `mode: strict` is what makes pipelock enforce
// api_allowlist (its `*.suffix` matches the suffix and every subdomain, as bottle's
// does); `internal` is added to pipelock's own SSRF list; a tunnel lives at most 4 h and
// closes after 10 min idle, as the builtin filter's (pipelock caps concurrent tunnels
// itself, at 1024, with no setting).
func PipelockConfig(allow, internal []string) string {
	if len(allow) == 0 {
		allow = []string{PipelockEmptyAllowlistHost}
	}
	var b strings.Builder
	b.WriteString("# Rendered by bottle; pipelock parses this strictly.\nversion: 1\nmode: strict\nenforce: true\n")
	b.WriteString("api_allowlist:\n")
	writeYAMLList(&b, allow)
	b.WriteString("forward_proxy:\n  enabled: true\n  max_tunnel_seconds: 14400\n  idle_timeout_seconds: 600\n  sni_verification: true\n")
	b.WriteString("logging:\n  format: json\n  output: stdout\n  include_allowed: true\n  include_blocked: true\n")
	b.WriteString("internal:\n")
	writeYAMLList(&b, internal)
	return b.String()
}

// writeYAMLList writes a block sequence of double-quoted scalars (host names and CIDRs
// are plain ASCII, so Go's quoting is valid YAML).
func writeYAMLList(b *strings.Builder, items []string) {
	for _, it := range items {
		b.WriteString("  - " + strconv.Quote(it) + "\n")
	}
}
