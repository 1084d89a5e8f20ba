package ctr

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bottle-dev/bottle/internal/names"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

const (
	// SnapshotSuffix is appended to a container name to name its root file system snapshot.
	SnapshotSuffix = "-snap"
	// rootfsDir is where containerd's shims mount the snapshot inside the bundle.
	rootfsDir = "rootfs"
)

// ContainerSpec is everything Create needs. Spec is the complete OCI spec built by the
// caller (process env final, namespaces including the network namespace path); Create
// only points Root at the snapshot. Labels must never hold secrets.
type ContainerSpec struct {
	Name    string
	Image   string
	Labels  map[string]string
	Spec    *specs.Spec
	Runtime Runtime
}

// TaskStatus is the state of a container's task; TaskNone when it has none.
type TaskStatus string

const (
	TaskNone    TaskStatus = "none"
	TaskCreated TaskStatus = "created"
	TaskRunning TaskStatus = "running"
	TaskStopped TaskStatus = "stopped"
	TaskPaused  TaskStatus = "paused"
	TaskPausing TaskStatus = "pausing"
	TaskUnknown TaskStatus = "unknown"
)

// ContainerInfo describes a container and its task.
type ContainerInfo struct {
	Name        string
	Labels      map[string]string
	Image       string
	Runtime     string
	SnapshotKey string
	CreatedAt   time.Time
	TaskStatus  TaskStatus
	// Pid is the task's host pid (the sandbox for runsc); 0 without a running task.
	Pid uint32
	// ExitStatus is the exit code of a stopped task.
	ExitStatus uint32
}

// Create creates the container cs.Name from cs.Image with a fresh writable snapshot
// <name>-snap and cs.Spec used as-is (Root is set to the snapshot mount). It does not
// start anything.
func (c *Client) Create(ctx context.Context, cs ContainerSpec) (retErr error) {
	if err := identifiers.Validate(cs.Name); err != nil {
		return fmt.Errorf("create container %q: invalid name: %w", cs.Name, err)
	}
	if cs.Spec == nil || cs.Spec.Process == nil {
		return fmt.Errorf("create container %s: OCI spec with a process is required", cs.Name)
	}
	rtOpt, spec, err := c.prepare(cs)
	if err != nil {
		return fmt.Errorf("create container %s: %w", cs.Name, err)
	}

	ctx = c.ctx(ctx)
	img, err := c.c.GetImage(ctx, cs.Image)
	if err != nil {
		return fmt.Errorf("create container %s: image %s: %w", cs.Name, cs.Image, err)
	}
	if err := c.unpack(ctx, img); err != nil {
		return fmt.Errorf("create container %s: %w", cs.Name, err)
	}

	if exists, err := c.Exists(ctx, cs.Name); err != nil {
		return fmt.Errorf("create container %s: %w", cs.Name, err)
	} else if exists {
		return fmt.Errorf("create container %s: it already exists (remove it first): %w", cs.Name, errdefs.ErrAlreadyExists)
	}
	snapKey := cs.Name + SnapshotSuffix
	defer func() {
		// An existing snapshot may belong to a container created concurrently: keep it.
		if retErr != nil && !errdefs.IsAlreadyExists(retErr) {
			// NewContainer leaves the snapshot to lease GC on failure; remove it now.
			if err := c.RemoveSnapshot(ctx, snapKey); err != nil {
				retErr = errors.Join(retErr, err)
			}
		}
	}()
	_, err = c.c.NewContainer(ctx, cs.Name,
		client.WithImageName(img.Name()),
		client.WithSnapshotter(c.snapshotter),
		client.WithNewSnapshot(snapKey, img),
		rtOpt,
		client.WithSpec(spec),
		client.WithContainerLabels(cs.Labels),
	)
	if err != nil {
		if errdefs.IsAlreadyExists(err) {
			return fmt.Errorf("create container %s: it already exists (remove it first): %w", cs.Name, err)
		}
		return fmt.Errorf("create container %s: %w", cs.Name, err)
	}
	return nil
}

// prepare resolves the runtime option and copies the spec with Root on the snapshot.
func (c *Client) prepare(cs ContainerSpec) (client.NewContainerOpts, *specs.Spec, error) {
	rt := cs.Runtime
	if rt.RuncRoot == "" {
		rt.RuncRoot = c.runcRoot
	}
	rtOpt, err := rt.containerOpt()
	if err != nil {
		return nil, nil, err
	}
	// Only Root changes: a shallow copy keeps the caller's spec as it was.
	spec := *cs.Spec
	spec.Root = &specs.Root{Path: rootfsDir, Readonly: cs.Spec.Root != nil && cs.Spec.Root.Readonly}
	return rtOpt, &spec, nil
}

// Update replaces the spec and labels of the existing container cs.Name and keeps its
// snapshot (a resumed agent keeps its writable root file system). A stopped task is
// removed; a live one is an error. Image and runtime type cannot change (recreate the
// container for that); runtime options (runsc path, root) stay as created.
func (c *Client) Update(ctx context.Context, cs ContainerSpec) error {
	if cs.Spec == nil || cs.Spec.Process == nil {
		return fmt.Errorf("update container %s: OCI spec with a process is required", cs.Name)
	}
	_, spec, err := c.prepare(cs)
	if err != nil {
		return fmt.Errorf("update container %s: %w", cs.Name, err)
	}
	ctx = c.ctx(ctx)
	cont, err := c.c.LoadContainer(ctx, cs.Name)
	if err != nil {
		return fmt.Errorf("update container %s: %w", cs.Name, err)
	}
	if err := c.clearStoppedTask(ctx, cont); err != nil {
		return fmt.Errorf("update container %s: %w", cs.Name, err)
	}
	err = cont.Update(ctx, func(ctx context.Context, cl *client.Client, r *containers.Container) error {
		if cs.Image != "" && r.Image != cs.Image {
			return fmt.Errorf("image is %s, not %s (recreate the container to change it): %w", r.Image, cs.Image, errdefs.ErrFailedPrecondition)
		}
		if r.Runtime.Name != cs.Runtime.Type {
			return fmt.Errorf("runtime is %s, not %s (recreate the container to change it): %w", r.Runtime.Name, cs.Runtime.Type, errdefs.ErrFailedPrecondition)
		}
		r.Labels = cs.Labels
		return client.WithSpec(spec)(ctx, cl, r)
	})
	if err != nil {
		return fmt.Errorf("update container %s: %w", cs.Name, err)
	}
	return nil
}

// Spec returns the stored OCI spec of container name.
func (c *Client) Spec(ctx context.Context, name string) (*specs.Spec, error) {
	ctx = c.ctx(ctx)
	cont, err := c.c.LoadContainer(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", name, err)
	}
	s, err := cont.Spec(ctx)
	if err != nil {
		return nil, fmt.Errorf("container %s: spec: %w", name, err)
	}
	return s, nil
}

// Exists reports whether container name exists.
func (c *Client) Exists(ctx context.Context, name string) (bool, error) {
	if _, err := c.c.ContainerService().Get(c.ctx(ctx), name); err != nil {
		if errdefs.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("container %s: %w", name, err)
	}
	return true, nil
}

// Delete removes container name with its task (killed if running) and snapshot.
// Missing parts are fine; it runs even when ctx is already cancelled.
func (c *Client) Delete(ctx context.Context, name string) error {
	ctx, cancel := c.teardownCtx(ctx)
	defer cancel()
	cont, err := c.c.LoadContainer(ctx, name)
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete container %s: load: %w", name, err)
	}
	if err == nil {
		// The snapshot must outlive the task: runsc's delete needs files in the rootfs.
		if err := c.deleteTask(ctx, cont); err != nil {
			return fmt.Errorf("delete container %s: task: %w", name, err)
		}
		if err := cont.Delete(ctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete container %s: %w", name, err)
		}
	}
	// Also covers a snapshot left by a failed Create.
	if err := c.RemoveSnapshot(ctx, name+SnapshotSuffix); err != nil {
		return fmt.Errorf("delete container %s: %w", name, err)
	}
	return nil
}

// DeleteTask kills (SIGKILL) and deletes the task of container name, also when the
// container record itself is gone. A missing task is fine; the container stays.
func (c *Client) DeleteTask(ctx context.Context, name string) error {
	ctx, cancel := c.teardownCtx(ctx)
	defer cancel()
	cont, err := c.c.LoadContainer(ctx, name)
	if err == nil {
		if err := c.deleteTask(ctx, cont); err != nil {
			return fmt.Errorf("delete task of container %s: %w", name, err)
		}
		return nil
	}
	if !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete task of container %s: %w", name, err)
	}
	// An orphan task: go through the task service directly.
	ts := c.c.TaskService()
	if _, err := ts.Kill(ctx, &tasksapi.KillRequest{ContainerID: name, Signal: uint32(unix.SIGKILL), All: true}); err != nil {
		if err := errgrpc.ToNative(err); !errdefs.IsNotFound(err) {
			slog.Debug("killing orphan task", "task", name, "error", err)
		}
	}
	if _, err := ts.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: name}); err != nil {
		if err := errgrpc.ToNative(err); !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete orphan task %s: %w", name, err)
		}
	}
	return nil
}

// deleteTask kills (SIGKILL) and deletes the container's task if it has one.
func (c *Client) deleteTask(ctx context.Context, cont client.Container) error {
	task, err := cont.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	_, err = killAndDelete(ctx, task)
	return err
}

// RemoveSnapshot removes snapshot key from the client's snapshotter; missing is fine.
func (c *Client) RemoveSnapshot(ctx context.Context, key string) error {
	ctx, cancel := c.teardownCtx(ctx)
	defer cancel()
	if err := c.c.SnapshotService(c.snapshotter).Remove(ctx, key); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove snapshot %s (%s): %w", key, c.snapshotter, err)
	}
	return nil
}

// labelFilter turns a label selector into a containerd filter matching all of them.
func labelFilter(selector map[string]string) string {
	keys := make([]string, 0, len(selector))
	for k := range selector {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, "labels."+strconv.Quote(k)+"=="+strconv.Quote(selector[k]))
	}
	return strings.Join(parts, ",")
}

