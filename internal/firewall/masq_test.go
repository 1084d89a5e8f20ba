package firewall

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/utils"
)

func TestParseMasq(t *testing.T) {
	comment := strings.ReplaceAll(utils.FormatComment("bottle-0f0f0f-x-a1b2c3-egr", "bottle-x-a1b2c3-filter"), `"`, `\"`)
	line := `-A POSTROUTING -s 10.213.1.2/32 -m comment --comment "` + comment + `" -j ` + MasqChain("bottle-0f0f0f-x-a1b2c3-egr", "bottle-x-a1b2c3-filter")
	got, ok := parseMasq(line)
	want := Masq{Network: "bottle-0f0f0f-x-a1b2c3-egr", Container: "bottle-x-a1b2c3-filter", Source: netip.MustParsePrefix("10.213.1.2/32")}
	if !ok || got != want {
		t.Errorf("parseMasq = %+v, %v; want %+v", got, ok, want)
	}
	for _, l := range []string{
		`-A POSTROUTING -s 10.213.1.2/32 -j MASQUERADE`,
		`-A POSTROUTING -m comment --comment "` + comment + `" -j CNI-abc`,
	} {
		if m, ok := parseMasq(l); ok {
			t.Errorf("parseMasq(%q) = %+v, want no masquerade rule", l, m)
		}
	}
	if got := MasqChain("n", "c"); len(got) != 28 || !strings.HasPrefix(got, "CNI-") {
		t.Errorf("MasqChain = %q", got)
	}
}
