// Package netns prepares the network side of a bottle: per-bottle subnets (slots),
// named network namespaces configured with CNI (bridge + static IPAM), the host
// firewall that isolates the internal network, and the sweep of leftovers. Every host-wide
// object carries its Owner, and a Manager only ever removes its own owner's objects.
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
	"path/filepath"
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

// Owner is who made a set of host objects: one state dir and one containerd namespace.
// Its ID is in the name (or the directory) of every host-wide object bottle makes, so that
// cleanup, sweep and doctor touch only their own owner's objects.
type Owner struct {
	ID        string `json:"owner"`
	StateDir  string `json:"state_dir"`
	Namespace string `json:"namespace"`
}

// NewOwner returns the owner of stateDir (made absolute) and namespace; its ID is 6 hex
// of sha256(state dir, namespace).
func NewOwner(stateDir, namespace string) (Owner, error) {
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		return Owner{}, fmt.Errorf("owner of state dir %q: %w", stateDir, err)
	}
	sum := sha256.Sum256([]byte(abs + "\x00" + namespace))
	return Owner{ID: hex.EncodeToString(sum[:3]), StateDir: abs, Namespace: namespace}, nil
}

// LegacyOwner names the owner of objects made before names carried one (in messages and
// `bottle cleanup --orphaned-owner`); such objects have Owner "" in a Leftover.
const LegacyOwner = "legacy"

var ownerIDRE = regexp.MustCompile(`^[0-9a-f]{6}$`)

// Network is one per-bottle CNI network (a bridge and a /24).
type Network struct {
	// Name is the CNI network name, bottle-<owner>-<identity>-int or -egr.
	Name string
	// Bridge is the host bridge, bi-<owner><6 hex> or be-<owner><6 hex>.
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

const identityPattern = `[a-z][a-z0-9-]{0,23}-[0-9a-f]{6}`

var identityRE = regexp.MustCompile(`^` + identityPattern + `$`)

// ValidateIdentity checks the identity format `<agent>-<6 lowercase hex>`.
func ValidateIdentity(identity string) error {
	if !identityRE.MatchString(identity) {
		return fmt.Errorf("invalid bottle identity %q: want <agent>-<6 lowercase hex> (agent matching ^[a-z][a-z0-9-]{0,23}$)", identity)
	}
	return nil
}

// identityHash is 8 hex of sha256(identity): legacy names hold all 8, owned names the
// first 6 after the 6 of the owner (interface names have at most 15 bytes).
func identityHash(identity string) string {
	sum := sha256.Sum256([]byte(identity))
	return hex.EncodeToString(sum[:4])
}

// nameKey is what a bridge or chain name says: owner ("" legacy) and identity hash.
func nameKey(owner, identity string) string {
	if owner == "" {
		return "/" + identityHash(identity)
	}
	return owner + "/" + identityHash(identity)[:6]
}

// BottleNetworks computes the internal and egress networks of identity in slot.
func (m *Manager) BottleNetworks(identity string, slot int, pool netip.Prefix) (internal, egress Network, err error) {
	return bottleNetworks(m.owner.ID, identity, slot, pool)
}

func bottleNetworks(owner, identity string, slot int, pool netip.Prefix) (internal, egress Network, err error) {
	if err := ValidateIdentity(identity); err != nil {
		return internal, egress, err
	}
	in, eg, err := SlotSubnets(slot, pool)
	if err != nil {
		return internal, egress, err
	}
	name := networkNamePrefix + owner + "-" + identity
	tail := owner + identityHash(identity)[:6]
	internal = Network{Name: name + internalSuffix, Bridge: internalBridgePrefix + tail, Subnet: in}
	egress = Network{Name: name + egressSuffix, Bridge: egressBridgePrefix + tail, Subnet: eg, Egress: true}
	return internal, egress, nil
}

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
	owner, _, ok := parseNetworkName(n.Name)
	if !ok || owner == "" || len(n.Name) > 64 {
		return fmt.Errorf("invalid CNI network name %q: want bottle-<owner>-<identity>-int|egr (use BottleNetworks)", n.Name)
	}
	wantPrefix := internalBridgePrefix
	if n.Egress {
		wantPrefix = egressBridgePrefix
	}
	if bo, _, ok := parseBridgeName(n.Bridge); !ok || bo != owner || !strings.HasPrefix(n.Bridge, wantPrefix) {
		return fmt.Errorf("invalid bridge %q for network %s: want %s%s<6 hex> (use BottleNetworks)", n.Bridge, n.Name, wantPrefix, owner)
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

var (
	networkNameRE       = regexp.MustCompile(`^bottle-([0-9a-f]{6})-(` + identityPattern + `)-(?:int|egr)$`)
	legacyNetworkNameRE = regexp.MustCompile(`^bottle-(` + identityPattern + `)-(?:int|egr)$`)
	bridgeNameRE        = regexp.MustCompile(`^b[ie]-([0-9a-f]{6})([0-9a-f]{6})$`)
	legacyBridgeNameRE  = regexp.MustCompile(`^b[ie]-([0-9a-f]{8})$`)
	chainNameRE         = regexp.MustCompile(`^BOTTLE-([0-9a-f]{6})-([0-9a-f]{6})$`)
	legacyChainNameRE   = regexp.MustCompile(`^BOTTLE-([0-9a-f]{8})$`)
)

// parseNetworkName returns owner ("" for a legacy name) and identity of a bottle network.
func parseNetworkName(name string) (owner, identity string, ok bool) {
	if m := networkNameRE.FindStringSubmatch(name); m != nil {
		return m[1], m[2], true
	}
	if m := legacyNetworkNameRE.FindStringSubmatch(name); m != nil {
		return "", m[1], true
	}
	return "", "", false
}

// parseHashed returns owner ("" legacy) and identity hash of a bridge or chain name.
func parseHashed(name string, owned, legacy *regexp.Regexp) (owner, hash string, ok bool) {
	if m := owned.FindStringSubmatch(name); m != nil {
		return m[1], m[2], true
	}
	if m := legacy.FindStringSubmatch(name); m != nil {
		return "", m[1], true
	}
	return "", "", false
}

func parseBridgeName(name string) (owner, hash string, ok bool) {
	return parseHashed(name, bridgeNameRE, legacyBridgeNameRE)
}

func parseChainName(name string) (owner, hash string, ok bool) {
	return parseHashed(name, chainNameRE, legacyChainNameRE)
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
