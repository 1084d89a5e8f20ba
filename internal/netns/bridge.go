package netns

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ensureInternalBridge creates an internal bridge with IPv6 off, before the bridge plugin
// brings it up and joins veths to it: with no IPv4 address either (the network has no
// gateway), the host has no address an agent could reach on it, even without the firewall
// chain. An existing bridge gets IPv6 turned off too; a non-bridge of that name is left to
// the plugin, which reports it.
func ensureInternalBridge(name string) error {
	if err := addBridge(name); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("create internal bridge: %w", err)
	}
	if !isBridge(name) {
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
		if err := disableIPv6(p.name); err != nil {
			return err
		}
	}
	return nil
}

func disableIPv6(ifName string) error {
	p := filepath.Join("/proc/sys/net/ipv6/conf", ifName, "disable_ipv6")
	if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
		if _, serr := os.Stat("/proc/sys/net/ipv6"); errors.Is(serr, fs.ErrNotExist) {
			return nil // no IPv6 in this kernel
		}
		return fmt.Errorf("disable IPv6 on %s (%s): %w", ifName, p, err)
	}
	return nil
}

func isBridge(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/class/net", name, "bridge"))
	return err == nil
}

// deleteBridge deletes a bottle bridge; a missing one is fine.
func deleteBridge(name string) error {
	if _, _, ok := parseBridgeName(name); !ok {
		return fmt.Errorf("refusing to delete interface %q: not a bottle bridge (bi-/be-<owner><6 hex>, or legacy <8 hex>)", name)
	}
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil
	}
	if !isBridge(name) {
		return fmt.Errorf("refusing to delete interface %s: it is not a bridge (remove it by hand if it is stale)", name)
	}
	if err := deleteLink(ifi.Index); err != nil {
		return fmt.Errorf("delete bridge %s: %w", name, err)
	}
	return nil
}
