package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/bottle-dev/bottle/internal/ctr"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/state"
)

// TestFinalizeSpecEnv: one merge, containerd's way: the image's env first, a planned
// value replaces the image's in place or follows it, PATH defaults only when the image
// has none.
func TestFinalizeSpecEnv(t *testing.T) {
	spec, err := plan.NewSpec(oci.WithProcessArgs("/bin/sh"), oci.WithEnv([]string{"A=2", "B=3"}))
	if err != nil {
		t.Fatal(err)
	}
	c := &plan.Container{Name: "bottle-x-000000-agent", Image: "img", Spec: spec}
	for _, tc := range []struct{ image, want []string }{
		{[]string{"PATH=/img", "HOME=/home/agent", "A=1"}, []string{"PATH=/img", "HOME=/home/agent", "A=2", "B=3"}},
		{nil, []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "A=2", "B=3"}},
		{[]string{"HOME=/root"}, []string{"HOME=/root", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "A=2", "B=3"}},
	} {
		got, err := finalizeSpec(c, tc.image, nil, "/x", false)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.Process.Env, tc.want) {
			t.Errorf("image env %v: env %v, want %v", tc.image, got.Process.Env, tc.want)
		}
	}
}

func TestFinalizeSpecLeavesPlanAlone(t *testing.T) {
	spec, err := plan.NewSpec(oci.WithEnv([]string{"A=1"}))
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
	if len(spec.Process.Args) != 0 || len(spec.Process.Env) != 1 || spec.Process.Terminal {
		t.Error("finalizeSpec changed the plan's spec")
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Path != "" {
			t.Errorf("finalizeSpec set the plan's %s namespace path", ns.Type)
		}
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
		ResolvConf: "nameserver 192.0.2.1\n", ExtraCA: "PEM", Hosts: []names.HostEntry{{Name: "a.test", Addr: netip.MustParseAddr("192.0.2.2")}},
	}}
	e := &Engine{}
	got, err := e.sidecarSettings(prev)
	if err != nil || got.ResolvConf != prev.Sidecars.ResolvConf || got.ExtraCA != "PEM" || len(got.Hosts) != 1 {
		t.Fatalf("resume without options: %+v, %v", got, err)
	}
	e.opts.SidecarResolvConf = "nameserver 192.0.2.9\n"
	e.opts.SidecarHosts = []names.HostEntry{{Name: "b.test", Addr: netip.MustParseAddr("192.0.2.3")}}
	got, _ = e.sidecarSettings(prev)
	if got.ResolvConf != e.opts.SidecarResolvConf || got.Hosts[0].Name != "b.test" || got.ExtraCA != "PEM" {
		t.Fatalf("options given again win: %+v", got)
	}
}

func TestPhaseOfTellsTheTruthFromTasks(t *testing.T) {
	meta := func(phase string, detached bool, reason string) *state.Meta {
		return &state.Meta{Identity: "a-000001", Phase: phase, Detached: detached, Reason: reason, Pid: 1 << 30, Containers: []state.Container{
			{Name: "agent", Role: names.RoleAgent}, {Name: "filter", Role: names.RoleFilter}, {Name: "proxy", Role: names.RoleEgressProxy},
		}}
	}
	run := ctr.ContainerInfo{TaskStatus: ctr.TaskRunning}
	none := ctr.ContainerInfo{TaskStatus: ctr.TaskNone}
	killed := ctr.ContainerInfo{TaskStatus: ctr.TaskStopped, ExitStatus: 137}
	exited := ctr.ContainerInfo{TaskStatus: ctr.TaskStopped}
	for _, tc := range []struct {
		name                string
		m                   *state.Meta
		agent, filter, prox ctr.ContainerInfo
		phase, reason       string
	}{
		{"all run", meta(state.PhaseRunning, true, ""), run, run, run, state.PhaseRunning, ""},
		{"reboot: every task gone", meta(state.PhaseRunning, true, ""), none, none, none, state.PhaseStopped, ""},
		{"stopped by bottle", meta(state.PhaseStopped, false, "filter exited 137"), none, none, none, state.PhaseStopped, "filter exited 137"},
		{"sidecar killed", meta(state.PhaseRunning, true, ""), run, killed, run, PhaseDegraded, "filter exited 137"},
		{"sidecar task gone", meta(state.PhaseRunning, true, ""), run, run, none, PhaseDegraded, "egress-proxy has no task"},
		{"detached agent done", meta(state.PhaseRunning, true, ""), exited, run, run, PhaseExited, "agent exited 0"},
		{"recorded stopped, tasks run", meta(state.PhaseStopped, true, ""), run, run, run, state.PhaseRunning, ""},
		{"attached process gone", meta(state.PhaseRunning, false, ""), run, run, run, state.PhaseRunning, "the process it ran attached to (1073741824) is gone"},
		{"abandoned start", meta(state.PhaseStarting, false, ""), run, run, run, state.PhaseStarting, "abandoned part way; `bottle cleanup` removes it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tasks := map[string]ctr.ContainerInfo{"agent": tc.agent, "filter": tc.filter, "proxy": tc.prox}
			if phase, reason := phaseOf(tc.m, tasks); phase != tc.phase || reason != tc.reason {
				t.Errorf("phaseOf = %q, %q; want %q, %q", phase, reason, tc.phase, tc.reason)
			}
		})
	}
	if phase, reason := phaseOf(meta(state.PhaseRunning, true, ""), map[string]ctr.ContainerInfo{"agent": run}); phase != PhaseDegraded || reason != "filter container is missing, egress-proxy container is missing" {
		t.Errorf("missing containers: %q, %q", phase, reason)
	}
}

