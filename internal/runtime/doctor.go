package runtime

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/bottle-dev/bottle/internal/ctr"
	"github.com/bottle-dev/bottle/internal/firewall"
	"github.com/bottle-dev/bottle/internal/hostenv"
	"github.com/bottle-dev/bottle/internal/hostfile"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/netns"
	"github.com/bottle-dev/bottle/internal/ociarchive"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/protect"
	"github.com/bottle-dev/bottle/internal/slots"
	"github.com/bottle-dev/bottle/internal/state"
)

// Check is one line of `bottle doctor`.
type Check struct {
	Name   string `json:"name"`
	Status string `json:"status"` // ok | warn | fail
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Check statuses; fail means a start would not work.
const (
	CheckOK   = "ok"
	CheckWarn = "warn"
	CheckFail = "fail"
)

func (c Check) String() string {
	s := fmt.Sprintf("%-5s %-13s %s", c.Status, c.Name, c.Detail)
	if c.Fix != "" {
		s += "; fix: " + c.Fix
	}
	return s
}

// DoctorOptions add what only doctor asks about to the engine options.
type DoctorOptions struct {
	Options
	Manifest *manifest.Manifest
	// ManifestPath names the manifest in messages.
	ManifestPath string
}

const setupFix = "sudo make setup (scripts/setup-host.sh --system)"

// Doctor checks everything a start needs and explains each problem with its fix. It
// changes nothing on the host except a short test sandbox it removes again.
func Doctor(ctx context.Context, o DoctorOptions) []Check {
	o.Options = o.Options.withDefaults()
	var checks []Check
	add := func(name, status, detail, fix string) {
		checks = append(checks, Check{Name: name, Status: status, Detail: detail, Fix: fix})
	}
	if os.Geteuid() == 0 {
		add("root", CheckOK, "running as root", "")
	} else {
		add("root", CheckFail, "not root: containers, netns and firewall rules need root", "run bottle with sudo")
	}

	c, err := connect(ctx, o.Options)
	if err != nil {
		add("containerd", CheckFail, oneLine(err), "") // the error says how to start it
	} else {
		defer c.Close()
		if v, err := c.Version(ctx); err != nil {
			add("containerd", CheckFail, oneLine(err), setupFix)
			c = nil
		} else {
			add("containerd", CheckOK, fmt.Sprintf("%s on %s (namespace %s)", v, o.Address, o.Namespace), "")
		}
	}

	rt, err := ctr.DetectRuntime(cmp.Or(o.RuntimeOverride, "auto"), o.RunscPath, o.AllowUnsafeRunc)
	if err != nil {
		add("runsc", CheckFail, oneLine(err), "") // the error says how to install it
	} else {
		add("runsc", CheckOK, fmt.Sprintf("%s (runtime %s, static)", rt.RunscPath, rt.Handler), "")
		if c != nil {
			if err := sandboxCheck(ctx, c, rt, o.Version); err != nil {
				add("sandbox", CheckFail, "a test sandbox did not run: "+oneLine(err), "see `bottle --debug doctor` and the containerd log; "+setupFix)
			} else {
				add("sandbox", CheckOK, fmt.Sprintf("a %s sandbox starts and runs bottle's sidecar image", rt.Handler), "")
			}
		}
	}

	if n, err := hostNetwork(o.Options); err != nil {
		add("cni", CheckFail, oneLine(err), "") // the error says what to install
	} else {
		add("cni", CheckOK, "plugins in "+strings.Join(n.PluginDirs(), ", "), "")
		if c != nil {
			checks = append(checks, leftoverChecks(ctx, c, n, o.StateDir)...)
		}
	}
	fams, err := firewall.Check(ctx)
	checks = append(checks, iptablesCheck(fams, err, os.Geteuid() == 0))
	if v, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); err != nil {
		add("ip_forward", CheckWarn, oneLine(err), "")
	} else if strings.TrimSpace(string(v)) == "1" {
		add("ip_forward", CheckOK, "on (sidecars can leave through the egress network)", "")
	} else {
		add("ip_forward", CheckWarn, "off; the first bottle's egress network turns it on (the agent's internal network stays blocked by bottle's firewall rules)", "")
	}
	if slot, err := slots.FirstFree("", o.Pool); err != nil && os.Geteuid() != 0 {
		add("subnet", CheckFail, oneLine(err), "run as root (sudo bottle doctor): the address slots are readable only by root")
	} else if err != nil {
		add("subnet", CheckFail, oneLine(err), "remove bottles (`bottle rm`, `bottle cleanup`) or choose another --pool")
	} else {
		internal, egress, _ := slots.Subnets(slot, o.Pool)
		add("subnet", CheckOK, fmt.Sprintf("next bottle gets %s and %s from pool %s", internal, egress, o.Pool), "")
	}
	checks = append(checks, bareRepositoryCheck(ctx))
	if c != nil && o.Manifest != nil {
		checks = append(checks, planChecks(ctx, c, o)...)
	}
	return checks
}

