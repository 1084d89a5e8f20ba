package firewall

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"

	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/utils"
)

// Masq is one masquerade rule the CNI bridge plugin wrote for a container on a network
// (ipMasq): a POSTROUTING jump from Source to chain MasqChain(Network, Container).
type Masq struct {
	Network, Container string
	Source             netip.Prefix
}

// MasqChain is the nat chain of the bridge plugin's masquerade rules of network and
// container.
func MasqChain(network, container string) string {
	return utils.FormatChainName(network, container)
}

// masqCommentRE reads the comment utils.FormatComment gives every masquerade rule, as
// `iptables -S` prints it (quoted, inner quotes escaped), and the rule's source.
var (
	masqCommentRE = regexp.MustCompile(`name: \\?"([^"\\]+)\\?" id: \\?"([^"\\]+)\\?"`)
	masqSourceRE  = regexp.MustCompile(`-s ([0-9a-f.:]+/[0-9]+)`)
)

// ListMasq lists the bridge plugin's masquerade rules (IPv4), of every network.
func ListMasq(ctx context.Context) ([]Masq, error) {
	if _, err := exec.LookPath("iptables"); err != nil {
		return nil, nil // no iptables, so the plugin cannot have written rules either
	}
	lines, err := ipt{bin: "iptables"}.rules(ctx, "nat", "POSTROUTING")
	if err != nil {
		return nil, err
	}
	var out []Masq
	for _, l := range lines {
		if m, ok := parseMasq(l); ok {
			out = append(out, m)
		}
	}
	return out, nil
}

// parseMasq reads a POSTROUTING rule of `iptables -S` as a masquerade rule.
func parseMasq(line string) (Masq, bool) {
	c, s := masqCommentRE.FindStringSubmatch(line), masqSourceRE.FindStringSubmatch(line)
	if c == nil || s == nil {
		return Masq{}, false
	}
	src, err := netip.ParsePrefix(s[1])
	if err != nil {
		return Masq{}, false
	}
	return Masq{Network: c[1], Container: c[2], Source: src}, true
}

// RemoveMasq runs the bridge plugin's own teardown of the masquerade rules of network and
// container for source address addr: the plugin's DEL only does it while it still finds
// the address in the netns, and runsc removes it at sandbox start. Missing rules are fine.
func RemoveMasq(network, container string, addr netip.Addr) error {
	if _, err := exec.LookPath("iptables"); err != nil {
		return nil // no iptables, so the plugin cannot have written rules either
	}
	ipn := &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(addr.BitLen(), addr.BitLen())}
	if err := ip.TeardownIPMasqForNetworks([]*net.IPNet{ipn}, network, "", container); err != nil {
		return fmt.Errorf("remove masquerade rules of network %s (container %s): %w", network, container, err)
	}
	return nil
}
