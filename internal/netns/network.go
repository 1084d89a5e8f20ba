// Package netns prepares the network side of a bottle: per-bottle subnets (slots),
// named network namespaces configured with CNI (bridge + static IPAM), the host
// firewall that isolates the internal network, and the sweep of leftovers.
//
// It is the only package that imports go-cni.
package netns

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"text/template"

	cniconfigs "github.com/bottle-dev/bottle/configs/cni"
)

// DefaultPool is the address pool slots are carved from (ARCHITECTURE.md).
var DefaultPool = netip.MustParsePrefix("10.213.0.0/16")

// HostGateway is the host part of an egress network's gateway (the host's address on
// the bridge). The containers' addresses come from the plan.
const HostGateway = 1

const (
	internalBridgePrefix = "bi-"
	egressBridgePrefix   = "be-"
	networkNamePrefix    = "bottle-"
	internalSuffix       = "-int"
	egressSuffix         = "-egr"
	chainPrefix          = "BOTTLE-"
)

// Network is one per-bottle CNI network (a bridge and a /24).
type Network struct {
	// Name is the CNI network name, bottle-<identity>-int or bottle-<identity>-egr.
	Name string
	// Bridge is the host bridge, bi-<8 hex> or be-<8 hex>.
	Bridge string
	// Subnet is the /24 of this network.
	Subnet netip.Prefix
	// Egress networks get gateway .1 on the bridge, masquerade and a default route;
	// internal ones get none of these.
	Egress bool
}

// Attachment is one interface of a container on a Network.
type Attachment struct {
	Network
	// IfName is the interface inside the netns; attachments must be eth0, eth1, ... in order
	// (empty means that default).
	IfName string
	// Addr is the container's static address inside Network.Subnet.
	Addr netip.Addr
}

var identityRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,23}-[0-9a-f]{6}$`)

// ValidateIdentity checks the identity format `<agent>-<6 lowercase hex>`.
func ValidateIdentity(identity string) error {
	if !identityRE.MatchString(identity) {
		return fmt.Errorf("invalid bottle identity %q: want <agent>-<6 lowercase hex> (agent matching ^[a-z][a-z0-9-]{0,23}$)", identity)
	}
	return nil
}

// IdentityHash is the 8 hex chars of sha256(identity) used in bridge and chain names.
func IdentityHash(identity string) string {
	sum := sha256.Sum256([]byte(identity))
	return hex.EncodeToString(sum[:4])
}

// InternalBridge is the internal bridge name of identity.
func InternalBridge(identity string) string { return internalBridgePrefix + IdentityHash(identity) }

// EgressBridge is the egress bridge name of identity.
func EgressBridge(identity string) string { return egressBridgePrefix + IdentityHash(identity) }

// SlotCount is how many slots pool holds (two /24 per slot).
func SlotCount(pool netip.Prefix) (int, error) {
	if err := validatePool(pool); err != nil {
		return 0, err
	}
	return 1 << (24 - pool.Bits() - 1), nil
}

func validatePool(pool netip.Prefix) error {
	if !pool.IsValid() || !pool.Addr().Is4() || pool.Bits() > 23 || pool.Bits() < 8 {
		return fmt.Errorf("invalid subnet pool %s: want an IPv4 prefix between /8 and /23 (e.g. %s)", pool, DefaultPool)
	}
	if pool.Masked() != pool {
		return fmt.Errorf("invalid subnet pool %s: host bits set, use %s", pool, pool.Masked())
	}
	return nil
}

// SlotSubnets returns the internal (2k-th /24) and egress ((2k+1)-th /24) subnets of slot k.
func SlotSubnets(slot int, pool netip.Prefix) (internal, egress netip.Prefix, err error) {
	n, err := SlotCount(pool)
	if err != nil {
		return internal, egress, err
	}
	if slot < 0 || slot >= n {
		return internal, egress, fmt.Errorf("slot %d outside subnet pool %s (it holds slots 0..%d)", slot, pool, n-1)
	}
	base := pool.Addr().As4()
	baseInt := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	mk := func(index uint32) netip.Prefix {
		v := baseInt + index<<8
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), 0}), 24)
	}
	return mk(uint32(2 * slot)), mk(uint32(2*slot + 1)), nil
}

// BottleNetworks computes the internal and egress networks of identity in slot.
func BottleNetworks(identity string, slot int, pool netip.Prefix) (internal, egress Network, err error) {
	if err := ValidateIdentity(identity); err != nil {
		return internal, egress, err
	}
	in, eg, err := SlotSubnets(slot, pool)
	if err != nil {
		return internal, egress, err
	}
	internal = Network{Name: networkNamePrefix + identity + internalSuffix, Bridge: InternalBridge(identity), Subnet: in}
	egress = Network{Name: networkNamePrefix + identity + egressSuffix, Bridge: EgressBridge(identity), Subnet: eg, Egress: true}
	return internal, egress, nil
}

// Addr returns the address with the given host part in the network's /24.
func (n Network) Addr(host int) (netip.Addr, error) {
	if !n.Subnet.Addr().Is4() || n.Subnet.Bits() != 24 || host < 1 || host > 254 {
		return netip.Addr{}, fmt.Errorf("no host part %d in network %s (%s): want a /24 and 1..254", host, n.Name, n.Subnet)
	}
	a := n.Subnet.Masked().Addr().As4()
	a[3] = byte(host)
	return netip.AddrFrom4(a), nil
}

// Gateway is the egress gateway (.1, on the host bridge); invalid for internal networks.
func (n Network) Gateway() netip.Addr {
	if !n.Egress {
		return netip.Addr{}
	}
	a, _ := n.Addr(HostGateway)
	return a
}

// Attach returns the attachment of the container with host part host on n.
func (n Network) Attach(ifName string, host int) (Attachment, error) {
	a, err := n.Addr(host)
	if err != nil {
		return Attachment{}, err
	}
	return Attachment{Network: n, IfName: ifName, Addr: a}, nil
}

var ifNameRE = regexp.MustCompile(`^eth[0-9]$`)

func (n Network) validate() error {
	if !strings.HasPrefix(n.Name, networkNamePrefix) || len(n.Name) > 64 || strings.ContainsAny(n.Name, "/ \"\\") {
		return fmt.Errorf("invalid CNI network name %q: want bottle-<identity>-int|egr (use BottleNetworks)", n.Name)
	}
	wantPrefix := internalBridgePrefix
	if n.Egress {
		wantPrefix = egressBridgePrefix
	}
	if !regexp.MustCompile(`^` + wantPrefix + `[0-9a-f]{8}$`).MatchString(n.Bridge) {
		return fmt.Errorf("invalid bridge %q for network %s: want %s<8 hex> (use BottleNetworks)", n.Bridge, n.Name, wantPrefix)
	}
	if !n.Subnet.IsValid() || !n.Subnet.Addr().Is4() || n.Subnet.Bits() != 24 || n.Subnet.Masked() != n.Subnet {
		return fmt.Errorf("invalid subnet %s for network %s: want an IPv4 /24 (use BottleNetworks)", n.Subnet, n.Name)
	}
	return nil
}

func (a Attachment) validate(index int) error {
	if err := a.Network.validate(); err != nil {
		return err
	}
	if want := fmt.Sprintf("eth%d", index); a.IfName != want || !ifNameRE.MatchString(a.IfName) {
		return fmt.Errorf("attachment %d to network %s has interface %q: attachments must be eth0, eth1, ... in order", index, a.Name, a.IfName)
	}
	if !a.Subnet.Contains(a.Addr) || a.Addr == a.Subnet.Addr() || a.Addr.As4()[3] == 255 {
		return fmt.Errorf("attachment %s of network %s: address %s is not a host address of %s", a.IfName, a.Name, a.Addr, a.Subnet)
	}
	if a.Network.Egress && a.Addr == a.Gateway() {
		return fmt.Errorf("attachment %s of network %s: address %s is the gateway on the host bridge; pick another host part", a.IfName, a.Name, a.Addr)
	}
	return nil
}

var templates = template.Must(template.New("").Funcs(template.FuncMap{
	"json": func(v any) (string, error) {
		b, err := json.Marshal(v)
		return string(b), err
	},
}).ParseFS(cniconfigs.Templates, cniconfigs.InternalTemplate, cniconfigs.EgressTemplate))

// RenderConflist renders the CNI conflist of an attachment (its static address is part of
// the IPAM config, so every attachment gets its own conflist).
func RenderConflist(a Attachment) ([]byte, error) {
	if err := a.Network.validate(); err != nil {
		return nil, err
	}
	if !a.Subnet.Contains(a.Addr) {
		return nil, fmt.Errorf("render conflist of network %s: address %s outside %s", a.Name, a.Addr, a.Subnet)
	}
	data := struct{ Name, Bridge, Address, Gateway string }{
		Name:    a.Name,
		Bridge:  a.Bridge,
		Address: netip.PrefixFrom(a.Addr, a.Subnet.Bits()).String(),
	}
	name := cniconfigs.InternalTemplate
	if a.Egress {
		name = cniconfigs.EgressTemplate
		data.Gateway = a.Gateway().String()
	}
	var buf bytes.Buffer
	if err := templates.ExecuteTemplate(&buf, name, data); err != nil {
		return nil, fmt.Errorf("render conflist %s for network %s: %w", name, a.Name, err)
	}
	if !json.Valid(buf.Bytes()) {
		return nil, fmt.Errorf("render conflist %s for network %s: result is not valid JSON (template broken)", name, a.Name)
	}
	return buf.Bytes(), nil
}

// identityFromNetworkName returns the identity of a bottle-<identity>-int|egr network name.
func identityFromNetworkName(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, networkNamePrefix)
	if !ok {
		return "", false
	}
	for _, suf := range []string{internalSuffix, egressSuffix} {
		if id, ok := strings.CutSuffix(rest, suf); ok && identityRE.MatchString(id) {
			return id, true
		}
	}
	return "", false
}

var containerNameRE = regexp.MustCompile(`^bottle-([a-z][a-z0-9-]{0,23}-[0-9a-f]{6})(?:-(?:agent|filter|egress-proxy|git-gate|supervise))?$`)

// identityFromContainerName returns the identity of bottle-<identity>[-<role>].
func identityFromContainerName(name string) (string, bool) {
	m := containerNameRE.FindStringSubmatch(name)
	if m == nil {
		return "", false
	}
	return m[1], true
}
