package plan

import (
	"context"
	"maps"
	"path"
	goruntime "runtime"
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
	env = maps.Clone(env)
	if env == nil {
		env = map[string]string{}
	}
	maps.Copy(env, sidecarGoEnv)
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

// runsc reads per-container flags from spec annotations "dev.gvisor.flag.<flag>"; these
// two are allowed without --allow-flag-override.
const (
	// annotationOverlay2 = "none" makes root file system writes reach the container's
	// snapshot: runsc's default keeps them in a sandbox-private overlay, discarded when
	// the sandbox ends, so a resumed agent would not see its earlier changes.
	annotationOverlay2 = "dev.gvisor.flag.overlay2"
	// annotationOCISeccomp = "true" makes runsc apply the spec's seccomp profile inside
	// the sandbox (it ignores the profile otherwise).
	annotationOCISeccomp = "dev.gvisor.flag.oci-seccomp"
)

// setIDBits make an executable run as its file's owner or group.
const setIDBits = 0o6000

// The open flags that create a file, and so take a mode (O_CREAT; O_TMPFILE's own bit).
const (
	openCreate  = 0o100
	openTmpfile = 0o20000000
)

// withoutSetIDFiles refuses (EPERM) every system call that would give a file the
// set-user-ID or set-group-ID bit. The agent owns what it writes in its workspace, a
// host directory: a set-user-ID file it made there would run as the workspace's owner
// (root, for a root-owned checkout) for any host user who can reach it. The workspace
// mount's nosuid binds only the sandbox's own view, so the bits are refused where they
// are asked for: chmod and its kin, and every call that creates a file with a mode.
// openat2 takes its mode in a struct seccomp cannot read: it answers ENOSYS, and callers
// fall back to openat.
func withoutSetIDFiles(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
	eperm, enosys := uint(1), uint(38)
	rules := []specs.LinuxSyscall{{Names: []string{"openat2"}, Action: specs.ActErrno, ErrnoRet: &enosys}}
	masked := func(index uint, mask, value uint64) specs.LinuxSeccompArg {
		return specs.LinuxSeccompArg{Index: index, Value: mask, ValueTwo: value, Op: specs.OpMaskedEqual}
	}
	// A masked comparison matches one value, so each non-zero combination of the two
	// bits gets its own rule (the arguments of one rule must all match).
	for _, c := range setIDCalls() {
		for _, v := range []uint64{0o4000, 0o2000, 0o6000} {
			mode := masked(c.mode, setIDBits, v)
			if !c.open {
				rules = append(rules, specs.LinuxSyscall{Names: []string{c.name}, Action: specs.ActErrno, ErrnoRet: &eperm, Args: []specs.LinuxSeccompArg{mode}})
				continue
			}
			for _, create := range []uint64{openCreate, openTmpfile} {
				rules = append(rules, specs.LinuxSyscall{Names: []string{c.name}, Action: specs.ActErrno, ErrnoRet: &eperm,
					Args: []specs.LinuxSeccompArg{masked(c.mode-1, create, create), mode}})
			}
		}
	}
	s.Linux.Seccomp = &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Syscalls: rules}
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[annotationOCISeccomp] = "true"
	return nil
}

// setIDCall is a system call that gives a file a mode: mode is the index of its mode
// argument; open calls set it only when their flags (the argument before it) create a
// file.
type setIDCall struct {
	name string
	mode uint
	open bool
}

// setIDCalls are the calls of this architecture that give a file a mode (the ones
// without an *at form exist on amd64 only).
func setIDCalls() []setIDCall {
	calls := []setIDCall{{"fchmod", 1, false}, {"fchmodat", 2, false}, {"fchmodat2", 2, false},
		{"mkdirat", 2, false}, {"mknodat", 2, false}, {"openat", 3, true}}
	if goruntime.GOARCH == "amd64" {
		calls = append(calls, setIDCall{"chmod", 1, false}, setIDCall{"creat", 1, false},
			setIDCall{"mkdir", 1, false}, setIDCall{"mknod", 1, false}, setIDCall{"open", 2, true})
	}
	return calls
}
