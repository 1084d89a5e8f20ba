package plan

import (
	"context"
	"path"
	"slices"
	"sort"
	"strings"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// cpuPeriod is the CFS period of a CPU limit, in microseconds.
const cpuPeriod = 100000

// NewSpec returns containerd's default Linux spec, hardened, with opts (containerd's
// oci.SpecOpts) applied in order. No containerd client is involved: the options bottle
// uses need none.
func NewSpec(opts ...oci.SpecOpts) (*specs.Spec, error) {
	// containerd's default spec needs a namespace, which only names its cgroup path;
	// hardened clears that path again.
	ctx := namespaces.WithNamespace(context.Background(), "bottle")
	return oci.GenerateSpecWithPlatform(ctx, nil, "linux", &containers.Container{}, append([]oci.SpecOpts{hardened}, opts...)...)
}

// hardened takes back what containerd's default spec gives beyond bottle's own base:
// every capability is dropped (containerd grants 14), /run is not a tmpfs (the image's
// /run stays; /tmp is one instead), the runtime chooses the cgroup path as before, the
// file limit is 65536, and the masked paths are the same on every host (containerd adds
// the thermal_throttle directories of the planning host's CPUs). Every namespace stays
// private and no_new_privileges stays on.
func hardened(ctx context.Context, client oci.Client, c *containers.Container, s *specs.Spec) error {
	return oci.ApplyOpts(ctx, client, c, s,
		oci.WithCapabilities([]string{}),
		oci.WithNoNewPrivileges,
		oci.WithoutRunMount,
		oci.WithMounts([]specs.Mount{{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777"}}}),
		oci.WithCgroup(""),
		oci.WithRlimit(&specs.POSIXRlimit{Type: "RLIMIT_NOFILE", Hard: 65536, Soft: 65536}),
		oci.WithMaskedPaths(slices.DeleteFunc(slices.Clone(s.Linux.MaskedPaths), func(p string) bool {
			return strings.HasPrefix(p, "/sys/devices/system/cpu/")
		})),
	)
}

// withEnvMap sets the process environment from a map, sorted for stable output. The
// runtime puts it over the image's own env.
func withEnvMap(env map[string]string) oci.SpecOpts {
	kv := make([]string, 0, len(env))
	for k, v := range env {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return oci.WithEnv(kv)
}

// bind is a bind mount of a host path; dest is an absolute path in the container.
func bind(source, dest string, readonly bool) specs.Mount {
	mode := "rw"
	if readonly {
		mode = "ro"
	}
	return specs.Mount{Destination: dest, Type: "bind", Source: source, Options: []string{"rbind", "nosuid", "nodev", mode}}
}

// sidecarSpec is the common hardened spec of the sidecars: unprivileged user, read-only
// rootfs, the bottle's hosts file and the outside resolver, mounts besides those, then
// opts.
func (b *builder) sidecarSpec(role string, args []string, env map[string]string, mounts []specs.Mount, opts ...oci.SpecOpts) (*specs.Spec, error) {
	stage := b.p.StageDir
	base := []oci.SpecOpts{
		oci.WithProcessArgs(args...),
		withEnvMap(env),
		oci.WithUIDGID(SidecarUID, SidecarUID),
		oci.WithRootFSReadonly(),
		oci.WithHostname(role),
		oci.WithMounts(append([]specs.Mount{
			bind(path.Join(stage, "sidecar/hosts"), "/etc/hosts", true),
			bind(path.Join(stage, "sidecar/resolv.conf"), "/etc/resolv.conf", true),
			// The only writable place: the sidecar reports readiness there (SidecarReadyFile).
			bind(path.Join(stage, SidecarRunDir(role)), "/run/bottle", false),
		}, mounts...)),
		oci.WithMemoryLimit(512 << 20),
		oci.WithPidsLimit(512),
	}
	return NewSpec(append(base, opts...)...)
}
