// Package netns wires the network side of a bottle: netns files configured with CNI
// (bridge + static IPAM; it is the only package that imports go-cni), the bottle's
// bridges, and the sweep of leftovers. Its Manager also fronts the bottle's firewall
// (internal/firewall) and subnet slot (internal/slots). Every host-wide object carries its
// owner (names.Owner), and a Manager only ever removes its own owner's objects.
package netns

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"text/template"

	cniconfigs "github.com/bottle-dev/bottle/configs/cni"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/slots"
)

// HostGateway is the host part of an egress network's gateway (the host's address on
// the bridge). The containers' addresses come from the plan.
const HostGateway = 1

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

// BottleNetworks computes the internal and egress networks of identity in slot.
func (m *Manager) BottleNetworks(identity string, slot int, pool netip.Prefix) (internal, egress Network, err error) {
	id, err := names.ParseIdentity(identity)
	if err != nil {
		return internal, egress, err
	}
	in, eg, err := slots.Subnets(slot, pool)
	if err != nil {
		return internal, egress, err
	}
	o := m.owner.ID
	internal = Network{Name: names.NetworkName(o, id, names.NetInternal), Bridge: names.BridgeName(o, id, names.NetInternal), Subnet: in}
	egress = Network{Name: names.NetworkName(o, id, names.NetEgress), Bridge: names.BridgeName(o, id, names.NetEgress), Subnet: eg, Egress: true}
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

func (n Network) kind() string {
	if n.Egress {
		return names.NetEgress
	}
	return names.NetInternal
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
	owner, _, ok := names.ParseNetworkName(n.Name)
	if !ok || owner == "" || len(n.Name) > 64 {
		return fmt.Errorf("invalid CNI network name %q: want bottle-<owner>-<identity>-int|egr (use BottleNetworks)", n.Name)
	}
	if !names.IsBridgeOf(n.Bridge, owner, n.kind()) {
		return fmt.Errorf("invalid bridge %q for network %s: want a %s bridge of owner %s (use BottleNetworks)", n.Bridge, n.Name, n.kind(), owner)
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
