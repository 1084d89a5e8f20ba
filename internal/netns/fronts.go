package netns

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/bottle-dev/bottle/internal/firewall"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/slots"
)

// The Manager fronts the bottle's firewall chain (internal/firewall) and its subnet slot
// (internal/slots) for the owner, so that runtime holds one handle on the host network.

// FirewallChain is the filter chain holding the rules of identity: BOTTLE-<owner>-<6 hex>.
func (m *Manager) FirewallChain(identity string) string {
	return names.ChainName(m.owner.ID, names.Identity(identity))
}

// InstallFirewall isolates the internal network of identity on the host and masquerades
// its egress network (firewall.Install): install it before the bridges exist (before the
// first Setup).
func (m *Manager) InstallFirewall(ctx context.Context, identity string, internal, egress Network) error {
	if _, err := names.ParseIdentity(identity); err != nil {
		return err
	}
	wantIn, wantEg, _ := m.BottleNetworks(identity, 0, slots.DefaultPool)
	if internal.Egress || internal.Bridge != wantIn.Bridge {
		return fmt.Errorf("install firewall of bottle %s: network %s (bridge %q) is not its internal network (want bridge %s; use BottleNetworks)", identity, internal.Name, internal.Bridge, wantIn.Bridge)
	}
	if !egress.Egress || egress.Bridge != wantEg.Bridge || egress.validate() != nil {
		return fmt.Errorf("install firewall of bottle %s: network %s (bridge %q, %s) is not its egress network (want bridge %s; use BottleNetworks)", identity, egress.Name, egress.Bridge, egress.Subnet, wantEg.Bridge)
	}
	if err := firewall.Install(ctx, m.FirewallChain(identity), internal.Bridge, egress.Subnet); err != nil {
		return fmt.Errorf("install firewall of bottle %s: %w", identity, err)
	}
	return nil
}

// RemoveFirewall removes the chain of identity and every jump to it; missing ones are fine.
func (m *Manager) RemoveFirewall(ctx context.Context, identity string) error {
	if _, err := names.ParseIdentity(identity); err != nil {
		return err
	}
	if err := firewall.Remove(ctx, m.FirewallChain(identity)); err != nil {
		return fmt.Errorf("remove firewall of bottle %s: %w", identity, err)
	}
	return nil
}

// ReserveSlot reserves a free slot of pool for identity (slots.Store.Reserve).
func (m *Manager) ReserveSlot(identity string, pool netip.Prefix) (int, error) {
	return m.slots.Reserve(identity, pool)
}

// SlotOf returns the slot of pool reserved for identity; the error wraps fs.ErrNotExist if
// none.
func (m *Manager) SlotOf(identity string, pool netip.Prefix) (int, error) {
	return m.slots.SlotOf(identity, pool)
}

// ReleaseSlot removes the owner's slot reservation of identity; a missing one is fine.
func (m *Manager) ReleaseSlot(identity string) error { return m.slots.Release(identity) }

// ForeignBottles maps the identities whose slots other owners hold to those owners: their
// containers, snapshots and state (in a shared namespace or state dir) are none of ours.
func (m *Manager) ForeignBottles() (map[string]names.Owner, error) { return m.slots.Foreign() }
