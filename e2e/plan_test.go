package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/bottle-dev/bottle/internal/ctr"
	"github.com/bottle-dev/bottle/internal/ociarchive"
)

// TestPlanSeesPipelockImage: with filter "auto", `bottle plan` asks containerd, as start
// does, whether the pipelock image is there: present, the plan filters with pipelock;
// absent, with the builtin filter.
func TestPlanSeesPipelockImage(t *testing.T) {
	e := newEnv(t)
	manifest := fmt.Sprintf("[agents.planned]\nbottle = \"b\"\nimage = %q\n\n[bottles.b]\nruntime = \"runsc-runc\"\nfilter = \"auto\"\n", testImage)
	if err := os.WriteFile(e.manifest, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	// Any image will do under the name the plan looks for: nothing runs it.
	ref := "bottle.local/test-pipelock:plan-e2e"
	ctx := context.Background()
	c, err := ctr.Connect(ctx, e.address, e.namespace)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.ImportImage(ctx, ociarchive.BusyboxImage(ref, "/bin/busybox"), nil); err != nil {
		t.Fatalf("import %s: %v", ref, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--pipelock-image", ref}, "filter: pipelock"},
		{[]string{"--pipelock-image", "bottle.local/test-pipelock:absent"}, "filter: builtin"},
	} {
		out, errOut, code := e.bottle(nil, append([]string{"plan"}, tc.args...)...)
		if code != 0 {
			t.Fatalf("plan %v: exit %d: %s", tc.args, code, errOut)
		}
		if !strings.Contains(out, tc.want) {
			t.Errorf("plan %v does not show %q:\n%s", tc.args, tc.want, out)
		}
		if strings.Contains(out+errOut, "not reachable") {
			t.Errorf("plan %v did not reach containerd:\n%s%s", tc.args, out, errOut)
		}
	}
}
