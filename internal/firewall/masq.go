package firewall

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"

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
// `iptables -S` prints it (quoted, inner quotes escaped), and the rule's source: the
// plugins' iptables backend cannot list its rules (its GC is a no-op), so the sweep reads
// them here.
var (
	masqCommentRE = regexp.MustCompile(`name: \\?"([^"\\]+)\\?" id: \\?"([^"\\]+)\\?"`)
	masqSourceRE  = regexp.MustCompile(`-s ([0-9a-f.:]+/[0-9]+)`)
)

// NAT is what one listing of the IPv4 nat table shows of the bridge plugin's masquerade.
type NAT struct {
	Rules  []Masq
	chains map[string]bool
}

// ReadNAT lists the nat table once (nothing without iptables: then the plugin cannot
// have written rules either).
func ReadNAT(ctx context.Context) (NAT, error) {
	if _, err := exec.LookPath("iptables"); err != nil {
		return NAT{}, nil
	}
	lines, err := ipt{bin: "iptables"}.rules(ctx, "nat", "")
	if err != nil {
		return NAT{}, fmt.Errorf("list masquerade rules: %w", err)
	}
	n := NAT{chains: map[string]bool{}}
	for _, l := range lines {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "-N" {
			n.chains[f[1]] = true
		} else if m, ok := parseMasq(l); ok {
			n.Rules = append(n.Rules, m)
		}
	}
	return n, nil
}

// ListMasq lists the bridge plugin's masquerade rules (IPv4) of every network.
func ListMasq(ctx context.Context) ([]Masq, error) {
	n, err := ReadNAT(ctx)
	return n.Rules, err
}

// parseMasq reads a POSTROUTING rule of `iptables -S` as a masquerade rule.
func parseMasq(line string) (Masq, bool) {
	if !strings.HasPrefix(line, "-A POSTROUTING ") {
		return Masq{}, false
	}
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

// Remove removes what n shows of the masquerade of network and container: each rule (by
// its source) with the chain, or the chain alone when no rule jumps to it any more.
func (n NAT) Remove(network, container string) error {
	var errs []error
	found := false
	for _, r := range n.Rules {
		if r.Network == network && r.Container == container {
			found = true
			errs = append(errs, RemoveMasq(network, container, r.Source.Addr()))
		}
	}
	if !found && n.chains[MasqChain(network, container)] {
		// No rule names a source: the teardown's rule deletions find nothing, its chain
		// deletion does the work.
		errs = append(errs, RemoveMasq(network, container, netip.IPv4Unspecified()))
	}
	return errors.Join(errs...)
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
