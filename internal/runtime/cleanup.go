package runtime

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/bottle-dev/bottle/internal/state"
)

// settleDelay is how long cleanup waits for task creations of killed starts to land.
const settleDelay = time.Second

// CleanupReport says what cleanup removed.
type CleanupReport struct {
	Bottles    []string // identities removed whole
	Containers []string // containers (with tasks and snapshots) of no kept bottle
	Tasks      []string
	Snapshots  []string
	Network    []string // netns files, bridges, firewall chains, CNI state, slots
}

// Empty reports whether nothing was removed.
func (r CleanupReport) Empty() bool {
	return len(r.Bottles)+len(r.Containers)+len(r.Tasks)+len(r.Snapshots)+len(r.Network) == 0
}

func (r CleanupReport) String() string {
	if r.Empty() {
		return "nothing to clean up"
	}
	var b strings.Builder
	for _, s := range []struct {
		what  string
		items []string
	}{{"bottles", r.Bottles}, {"containers", r.Containers}, {"tasks", r.Tasks}, {"snapshots", r.Snapshots}, {"network objects", r.Network}} {
		if len(s.items) > 0 {
			fmt.Fprintf(&b, "removed %d %s: %s\n", len(s.items), s.what, strings.Join(s.items, ", "))
		}
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// Cleanup removes orphaned bottles (a start that never finished, or an attached bottle
// whose bottle process is gone) and every bottle object no recorded bottle owns:
// containers, tasks, snapshots, netns files, bridges, CNI state, firewall rules, address
// slots and stage dirs. With all, every bottle goes, running or not.
func (e *Engine) Cleanup(ctx context.Context, all bool) (CleanupReport, error) {
	var rep CleanupReport
	var errs []error
	metas, broken, err := e.store.List()
	if err != nil {
		return rep, err
	}
	keep := map[string]bool{}
	for _, m := range metas {
		if !all && !state.Orphaned(m) {
			keep[m.Identity] = true
			continue
		}
		if err := e.removeMeta(ctx, m); err != nil {
			errs = append(errs, err)
			keep[m.Identity] = true
			continue
		}
		rep.Bottles = append(rep.Bottles, m.Identity)
	}
	for _, id := range broken {
		if err := e.store.Remove(id); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Bottles = append(rep.Bottles, id)
	}

	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
	defer cancel()
	left, err := e.ctr.Leftovers(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for _, c := range left.Containers {
		if keep[c.Labels["bottle.identity"]] {
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
	shims, err := e.ctr.OrphanShims(ctx, "bottle-")
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
	if err := errors.Join(errs...); err != nil {
		return rep, fmt.Errorf("cleanup incomplete: %w", err)
	}
	return rep, nil
}

// keepsSnapshot reports whether snapshot key (bottle-<identity>[-role]-snap) belongs to a
// kept bottle.
func keepsSnapshot(keep map[string]bool, key string) bool {
	for id := range keep {
		if strings.HasPrefix(key, "bottle-"+id+"-") {
			return true
		}
	}
	return false
}
