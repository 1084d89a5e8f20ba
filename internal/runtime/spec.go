package runtime

import (
	"context"
	"fmt"
	"slices"
	"strings"

	containerd "github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/bottle-dev/bottle/internal/plan"
)

// defaultPath is the PATH of a container whose image sets none (containerd's default).
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// finalizeSpec completes a planned spec with what only the runtime knows: the image's env
// and default command, the netns path and the terminal. The env is merged once, as
// containerd merges it: the image's env first, each planned value replacing the image's
// value of its name or appended after them, PATH defaulted when the image sets none.
// The plan's spec is not changed: what this changes is copied first.
func finalizeSpec(c *plan.Container, imageEnv, imageArgs []string, nsPath string, tty bool) (*specs.Spec, error) {
	planned := c.Spec
	if len(planned.Process.Args) == 0 && len(imageArgs) == 0 {
		return nil, fmt.Errorf("container %s: image %s has no default command; set `command` in the manifest", c.Name, c.Image)
	}
	s := *planned
	proc := *planned.Process
	s.Process = &proc
	linux := *planned.Linux
	linux.Namespaces = slices.Clone(linux.Namespaces)
	s.Linux = &linux

	proc.Env = slices.Clone(imageEnv)
	if !slices.ContainsFunc(proc.Env, func(kv string) bool { return strings.HasPrefix(kv, "PATH=") }) {
		proc.Env = append(proc.Env, defaultPath)
	}
	opts := []oci.SpecOpts{
		oci.WithEnv(planned.Process.Env),
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: nsPath}),
		withTerminal(tty),
	}
	if len(proc.Args) == 0 {
		opts = append(opts, oci.WithProcessArgs(slices.Clone(imageArgs)...))
	}
	if err := oci.ApplyOpts(context.Background(), nil, &containerd.Container{ID: c.Name}, &s, opts...); err != nil {
		return nil, fmt.Errorf("container %s: %w", c.Name, err)
	}
	return &s, nil
}

// withTerminal sets whether the process gets a terminal. (oci.WithTTY would also add
// TERM=xterm over the image's and the manifest's TERM.)
func withTerminal(tty bool) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containerd.Container, s *specs.Spec) error {
		s.Process.Terminal = tty
		return nil
	}
}
