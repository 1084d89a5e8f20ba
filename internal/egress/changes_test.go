package egress

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/reload"
)

// TestFilterReadsAllowlistChanges: the filter takes approved changes from its changes
// file while it serves: an added host is allowed, a removed entry refused, a grant
// refused again once its time is over, and a broken file leaves the changes in force.
func TestFilterReadsAllowlistChanges(t *testing.T) {
	file := filepath.Join(t.TempDir(), "changes.json")
	write := func(ch AllowlistChanges) {
		data, _ := json.Marshal(ch)
		if err := os.WriteFile(file, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := NewFilter(FilterConfig{
		Allowlist:   []string{"a.example", "b.example"},
		ChangesFile: file,
		Resolver: func(context.Context, string) ([]netip.Addr, error) {
			return []netip.Addr{netip.MustParseAddr("203.0.113.7")}, nil
		},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	allowed := func(host string) bool {
		_, status, _ := f.check(t.Context(), host, 443)
		return status == 0
	}
	if !allowed("a.example") || allowed("new.example") {
		t.Fatal("before any change")
	}
	write(AllowlistChanges{Add: []AllowlistGrant{{Pattern: "new.example"}, {Pattern: "*.brief.example", Until: time.Now().Add(300 * time.Millisecond)}}, Remove: []string{"a.example"}})
	if err := f.changes.Load(); err != nil {
		t.Fatal(err)
	}
	if !allowed("new.example") || !allowed("x.brief.example") || allowed("a.example") || !allowed("b.example") {
		t.Error("changes not in force")
	}
	time.Sleep(400 * time.Millisecond)
	if allowed("x.brief.example") || !allowed("new.example") {
		t.Error("the grant did not expire by itself")
	}
	if err := os.WriteFile(file, []byte(`{"add":[{"pattern":"bad host"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.changes.Load(); err == nil {
		t.Error("a broken changes file was accepted")
	}
	if !allowed("new.example") || allowed("a.example") {
		t.Error("a broken changes file changed what is allowed")
	}
	// Serve polls the file by itself.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go f.changes.Watch(ctx, f.log)
	write(AllowlistChanges{})
	deadline := time.Now().Add(3 * reload.Interval)
	for !allowed("a.example") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !allowed("a.example") || allowed("new.example") {
		t.Error("the rewritten file was not picked up")
	}
}
