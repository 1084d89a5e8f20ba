package names

import "testing"

// TestShimGroup: the shim group names its bottle, like the bottle's container names do.
func TestShimGroup(t *testing.T) {
	id := Identity("claude-a1b2c3")
	if got := id.ShimGroup(); got != "bottle-claude-a1b2c3" {
		t.Errorf("ShimGroup = %q", got)
	}
	if of, ok := IdentityOfContainer(id.ShimGroup()); !ok || of != id {
		t.Errorf("IdentityOfContainer(%q) = %q, %v; want %q", id.ShimGroup(), of, ok, id)
	}
}