// bareRepositoryCheck tells whether the invoking user's git ignores a bare repository
// layout an agent can leave in a workspace (safe.bareRepository=explicit). It reads the
// user's config and changes nothing.
func bareRepositoryCheck(ctx context.Context) Check {
	const name = "git bare repos"
	value, from := protect.BareRepositoryPolicy(invokingGitUser().Configs)
	cmd := exec.CommandContext(ctx, "git", "--version")
	cmd.Dir = "/" // never inside a repository
	out, err := cmd.Output()
	if err != nil {
		return Check{Name: name, Status: CheckWarn, Detail: "git not found: " + oneLine(err)}
	}
	honours, err := protect.GitHonoursBare(string(out))
	switch {
	case err != nil:
		return Check{Name: name, Status: CheckWarn, Detail: oneLine(err)}
	case !honours:
		return Check{Name: name, Status: CheckWarn, Detail: strings.TrimSpace(string(out)) + " uses a bare repository layout an agent leaves in a workspace, with its config (which can run programs)", Fix: "git 2.38 or newer, then " + protect.BareRecommendation}
	case strings.EqualFold(value, "explicit"):
		return Check{Name: name, Status: CheckOK, Detail: "safe.bareRepository = explicit (" + from + "): git ignores a bare repository layout an agent leaves in a workspace"}
	}
	return Check{Name: name, Status: CheckWarn, Detail: "safe.bareRepository is not explicit: git on this host uses a bare repository layout an agent leaves in a workspace, with its config (which can run programs)", Fix: protect.BareRecommendation}
}

// iptablesCheck judges firewall.Check's result. Without root iptables cannot read the
// rules at all, so its failure says nothing about whether iptables is installed.
func iptablesCheck(fams []string, err error, root bool) Check {
	switch {
	case err == nil:
		return Check{Name: "iptables", Status: CheckOK, Detail: strings.Join(fams, " and ") + " usable"}
	case !root:
		return Check{Name: "iptables", Status: CheckFail, Detail: oneLine(err), Fix: "run as root (sudo bottle doctor): iptables needs root to read the firewall rules"}
	}
	return Check{Name: "iptables", Status: CheckFail, Detail: oneLine(err), Fix: "install iptables (Debian: apt-get install iptables)"}
}

// Blocking reports whether any check failed.
func Blocking(checks []Check) bool {
	for _, c := range checks {
		if c.Status == CheckFail {
			return true
		}
	}
	return false
}

// sandboxCheck runs `/bottle version` (the sidecar binary) from the sidecar image under
// the runtime.
func sandboxCheck(ctx context.Context, c *ctr.Client, rt ctr.Runtime, version string) error {
	ref, err := c.EnsureSidecarImage(ctx, version, "")
	if err != nil {
		return err
	}
	suffix, err := hostenv.NewSuffix()
	if err != nil {
		return err
	}
	name := names.Prefix + "doctor-" + suffix
	spec, err := plan.NewSpec(oci.WithProcessArgs("/bottle", "version"), oci.WithUIDGID(plan.SidecarUID, plan.SidecarUID), oci.WithRootFSReadonly())
	if err != nil {
		return err
	}
	if err := c.Create(ctx, ctr.ContainerSpec{Name: name, Image: ref, Labels: map[string]string{names.LabelRole: "doctor"}, Spec: spec, Runtime: rt}); err != nil {
		return err
	}
	defer c.Delete(context.WithoutCancel(ctx), name)
	var out bytes.Buffer
	runCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	code, err := c.Run(runCtx, name, ctr.IO{Stdout: &out, Stderr: &out})
	if err != nil {
		return err
	}
	if code != 0 || !strings.HasPrefix(out.String(), ociarchive.SidecarExecutableName+" ") {
		return fmt.Errorf("exit %d, output %q", code, out.String())
	}
	return nil
}

