package runtime

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/state"
)

// settleDelay is how long cleanup waits for task creations of killed starts to land.
const settleDelay = time.Second

// CleanupReport says what cleanup removed.
type CleanupReport struct {
	Bottles    []string // identities removed whole
	Stopped    []string // identities nobody looked after, stopped and kept for resume
	Containers []string // containers (with tasks and snapshots) of no kept bottle
	Tasks      []string
	Snapshots  []string
	Network    []string // netns files, bridges, firewall chains, CNI state, slots
	Pins       []string // pin dirs of the workspace protection whose bottle has no record
	// Orphaned are other owners' host objects nobody else can remove (their state dir is
	// gone, or they predate owners), each with the command that removes them: never
	// removed silently.
	Orphaned []string
}

// Empty reports whether nothing was removed.
func (r CleanupReport) Empty() bool {
	return len(r.Bottles)+len(r.Stopped)+len(r.Containers)+len(r.Tasks)+len(r.Snapshots)+len(r.Network)+len(r.Pins) == 0
}

func (r CleanupReport) String() string {
	var b strings.Builder
	if r.Empty() {
		b.WriteString("nothing to clean up\n")
	}
	for _, s := range []struct {
		what  string
		items []string
	}{{"bottles", r.Bottles}, {"containers", r.Containers}, {"tasks", r.Tasks}, {"snapshots", r.Snapshots}, {"network objects", r.Network}, {"workspace pins", r.Pins}} {
		if len(s.items) > 0 {
			fmt.Fprintf(&b, "removed %d %s: %s\n", len(s.items), s.what, strings.Join(s.items, ", "))
		}
	}
	if len(r.Stopped) > 0 {
		fmt.Fprintf(&b, "stopped %d bottles nobody looked after (kept for `bottle resume`): %s\n", len(r.Stopped), strings.Join(r.Stopped, ", "))
	}
	for _, o := range r.Orphaned {
		fmt.Fprintf(&b, "left alone: %s\n", o)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// Cleanup removes orphaned bottles (a start that never finished) and every bottle object
// no recorded bottle owns: containers, tasks, snapshots, netns files, bridges, CNI state,
// firewall rules, address slots and stage dirs. Bottles nobody looks after any more (see
// settle) are stopped and kept. With all, every bottle goes, running or not.
func (e *Engine) Cleanup(ctx context.Context, all bool) (CleanupReport, error) {
	var rep CleanupReport
	var errs []error
	metas, broken, err := e.store.List()
	if err != nil {
		return rep, err
	}
	// Bottles whose slots another owner holds (another namespace on this state dir, or
	// another state dir in this namespace) are none of ours: keep all of theirs.
	foreign, err := e.net.ForeignBottles()
	if err != nil {
		return rep, err
	}
	keep := map[string]bool{}
	for id := range foreign {
		keep[id] = true
	}
	for _, m := range metas {
		if _, ok := foreign[m.Identity.String()]; ok {
			continue
		}
		if !all && !state.Orphaned(m) {
			keep[m.Identity.String()] = true
			if settled, err := e.settle(ctx, m); err != nil {
				errs = append(errs, err)
			} else if settled {
				rep.Stopped = append(rep.Stopped, m.Identity.String())
			}
			continue
		}
		if err := e.removeMeta(ctx, m, downNothing); err != nil {
			errs = append(errs, err)
			keep[m.Identity.String()] = true
			continue
		}
		e.recordCleanup(m.Identity)
		rep.Bottles = append(rep.Bottles, m.Identity.String())
	}
	for _, id := range broken {
		// An unreadable dir's name need not be an identity; Remove refuses paths.
		if err := e.store.Remove(names.Identity(id)); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Bottles = append(rep.Bottles, id)
	}
	// A start killed by SIGKILL leaves the person's protected paths mounted under pins/.
	if left, _, err := e.store.List(); err != nil {
		errs = append(errs, err)
	} else {
		recorded := map[string]bool{}
		for _, m := range left {
			recorded[m.Identity.String()] = true
		}
		rep.Pins = e.sweepPins(recorded)
	}

	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
	defer cancel()
	left, err := e.ctr.Leftovers(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for _, c := range left.Containers {
		if keep[c.Labels[names.LabelIdentity]] {
			continue
		}
		if err := e.ctr.Delete(ctx, c.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Containers = append(rep.Containers, c.Name)
	}
	for _, t := range left.Tasks {
		if err := e.ctr.DeleteTask(ctx, t); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Tasks = append(rep.Tasks, t)
	}
	// A start killed while containerd was creating a task: containerd gives the create
	// up, but the shim and its sandbox may already run, known to nobody. Give such a
	// create time to land, then end what is left of it.
	if len(rep.Bottles) > 0 {
		time.Sleep(settleDelay)
		if again, err := e.ctr.Leftovers(ctx); err == nil {
			for _, t := range again.Tasks {
				if err := e.ctr.DeleteTask(ctx, t); err != nil {
					errs = append(errs, err)
					continue
				}
				rep.Tasks = append(rep.Tasks, t)
			}
		}
	}
	shims, err := e.ctr.OrphanShims(ctx, names.Prefix)
	if err != nil {
		errs = append(errs, err)
	}
	for _, s := range shims {
		if err := e.ctr.KillOrphanShim(ctx, s); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Tasks = append(rep.Tasks, "orphan shim of "+s.ID)
	}
	for _, s := range left.Snapshots {
		if keepsSnapshot(keep, s) {
			continue
		}
		if err := e.ctr.RemoveSnapshot(ctx, s); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Snapshots = append(rep.Snapshots, s)
	}
	swept, err := e.net.Sweep(ctx, func(identity string) bool { return keep[identity] })
	if err != nil {
		errs = append(errs, err)
	}
	for _, l := range swept {
		rep.Network = append(rep.Network, l.String())
	}
	if err := e.reportOrphanedOwners(ctx, &rep); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return rep, fmt.Errorf("cleanup incomplete: %w", err)
	}
	return rep, nil
}

// keepsSnapshot reports whether snapshot key (<container name>-snap) belongs to a kept
// bottle.
func keepsSnapshot(keep map[string]bool, key string) bool {
	for id := range keep {
		if strings.HasPrefix(key, names.Prefix+id+"-") {
			return true
		}
	}
	return false
}

// reportOrphanedOwners adds other owners' host objects that no cleanup removes to rep.
func (e *Engine) reportOrphanedOwners(ctx context.Context, rep *CleanupReport) error {
	left, err := e.net.Leftovers(ctx)
	if err != nil {
		return err
	}
	orphans, err := e.net.OrphanedOwners(left)
	for _, o := range orphans {
		rep.Orphaned = append(rep.Orphaned, fmt.Sprintf("%s; remove them with `%s`", o, o.Command()))
	}
	return err
}

// CleanupOrphanedOwner removes the host network objects of owner id, another state dir
// and namespace whose state dir is gone (or names.LegacyOwner: objects without owner), as
// Cleanup reports them.
func (e *Engine) CleanupOrphanedOwner(ctx context.Context, id string) (CleanupReport, error) {
	var rep CleanupReport
	removed, err := e.net.SweepOrphanedOwner(ctx, id)
	for _, l := range removed {
		rep.Network = append(rep.Network, l.String())
	}
	return rep, err
}
