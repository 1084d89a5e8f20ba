package netns

import (
	"context"
	"fmt"

	"github.com/bottle-dev/bottle/internal/firewall"
	"github.com/bottle-dev/bottle/internal/names"
)

// CheckFirewall verifies that the bottle's firewall chain is in force on its internal
// network (the start self-test's host side).
func (m *Manager) CheckFirewall(ctx context.Context, identity string, internal Network) error {
	if _, err := names.ParseIdentity(identity); err != nil {
		return err
	}
	if err := firewall.Verify(ctx, m.FirewallChain(identity), internal.Bridge); err != nil {
		return fmt.Errorf("firewall of bottle %s: %w", identity, err)
	}
	return nil
}
