package netns

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/bottle-dev/bottle/internal/names"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ensureInternalBridge creates an internal bridge with IPv6 off, before the bridge plugin
// brings it up and joins veths to it: with no IPv4 address either (the network has no
// gateway), the host has no address an agent could reach on it, even without the firewall
// chain. An existing bridge gets IPv6 turned off too; a non-bridge of that name is left to
// the plugin, which reports it.
func ensureInternalBridge(name string) error {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("create internal bridge %s: %w", name, err)
	}
	if l, err := netlinksafe.LinkByName(name); err != nil || l.Type() != "bridge" {
		return nil
	}
	return disableIPv6(name)
}

// disablePortsIPv6 turns IPv6 off on the host ends of the veth pairs on bridge.
func disablePortsIPv6(bridge string) error {
	ports, err := bridgePorts(bridge)
	if err != nil {
		return err
	}
	for _, p := range ports {
		if err := disableIPv6(p.Attrs().Name); err != nil {
			return err
		}
	}
	return nil
}

func disableIPv6(ifName string) error {
	if _, err := sysctl.Sysctl("net/ipv6/conf/"+ifName+"/disable_ipv6", "1"); err != nil {
		if _, serr := os.Stat("/proc/sys/net/ipv6"); errors.Is(serr, fs.ErrNotExist) {
			return nil // no IPv6 in this kernel
		}
		return fmt.Errorf("disable IPv6 on %s: %w", ifName, err)
	}
	return nil
}

// deleteBridge deletes a bottle bridge; a missing one is fine.
func deleteBridge(name string) error {
	if _, _, ok := names.ParseBridgeName(name); !ok {
		return fmt.Errorf("refusing to delete interface %q: not a bottle bridge (bi-/be-<owner><6 hex>, or legacy <8 hex>)", name)
	}
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		return nil
	}
	if l.Type() != "bridge" {
		return fmt.Errorf("refusing to delete interface %s: it is not a bridge (remove it by hand if it is stale)", name)
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete bridge %s: %w", name, err)
	}
	return nil
}

// bridgePorts lists the veth ports of bridge (none when the bridge does not exist): the
// host ends of the pairs the bridge plugin made.
func bridgePorts(bridge string) ([]netlink.Link, error) {
	br, err := netlinksafe.LinkByName(bridge)
	if _, missing := errors.AsType[netlink.LinkNotFoundError](err); missing {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list ports of bridge %s: %w", bridge, err)
	}
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list ports of bridge %s: %w", bridge, err)
	}
	var out []netlink.Link
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index && l.Type() == "veth" {
			out = append(out, l)
		}
	}
	return out, nil
}

// deleteLink deletes a link; a missing one is fine.
func deleteLink(l netlink.Link) error {
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete interface %s: %w", l.Attrs().Name, err)
	}
	return nil
}