func TestUndoStopsWhenContainerdIsGone(t *testing.T) {
	var order []string
	u := &undoStack{}
	u.push("teardown netns", func(context.Context) error { order = append(order, "netns"); return nil })
	u.push("delete container", func(context.Context) error {
		order = append(order, "container")
		return fmt.Errorf("delete container x: %w", errdefs.ErrUnavailable)
	})
	u.push("remove stage file", func(context.Context) error { order = append(order, "stage"); return nil })
	if err := u.run(context.Background(), slog.Default()); !errdefs.IsUnavailable(err) {
		t.Errorf("undo error %v", err)
	}
	// The task of the container may still run on its netns: that stays.
	if strings.Join(order, " ") != "stage container" {
		t.Errorf("undo ran %v, want stage and container only", order)
	}
}

func TestPeersAreTheOthersOnTheSameNetworks(t *testing.T) {
	m := &state.Meta{Containers: []state.Container{
		{Name: "agent", Attachments: []names.Attachment{{Network: names.NetInternal, Address: netip.MustParseAddr("10.0.0.10")}}},
		{Name: "filter", Attachments: []names.Attachment{{Network: names.NetInternal, Address: netip.MustParseAddr("10.0.0.2")}, {Network: names.NetEgress, Address: netip.MustParseAddr("10.0.1.2")}}},
		{Name: "proxy", Attachments: []names.Attachment{{Network: names.NetInternal, Address: netip.MustParseAddr("10.0.0.3")}, {Network: names.NetEgress, Address: netip.MustParseAddr("10.0.1.3")}}},
	}}
	got := fmt.Sprint(peers(m, "filter"))
	if got != "[10.0.0.10 10.0.0.3 10.0.1.3]" {
		t.Errorf("peers of the filter: %s", got)
	}
	if got := fmt.Sprint(peers(m, "agent")); got != "[10.0.0.2 10.0.0.3]" {
		t.Errorf("peers of the agent: %s", got)
	}
}

// TestIptablesCheckSaysRunAsRoot: without root, a failing iptables is a permissions
// problem, not a missing package.
func TestIptablesCheckSaysRunAsRoot(t *testing.T) {
	denied := errors.New("iptables does not work: iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)")
	if c := iptablesCheck(nil, denied, false); c.Status != CheckFail || !strings.Contains(c.Fix, "run as root") || strings.Contains(c.Fix, "install") {
		t.Errorf("not root: %+v", c)
	}
	if c := iptablesCheck(nil, denied, true); c.Status != CheckFail || !strings.Contains(c.Fix, "install iptables") {
		t.Errorf("root: %+v", c)
	}
	if c := iptablesCheck([]string{"iptables", "ip6tables"}, nil, false); c.Status != CheckOK || c.Detail != "iptables and ip6tables usable" {
		t.Errorf("working: %+v", c)
	}
}
