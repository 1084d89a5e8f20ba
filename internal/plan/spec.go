package plan

import (
	"fmt"
	"sort"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// SpecOpt changes an OCI runtime spec, in the style of containerd's oci.SpecOpts: a spec is
// a default base plus a list of small, composable options.
type SpecOpt func(*specs.Spec) error

// NewSpec returns the hardened default spec with opts applied in order.
func NewSpec(opts ...SpecOpt) (*specs.Spec, error) {
	s := defaultSpec()
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// defaultSpec is a Linux spec with every namespace private, no capabilities, no new
// privileges and the kernel paths that leak host information masked.
func defaultSpec() *specs.Spec {
	return &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: "rootfs"},
		Process: &specs.Process{
			Cwd:             "/",
			NoNewPrivileges: true,
			Capabilities:    &specs.LinuxCapabilities{Bounding: []string{}, Effective: []string{}, Permitted: []string{}},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 65536, Soft: 65536}},
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777"}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace},
			},
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
				"/sys/firmware", "/sys/devices/virtual/powercap",
			},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
		},
	}
}

// WithArgs sets the process argv.
func WithArgs(args ...string) SpecOpt {
	return func(s *specs.Spec) error {
		s.Process.Args = append([]string(nil), args...)
		return nil
	}
}

// WithEnv sets the process environment from an explicit map (sorted for stable output).
// The runtime puts the image's own env in front of it.
func WithEnv(env map[string]string) SpecOpt {
	return func(s *specs.Spec) error {
		keys := make([]string, 0, len(env))
		for k := range env {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		s.Process.Env = s.Process.Env[:0]
		for _, k := range keys {
			s.Process.Env = append(s.Process.Env, k+"="+env[k])
		}
		return nil
	}
}

// WithCwd sets the working directory.
func WithCwd(dir string) SpecOpt {
	return func(s *specs.Spec) error { s.Process.Cwd = dir; return nil }
}

// WithUser sets the numeric user and group of the process.
func WithUser(uid, gid uint32) SpecOpt {
	return func(s *specs.Spec) error {
		s.Process.User = specs.User{UID: uid, GID: gid}
		return nil
	}
}

// WithReadonlyRootfs makes the root filesystem read-only.
func WithReadonlyRootfs(s *specs.Spec) error { s.Root.Readonly = true; return nil }

// WithHostname sets the UTS hostname.
func WithHostname(name string) SpecOpt {
	return func(s *specs.Spec) error { s.Hostname = name; return nil }
}

// WithBind adds a bind mount of a host path.
func WithBind(source, dest string, readonly bool) SpecOpt {
	return func(s *specs.Spec) error {
		if !strings.HasPrefix(dest, "/") {
			return fmt.Errorf("mount destination %q is not absolute", dest)
		}
		opts := []string{"rbind", "nosuid", "nodev"}
		if readonly {
			opts = append(opts, "ro")
		} else {
			opts = append(opts, "rw")
		}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: dest, Type: "bind", Source: source, Options: opts})
		return nil
	}
}

// WithRlimit sets (or replaces) a resource limit.
func WithRlimit(kind string, soft, hard uint64) SpecOpt {
	return func(s *specs.Spec) error {
		for i := range s.Process.Rlimits {
			if s.Process.Rlimits[i].Type == kind {
				s.Process.Rlimits[i].Soft, s.Process.Rlimits[i].Hard = soft, hard
				return nil
			}
		}
		s.Process.Rlimits = append(s.Process.Rlimits, specs.POSIXRlimit{Type: kind, Soft: soft, Hard: hard})
		return nil
	}
}

// WithMemoryLimit limits memory (bytes); 0 leaves it unlimited.
func WithMemoryLimit(bytes int64) SpecOpt {
	return func(s *specs.Spec) error {
		if bytes > 0 {
			s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &bytes}
		}
		return nil
	}
}

// WithCPUs limits CPU time to n CPUs; 0 leaves it unlimited.
func WithCPUs(n float64) SpecOpt {
	return func(s *specs.Spec) error {
		if n > 0 {
			period := uint64(100000)
			quota := int64(n * float64(period))
			s.Linux.Resources.CPU = &specs.LinuxCPU{Period: &period, Quota: &quota}
		}
		return nil
	}
}

// WithPidsLimit limits the number of processes; 0 leaves it unlimited.
func WithPidsLimit(n int64) SpecOpt {
	return func(s *specs.Spec) error {
		if n > 0 {
			s.Linux.Resources.Pids = &specs.LinuxPids{Limit: &n}
		}
		return nil
	}
}

// WithAnnotation sets a spec annotation (runtime options; never a secret).
func WithAnnotation(key, value string) SpecOpt {
	return func(s *specs.Spec) error {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[key] = value
		return nil
	}
}

// WithCapabilities gives the process exactly these capabilities (also ambient, so a
// non-root user keeps them).
func WithCapabilities(caps ...string) SpecOpt {
	return func(s *specs.Spec) error {
		c := append([]string(nil), caps...)
		s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: c, Effective: c, Permitted: c, Inheritable: c, Ambient: c}
		return nil
	}
}