// leftoverChecks lists what `bottle cleanup` would remove (objects of this state dir and
// namespace only) and other owners' objects that only an explicit command removes.
func leftoverChecks(ctx context.Context, c *ctr.Client, n *netns.Manager, stateDir string) []Check {
	var items []string
	owned := map[string]bool{} // identities of bottles that are not orphans, or not ours
	foreign, _ := n.ForeignBottles()
	for id := range foreign {
		owned[id] = true
	}
	if metas, broken, err := (state.Store{Dir: stateDir}).List(); err == nil {
		for _, m := range metas {
			if owned[m.Identity.String()] {
				continue
			}
			if state.Orphaned(m) {
				items = append(items, "orphaned bottle "+m.Identity.String())
			} else {
				owned[m.Identity.String()] = true
			}
		}
		for _, b := range broken {
			items = append(items, "unreadable bottle dir "+filepath.Join(stateDir, "bottles", b))
		}
	}
	if left, err := c.Leftovers(ctx); err == nil {
		for _, ci := range left.Containers {
			if !owned[ci.Labels[names.LabelIdentity]] {
				items = append(items, "container "+ci.Name)
			}
		}
		for _, t := range left.Tasks {
			items = append(items, "task "+t)
		}
		if shims, err := c.OrphanShims(ctx, names.Prefix); err == nil {
			for _, s := range shims {
				items = append(items, fmt.Sprintf("orphan shim of %s (pid %d)", s.ID, s.Pid))
			}
		}
		for _, s := range left.Snapshots {
			if !keepsSnapshot(owned, s) {
				items = append(items, "snapshot "+s)
			}
		}
	}
	var checks []Check
	if left, err := n.Leftovers(ctx); err == nil {
		for _, l := range left {
			if l.Owner == n.Owner().ID && !owned[l.Identity] {
				items = append(items, l.String())
			}
		}
		orphans, _ := n.OrphanedOwners(left)
		for _, o := range orphans {
			checks = append(checks, Check{Name: "other owner", Status: CheckWarn, Detail: o.String(), Fix: "sudo " + o.Command()})
		}
	}
	if len(items) == 0 {
		return append([]Check{{Name: "leftovers", Status: CheckOK, Detail: "none"}}, checks...)
	}
	shown := items
	if len(shown) > 5 {
		shown = append(shown[:5:5], fmt.Sprintf("... (%d in all)", len(items)))
	}
	return append([]Check{{Name: "leftovers", Status: CheckWarn, Detail: strings.Join(shown, ", "), Fix: "sudo bottle cleanup"}}, checks...)
}

// planChecks plans every agent of the manifest the way a start would (Engine.Plan, on
// the current directory) and checks what each plan needs: its host environment, the
// agent image and, where the plan chose pipelock, pipelock's image.
func planChecks(ctx context.Context, c *ctr.Client, o DoctorOptions) []Check {
	e := newEngine(o.Options, c, nil)
	cwd, err := os.Getwd()
	if err != nil {
		return []Check{{Name: "plan", Status: CheckFail, Detail: oneLine(fmt.Errorf("current directory: %w", err))}}
	}
	var checks []Check
	add := func(name, status, detail, fix string) {
		checks = append(checks, Check{Name: name, Status: status, Detail: detail, Fix: fix})
	}
	for _, agent := range o.Manifest.AgentNames() {
		files, err := plan.ReadHostFiles(o.Manifest, o.ManifestPath, agent, hostfile.ReadPEM)
		if err != nil {
			add("plan", CheckFail, fmt.Sprintf("agent %s: %s", agent, oneLine(err)), "")
			continue
		}
		p, err := e.Plan(ctx, PlanOptions{Manifest: o.Manifest, ManifestPath: o.ManifestPath, Agent: agent, Workspace: cwd, HostFiles: files})
		if err != nil {
			add("plan", CheckFail, fmt.Sprintf("agent %s: %s", agent, oneLine(err)), "")
			continue
		}
		if len(p.Unresolved) > 0 {
			add("plan", CheckWarn, fmt.Sprintf("agent %s: not set on this host: %s", agent, strings.Join(p.Unresolved, ", ")), "export them before `bottle start` (sudo -E keeps them)")
		}
		for _, w := range p.Warnings {
			add("workspace", CheckWarn, w, "")
		}
		if len(p.Warnings) == 0 {
			u := p.Container(names.RoleAgent).Spec.Process.User
			add("workspace", CheckOK, fmt.Sprintf("agent %s runs as %d:%d and can write %s", agent, u.UID, u.GID, p.Workspace.Source), "")
		}
		image := p.Container(names.RoleAgent).Image
		if ok, err := c.ImageExists(ctx, image); err != nil || !ok {
			fix := "import an OCI archive of it: sudo bottle image import FILE"
			if image == "bottle.local/agent-claude:latest" {
				fix = "build it: sudo scripts/build-agent-image.sh"
			}
			add("agent image", CheckFail, fmt.Sprintf("%s (agent %s, %s) is not in containerd", image, agent, o.ManifestPath), fix)
		} else {
			add("agent image", CheckOK, fmt.Sprintf("%s (agent %s)", image, agent), "")
		}
		filterImage := p.Container(names.RoleFilter).Image
		switch present, _ := c.ImageExists(ctx, filterImage); {
		case p.Filter != plan.FilterPipelock:
			add("filter image", CheckOK, fmt.Sprintf("agent %s uses the builtin filter", agent), "")
		case present:
			add("filter image", CheckOK, fmt.Sprintf("pipelock %s present (agent %s)", filterImage, agent), "")
		default:
			add("filter image", CheckFail, fmt.Sprintf("agent %s wants pipelock but %s is not in containerd", agent, filterImage), "import it (sudo bottle image import FILE) or set filter = \"builtin\"")
		}
	}
	return checks
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }
