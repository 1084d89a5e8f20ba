package runtime

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/bottle-dev/bottle/internal/ociarchive"
	"github.com/bottle-dev/bottle/internal/plan"
)

// ExportPlan is the plan `bottle export` turns into Kubernetes objects: the plan a start
// would run, except that it reads no host value. Every forwarded name, credential and
// SSH key the bottle names is there as plan.Redacted, so the plan still says which
// container needs which secret, and no secret can reach the export.
func ExportPlan(ctx context.Context, opts Options, po PlanOptions) (*plan.Plan, error) {
	opts.LookupEnv = func(string) (string, bool) { return plan.Redacted, true }
	files, err := plan.ReadHostFiles(po.Manifest, po.ManifestPath, po.Agent, func(string) ([]byte, error) { return []byte(plan.Redacted), nil })
	if err != nil {
		return nil, err
	}
	po.HostFiles = files
	e := OpenPlanner(ctx, opts)
	defer e.Close()
	return e.Plan(ctx, po)
}

// ExportSidecarImage writes bottle's sidecar image (the sidecar executable, which must
// be static, and the host's CA bundle) as an OCI archive at path, named ref, for a
// registry that Kubernetes nodes pull from.
func ExportSidecarImage(path, ref string) error {
	exe, err := ociarchive.SidecarExecutable()
	if err != nil {
		return err
	}
	if _, err := os.Stat(ociarchive.HostCABundle); err != nil {
		return fmt.Errorf("sidecar image %s: host CA bundle %s is missing (install the ca-certificates package): %w", ref, ociarchive.HostCABundle, err)
	}
	if _, err := ociarchive.WriteFile(path, ociarchive.SidecarImage(ref, exe, ociarchive.HostCABundle)); err != nil {
		return fmt.Errorf("sidecar image %s: %w", ref, err)
	}
	return nil
}

// ApplyPlan is the plan `bottle k8s apply` runs: a start's, with the host's secret
// values, refused when the host lacks one (as a start is).
func ApplyPlan(ctx context.Context, opts Options, po PlanOptions) (*plan.Plan, error) {
	e := OpenPlanner(ctx, opts)
	defer e.Close()
	p, err := e.Plan(ctx, po)
	if err != nil {
		return nil, err
	}
	if len(p.Unresolved) > 0 {
		return nil, fmt.Errorf("not set on this host: %s; values are read now and go only into the Secrets of the Pods that need them", strings.Join(p.Unresolved, ", "))
	}
	return p, nil
}
