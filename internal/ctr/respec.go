package ctr

import (
	"context"
	"fmt"
	"slices"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
)

// SetProcessEnv replaces the process env in container name's stored spec. A running
// task keeps the env it started with; the next task gets the new one (a sidecar
// restarted with a credential added, whose other values stay as they were given).
func (c *Client) SetProcessEnv(ctx context.Context, name string, env []string) error {
	ctx = c.ctx(ctx)
	cont, err := c.c.LoadContainer(ctx, name)
	if err != nil {
		return fmt.Errorf("set env of container %s: %w", name, err)
	}
	spec, err := cont.Spec(ctx)
	if err != nil {
		return fmt.Errorf("set env of container %s: spec: %w", name, err)
	}
	if spec.Process == nil {
		return fmt.Errorf("set env of container %s: its spec has no process", name)
	}
	spec.Process.Env = slices.Clone(env)
	err = cont.Update(ctx, func(ctx context.Context, cl *client.Client, r *containers.Container) error {
		return client.WithSpec(spec)(ctx, cl, r)
	})
	if err != nil {
		return fmt.Errorf("set env of container %s: %w", name, err)
	}
	return nil
}
