package runtime

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/state"
)

func TestMergeEnv(t *testing.T) {
	got := mergeEnv([]string{"PATH=/img", "HOME=/home/agent", "A=1"}, []string{"A=2", "B=3"})
	want := []string{"PATH=/img", "HOME=/home/agent", "A=2", "B=3"}
	if !slices.Equal(got, want) {
		t.Errorf("mergeEnv = %v, want %v", got, want)
	}
	if got := mergeEnv(nil, []string{"X=1"}); !slices.Contains(got, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin") {
		t.Errorf("no default PATH: %v", got)
	}
}

func TestFinalizeSpecLeavesPlanAlone(t *testing.T) {
	spec, err := plan.NewSpec(plan.WithEnv(map[string]string{"A": "1"}))
	if err != nil {
		t.Fatal(err)
	}
	c := &plan.Container{Name: "bottle-x-000000-agent", Image: "img", Spec: spec}
	got, err := finalizeSpec(c, []string{"PATH=/bin"}, []string{"/bin/sh"}, "/run/netns/x", true)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Process.Args, []string{"/bin/sh"}) || !got.Process.Terminal {
		t.Errorf("args %v terminal %v", got.Process.Args, got.Process.Terminal)
	}
	var netPath string
	for _, ns := range got.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			netPath = ns.Path
		}
	}
	if netPath != "/run/netns/x" {
		t.Errorf("netns path %q", netPath)
	}
	if len(spec.Process.Args) != 0 || len(spec.Process.Env) != 1 {
		t.Error("finalizeSpec changed the plan's spec")
	}
	if _, err := finalizeSpec(c, nil, nil, "/x", false); err == nil || !strings.Contains(err.Error(), "set `command`") {
		t.Errorf("image without command: %v", err)
	}
}

func TestUndoStackReverseOrderAndErrors(t *testing.T) {
	var order []string
	u := &undoStack{}
	u.push("a", func(context.Context) error { order = append(order, "a"); return nil })
	u.push("b", func(context.Context) error { order = append(order, "b"); return errors.New("b failed") })
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // undo must still run after an interrupt
	u.push("c", func(ctx context.Context) error {
		order = append(order, "c")
		return ctx.Err()
	})
	err := u.run(ctx, slog.Default())
	if strings.Join(order, "") != "cba" {
		t.Errorf("undo order %v, want c b a", order)
	}
	if err == nil || !strings.Contains(err.Error(), "b failed") {
		t.Errorf("undo error %v", err)
	}
	if u.run(ctx, slog.Default()) != nil || len(order) != 3 {
		t.Error("second run repeated steps")
	}
}

func TestKeepsSnapshot(t *testing.T) {
	keep := map[string]bool{"a-000001": true}
	if !keepsSnapshot(keep, "bottle-a-000001-agent-snap") || keepsSnapshot(keep, "bottle-a-000002-agent-snap") {
		t.Error("keepsSnapshot")
	}
}

func TestSidecarSettingsResumeReusesRecorded(t *testing.T) {
	prev := &state.Meta{Sidecars: state.SidecarSettings{
		ResolvConf: "nameserver 192.0.2.1\n", ExtraCA: "PEM", Hosts: []state.HostEntry{{Name: "a.test", Addr: "192.0.2.2"}},
	}}
	e := &Engine{}
	got, err := e.sidecarSettings(prev)
	if err != nil || got.ResolvConf != prev.Sidecars.ResolvConf || got.ExtraCA != "PEM" || len(got.Hosts) != 1 {
		t.Fatalf("resume without options: %+v, %v", got, err)
	}
	e.opts.SidecarResolvConf = "nameserver 192.0.2.9\n"
	e.opts.SidecarHosts = []plan.HostEntry{{Name: "b.test", Addr: netip.MustParseAddr("192.0.2.3")}}
	got, _ = e.sidecarSettings(prev)
	if got.ResolvConf != e.opts.SidecarResolvConf || got.Hosts[0].Name != "b.test" || got.ExtraCA != "PEM" {
		t.Fatalf("options given again win: %+v", got)
	}
}
