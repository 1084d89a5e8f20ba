package plan

import (
	"encoding/json"
	"fmt"
	"path"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/bottle-dev/bottle/internal/names"
)

// sidecarKind is one kind of sidecar. Each kind lives in its own file: whether a bottle
// wants it, and its container (spec, stage files, readiness). Adding a kind is that file,
// one entry in sidecarKinds, its address in hostPart and the kind's server.
type sidecarKind interface {
	// role is the container's role.
	role() string
	// wanted reports whether the bottle runs this sidecar.
	wanted(b *builder) bool
	// container plans the sidecar's container and adds its stage files to the plan.
	container(b *builder) (*Container, error)
}

// sidecarKinds are every kind, in the order their containers are planned (the filter
// backends first: exactly one of them is wanted).
var sidecarKinds = []sidecarKind{builtinFilter{}, pipelockFilter{}, egressProxy{}, gitGate{}, superviseKind{}}

// hostPart is each role's host number on both bottle networks.
var hostPart = map[string]byte{names.RoleFilter: 2, names.RoleEgressProxy: 3, names.RoleGitGate: 4, names.RoleSupervise: 5, names.RoleAgent: 10}

// Readiness is how the runtime sees that a sidecar serves: a file the sidecar creates,
// or a URL the host asks. A sidecar that fails before it serves may leave its reason in
// ErrorFile.
type Readiness struct {
	// File is the host path the sidecar creates once it serves.
	File string `json:"file,omitempty"`
	// ErrorFile is the host path where the sidecar leaves its error when it fails.
	ErrorFile string `json:"error_file,omitempty"`
	// URL answers 200 to GET once the sidecar serves (asked from the host).
	URL string `json:"url,omitempty"`
}

// SidecarRunDir is the stage subdirectory mounted writable at /run/bottle in a sidecar;
// the runtime creates it owned by SidecarUID.
func SidecarRunDir(role string) string { return path.Join("run", role) }

// SidecarUID is the unprivileged user every sidecar runs as.
const SidecarUID = 65534

// extraCAPath is where the sidecars that leave the bottle find Input.ExtraCA.
const extraCAPath = "/etc/bottle/extra-ca.pem"

// readyFiles is the readiness of bottle's own sidecars: files in their run dir.
func (b *builder) readyFiles(role string) *Readiness {
	dir := path.Join(b.p.StageDir, SidecarRunDir(role))
	return &Readiness{File: path.Join(dir, names.SidecarReadyFile), ErrorFile: path.Join(dir, names.SidecarErrorFile)}
}

// stageJSON renders v as the stage file name and returns the mount of it at target.
func (b *builder) stageJSON(name, target string, v any) (specs.Mount, error) {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return specs.Mount{}, fmt.Errorf("render %s: %w", name, err)
	}
	b.p.StageFiles = append(b.p.StageFiles, StageFile{Name: name, Mode: 0o644, Content: string(data) + "\n"})
	return bind(path.Join(b.p.StageDir, name), target, true), nil
}

// extraCA is the mount of Input.ExtraCA, if there is one, for a sidecar that leaves the
// bottle, and the path its config names.
func (b *builder) extraCA() ([]specs.Mount, string) {
	if b.in.ExtraCA == "" {
		return nil, ""
	}
	return []specs.Mount{bind(path.Join(b.p.StageDir, "sidecar/extra-ca.pem"), extraCAPath, true)}, extraCAPath
}

// secret puts the host variable name into env for a sidecar's process, or records it as
// unresolved with hint (what it is, and how to provide it).
func (b *builder) secret(c *Container, env map[string]string, name, hint string) {
	if v, ok := b.lookup(name); ok && v != "" {
		env[name] = v
		c.SecretEnv = append(c.SecretEnv, name)
	} else {
		b.unresolved(name, hint)
	}
}

// sidecarGoEnv tunes the Go runtime of the sidecars (bottle's own, and pipelock: both Go
// programs) for what they are: small proxies, one sandbox each, per bottle. Each Go
// thread is a task of the sandbox's kernel with its own stub thread on the host, and a
// sandbox sees every host core: one P keeps a sidecar to a few threads whatever the
// host's size. The soft memory limit, well under the container's limit, makes the
// collector work harder before a busy sidecar's heap grows past it. (GOGC below 100 was
// measured: no smaller idle heap, and four collections instead of one while the
// sidecar starts.)
var sidecarGoEnv = map[string]string{"GOMAXPROCS": "1", "GOMEMLIMIT": "64MiB"}