// List returns the containers carrying all labels of labelSelector (all containers of
// the namespace when it is empty), sorted by name, with their task state.
func (c *Client) List(ctx context.Context, labelSelector map[string]string) ([]ContainerInfo, error) {
	ctx = c.ctx(ctx)
	var filters []string
	if len(labelSelector) > 0 {
		filters = append(filters, labelFilter(labelSelector))
	}
	records, err := c.c.ContainerService().List(ctx, filters...)
	if err != nil {
		return nil, fmt.Errorf("list containers (namespace %s): %w", c.namespace, err)
	}
	tasks, err := c.tasks(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]ContainerInfo, 0, len(records))
	for _, r := range records {
		out = append(out, info(r, tasks))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Info describes container name.
func (c *Client) Info(ctx context.Context, name string) (ContainerInfo, error) {
	ctx = c.ctx(ctx)
	r, err := c.c.ContainerService().Get(ctx, name)
	if err != nil {
		return ContainerInfo{}, fmt.Errorf("container %s: %w", name, err)
	}
	tasks, err := c.tasks(ctx)
	if err != nil {
		return ContainerInfo{}, err
	}
	return info(r, tasks), nil
}

type taskState struct {
	status TaskStatus
	pid    uint32
	exit   uint32
}

func (c *Client) tasks(ctx context.Context) (map[string]taskState, error) {
	resp, err := c.c.TaskService().List(ctx, &tasksapi.ListTasksRequest{})
	if err != nil {
		return nil, fmt.Errorf("list tasks (namespace %s): %w", c.namespace, err)
	}
	m := make(map[string]taskState, len(resp.Tasks))
	for _, t := range resp.Tasks {
		m[t.ID] = taskState{status: taskStatus(t.Status), pid: t.Pid, exit: t.ExitStatus}
	}
	return m, nil
}

func taskStatus(s tasktypes.Status) TaskStatus {
	switch s {
	case tasktypes.Status_CREATED:
		return TaskCreated
	case tasktypes.Status_RUNNING:
		return TaskRunning
	case tasktypes.Status_STOPPED:
		return TaskStopped
	case tasktypes.Status_PAUSED:
		return TaskPaused
	case tasktypes.Status_PAUSING:
		return TaskPausing
	}
	return TaskUnknown
}

func info(r containers.Container, tasks map[string]taskState) ContainerInfo {
	ci := ContainerInfo{
		Name:        r.ID,
		Labels:      r.Labels,
		Image:       r.Image,
		Runtime:     r.Runtime.Name,
		SnapshotKey: r.SnapshotKey,
		CreatedAt:   r.CreatedAt,
		TaskStatus:  TaskNone,
	}
	if t, ok := tasks[r.ID]; ok {
		ci.TaskStatus, ci.Pid, ci.ExitStatus = t.status, t.pid, t.exit
	}
	return ci
}

// Leftovers are bottle objects in the namespace: containers named bottle-* or carrying
// bottle.* labels, tasks without a container, and bottle-* snapshots no container uses.
type Leftovers struct {
	Containers []ContainerInfo
	Tasks      []string
	Snapshots  []string
}

// Empty reports whether nothing was left over.
func (l Leftovers) Empty() bool {
	return len(l.Containers) == 0 && len(l.Tasks) == 0 && len(l.Snapshots) == 0
}

// Leftovers lists bottle's containers, orphan tasks and orphan snapshots. Remove them
// with Delete (containers, tasks) and RemoveSnapshot.
func (c *Client) Leftovers(ctx context.Context) (Leftovers, error) {
	ctx = c.ctx(ctx)
	all, err := c.List(ctx, nil)
	if err != nil {
		return Leftovers{}, err
	}
	var l Leftovers
	known := map[string]bool{}
	usedSnapshots := map[string]bool{}
	for _, ci := range all {
		known[ci.Name] = true
		usedSnapshots[ci.SnapshotKey] = true
		if isBottleContainer(ci) {
			l.Containers = append(l.Containers, ci)
		}
	}
	tasks, err := c.tasks(ctx)
	if err != nil {
		return Leftovers{}, err
	}
	for id := range tasks {
		if !known[id] {
			l.Tasks = append(l.Tasks, id)
		}
	}
	sort.Strings(l.Tasks)
	err = c.c.SnapshotService(c.snapshotter).Walk(ctx, func(_ context.Context, si snapshots.Info) error {
		if strings.HasPrefix(si.Name, names.Prefix) && !usedSnapshots[si.Name] {
			l.Snapshots = append(l.Snapshots, si.Name)
		}
		return nil
	})
	if err != nil {
		return Leftovers{}, fmt.Errorf("list snapshots (%s, namespace %s): %w", c.snapshotter, c.namespace, err)
	}
	sort.Strings(l.Snapshots)
	return l, nil
}

func isBottleContainer(ci ContainerInfo) bool {
	if strings.HasPrefix(ci.Name, names.Prefix) {
		return true
	}
	for k := range ci.Labels {
		if strings.HasPrefix(k, names.LabelPrefix) {
			return true
		}
	}
	return false
}
