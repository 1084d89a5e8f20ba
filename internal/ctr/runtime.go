package ctr

import (
	"debug/elf"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
)

// RuntimeHandler names how containers are run (see docs/ARCHITECTURE.md).
type RuntimeHandler string

const (
	// HandlerAuto detects: runsc-runc when a static runsc is found, else fail closed.
	HandlerAuto RuntimeHandler = "auto"
	// HandlerRunsc uses gVisor's own shim (containerd-shim-runsc-v1).
	HandlerRunsc RuntimeHandler = "runsc"
	// HandlerRunscRunc uses containerd's runc shim with runsc as its OCI runtime binary.
	HandlerRunscRunc RuntimeHandler = "runsc-runc"
	// HandlerRunc runs containers without gVisor; only with an explicit opt-in.
	HandlerRunc RuntimeHandler = "runc"
)

const (
	// RuntimeTypeRunc is containerd's runc shim (containerd-shim-runc-v2).
	RuntimeTypeRunc = "io.containerd.runc.v2"
	// RuntimeTypeRunsc is gVisor's shim (containerd-shim-runsc-v1).
	RuntimeTypeRunsc = "io.containerd.runsc.v1"
	// RunscShimBinary is the executable containerd starts for RuntimeTypeRunsc.
	RunscShimBinary = "containerd-shim-runsc-v1"
)

// runscInstallHint tells the operator how to get a working runsc.
const runscInstallHint = "install a static runsc to /usr/local/bin with `sudo make setup` " +
	"(scripts/setup-host.sh --system), or by hand: " +
	"CGO_ENABLED=0 go install gvisor.dev/gvisor/runsc@<version> && install $(go env GOPATH)/bin/runsc /usr/local/bin/"

// Runtime is a resolved runtime handler: what containerd runtime type to request and
// with which options.
type Runtime struct {
	Handler RuntimeHandler
	// Type is the containerd runtime type, e.g. io.containerd.runc.v2.
	Type string
	// RunscPath is the runsc executable (runsc-runc and runsc handlers).
	RunscPath string
	// RuncRoot, when set, is the state directory (--root) of runc/runsc under the runc
	// shim; empty means the shim's default /run/containerd/runc/<namespace>. Tests use a
	// private one so nothing of theirs lands in the host's runtime state.
	RuncRoot string
}

// String returns the handler name.
func (r Runtime) String() string { return string(r.Handler) }

// containerOpt returns the containerd option selecting this runtime.
func (r Runtime) containerOpt() (client.NewContainerOpts, error) {
	switch r.Handler {
	case HandlerRunscRunc:
		if r.RunscPath == "" {
			return nil, errors.New("runtime runsc-runc without a runsc path")
		}
		return client.WithRuntime(RuntimeTypeRunc, &runcoptions.Options{BinaryName: r.RunscPath, Root: r.RuncRoot}), nil
	case HandlerRunsc:
		return client.WithRuntime(RuntimeTypeRunsc, nil), nil
	case HandlerRunc:
		return client.WithRuntime(RuntimeTypeRunc, &runcoptions.Options{Root: r.RuncRoot}), nil
	}
	return nil, fmt.Errorf("runtime handler %q is not resolved (use DetectRuntime)", r.Handler)
}

// lookPath and the fallback directory are variables so tests can point them elsewhere.
var (
	lookPath         = exec.LookPath
	fallbackRunscDir = "/usr/local/bin"
)

// DetectRuntime resolves the runtime handler want (auto, runsc, runsc-runc, runc).
// runscPath overrides where runsc is looked for (empty: PATH, then /usr/local/bin).
// runc is refused unless allowUnsafeRunc is set. Failures say what to install.
func DetectRuntime(want string, runscPath string, allowUnsafeRunc bool) (Runtime, error) {
	switch RuntimeHandler(want) {
	case HandlerAuto, "":
		p, err := findStaticRunsc(runscPath)
		if err != nil {
			return Runtime{}, fmt.Errorf("runtime auto: no usable gVisor runsc, refusing to run containers without a sandbox: %w", err)
		}
		return Runtime{Handler: HandlerRunscRunc, Type: RuntimeTypeRunc, RunscPath: p}, nil
	case HandlerRunscRunc:
		p, err := findStaticRunsc(runscPath)
		if err != nil {
			return Runtime{}, fmt.Errorf("runtime runsc-runc: %w", err)
		}
		return Runtime{Handler: HandlerRunscRunc, Type: RuntimeTypeRunc, RunscPath: p}, nil
	case HandlerRunsc:
		if _, err := lookPath(RunscShimBinary); err != nil {
			return Runtime{}, fmt.Errorf("runtime runsc: gVisor shim %s not found on PATH: install it "+
				"(go install gvisor.dev/gvisor/shim@<version>, then install the binary as /usr/local/bin/%s), "+
				"or use runtime runsc-runc, which drives runsc through containerd's runc shim: %w",
				RunscShimBinary, RunscShimBinary, err)
		}
		p, err := findStaticRunsc(runscPath)
		if err != nil {
			return Runtime{}, fmt.Errorf("runtime runsc: %w", err)
		}
		return Runtime{Handler: HandlerRunsc, Type: RuntimeTypeRunsc, RunscPath: p}, nil
	case HandlerRunc:
		if !allowUnsafeRunc {
			return Runtime{}, errors.New("runtime runc runs the agent WITHOUT the gVisor sandbox; " +
				"it needs the explicit unsafe opt-in --allow-unsafe-runc, otherwise use runsc-runc or auto")
		}
		slog.Warn("UNSAFE: runtime runc selected: containers share the host kernel without the gVisor sandbox")
		return Runtime{Handler: HandlerRunc, Type: RuntimeTypeRunc}, nil
	}
	return Runtime{}, fmt.Errorf("unknown runtime %q: use one of auto, runsc-runc, runsc, runc", want)
}

// findStaticRunsc locates runsc (explicit path, PATH, then /usr/local/bin) and checks
// that it is statically linked.
func findStaticRunsc(explicit string) (string, error) {
	var p string
	if explicit != "" {
		if _, err := os.Stat(explicit); err != nil {
			return "", fmt.Errorf("runsc at %s: %w; %s", explicit, err, runscInstallHint)
		}
		p = explicit
	} else if found, err := lookPath("runsc"); err == nil {
		p = found
	} else {
		fallback := filepath.Join(fallbackRunscDir, "runsc")
		if _, err := os.Stat(fallback); err != nil {
			return "", fmt.Errorf("runsc not found on PATH or at %s: %s", fallback, runscInstallHint)
		}
		p = fallback
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("runsc at %s: %w", p, err)
	}
	if err := checkStatic(abs); err != nil {
		return "", err
	}
	return abs, nil
}

// checkStatic fails when the ELF file at p has an interpreter (is dynamically linked):
// runsc re-executes itself through /proc/self/exe after pivot_root, where no ELF
// interpreter exists, and every container start fails.
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("runsc at %s is not a readable ELF executable: %w; %s", p, err, runscInstallHint)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("runsc at %s is dynamically linked (has an ELF interpreter); under containerd every start "+
				"fails with `error executing umounter: fork/exec /proc/self/exe: no such file or directory`. "+
				"Rebuild it static (CGO_ENABLED=0): %s", p, runscInstallHint)
		}
	}
	return nil
}
