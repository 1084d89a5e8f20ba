package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/bottle-dev/bottle/internal/ctr"
	"github.com/bottle-dev/bottle/internal/hostfile"
	"github.com/bottle-dev/bottle/internal/imagebuild"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/state"
)

// ApplyAgentDockerfile builds the bottle's own agent image bottle.local/<identity>:<n>
// from dockerfile, FROM the bottle's current agent image (see imagebuild), and records
// it: from then on resume runs the agent on it. A detached bottle whose agent runs is
// restarted on it at once (stopped and resumed: fresh netns, the workspace kept); an
// attached one (its agent runs on a terminal) gets it at its next resume. A refused or
// failed build changes nothing.
func (e *Engine) ApplyAgentDockerfile(ctx context.Context, identity names.Identity, dockerfile string, progress io.Writer) (imageRef string, err error) {
	m, err := e.store.Load(identity)
	if err != nil {
		return "", err
	}
	if m.Phase == state.PhaseStarting {
		return "", fmt.Errorf("bottle %s is starting; apply the Dockerfile once it runs or is stopped", identity)
	}
	base, err := e.currentAgentImage(ctx, m)
	if err != nil {
		return "", err
	}
	if err := imagebuild.Validate(dockerfile, base); err != nil {
		return "", fmt.Errorf("bottle %s: %w", identity, err)
	}
	rt, err := e.buildRuntime(m)
	if err != nil {
		return "", err
	}
	n := m.AgentImageSeq + 1
	ref := imagebuild.ImageRef(identity, n)
	err = imagebuild.Build(ctx, imagebuild.Spec{
		Dockerfile: dockerfile, Base: base, Target: ref,
		Containerd: e.ctr.Address(), Namespace: e.opts.Namespace, Snapshotter: e.ctr.Snapshotter(),
		Runtime: rt, Dir: filepath.Join(e.store.BottleDir(identity), "build"), Progress: progress,
	})
	if err != nil {
		return "", fmt.Errorf("bottle %s: %w", identity, err)
	}
	// Reload: the bottle may have been stopped or resumed during the build.
	if m, err = e.store.Load(identity); err != nil {
		return "", errors.Join(err, e.ctr.RemoveImage(context.WithoutCancel(ctx), ref))
	}
	old := m.AgentImage
	m.AgentImage, m.AgentImageSeq = ref, n
	if err := e.store.Save(m); err != nil {
		return "", errors.Join(err, e.ctr.RemoveImage(context.WithoutCancel(ctx), ref))
	}
	if old != "" {
		// The previous own image is no base of anything any more (the new one has its
		// layers); a container still on it keeps its snapshot.
		if err := e.ctr.RemoveImage(ctx, old); err != nil {
			e.log.Warn("could not remove the bottle's previous image", "identity", identity, "image", old, "error", err)
		}
	}
	return ref, e.restartOnImage(ctx, m)
}

// currentAgentImage is the image the agent runs on: the bottle's own built image, else
// the image of its agent container (the manifest's when it started).
func (e *Engine) currentAgentImage(ctx context.Context, m *state.Meta) (string, error) {
	if m.AgentImage != "" {
		return m.AgentImage, nil
	}
	info, err := e.ctr.Info(ctx, m.Identity.Container(names.RoleAgent))
	if err != nil {
		return "", fmt.Errorf("bottle %s: agent container: %w", m.Identity, err)
	}
	if info.Image == "" {
		return "", fmt.Errorf("bottle %s: its agent container names no image", m.Identity)
	}
	return info.Image, nil
}

// buildRuntime is how the build runs its RUN steps: under the bottle's gVisor runtime,
// never plain runc (the Dockerfile comes from the agent).
func (e *Engine) buildRuntime(m *state.Meta) (imagebuild.Runtime, error) {
	rt, err := ctr.DetectRuntime(m.Runtime, e.opts.RunscPath, false)
	if err != nil {
		return imagebuild.Runtime{}, fmt.Errorf("bottle %s: image builds run under gVisor only: %w", m.Identity, err)
	}
	out := imagebuild.Runtime{Type: rt.Type}
	if rt.Handler == ctr.HandlerRunscRunc {
		out.BinaryName, out.Root = rt.RunscPath, e.opts.RuncRoot
	}
	return out, nil
}

// restartOnImage restarts a bottle whose agent runs detached on its recorded image:
// stop, then the resume steps (the agent gets a new container, see starter.prepare).
func (e *Engine) restartOnImage(ctx context.Context, m *state.Meta) error {
	phase, _, err := e.phase(ctx, m)
	if err != nil {
		return err
	}
	switch {
	case phase == state.PhaseStopped || phase == PhaseExited:
		e.log.Info("new agent image recorded; `bottle resume` runs the agent on it", "identity", m.Identity, "image", m.AgentImage)
		return nil
	case !m.Detached && state.OwnerAlive(m):
		e.log.Info("new agent image recorded; the agent runs attached to a terminal, so it gets it at its next `bottle resume`", "identity", m.Identity, "image", m.AgentImage)
		return nil
	}
	man, path, files, err := LoadRecordedManifest(m.ManifestPath, m.Agent)
	if err != nil {
		return fmt.Errorf("bottle %s: image %s is built, but the restart needs its manifest: %w", m.Identity, m.AgentImage, err)
	}
	if err := e.Stop(ctx, m.Identity); err != nil {
		return err
	}
	if m, err = e.store.Load(m.Identity); err != nil {
		return err
	}
	if _, err := e.run(ctx, m.Identity, resumeOptions(m, man, path, files, true, Stdio{}), m); err != nil {
		return fmt.Errorf("bottle %s: restart on image %s (it is stopped; `bottle resume %s` retries): %w", m.Identity, m.AgentImage, m.Identity, err)
	}
	return nil
}

// LoadRecordedManifest reads a bottle's manifest from its recorded path (the default
// name: looked up as a start does) and the host files agent's bottle names, as resume
// needs them.
func LoadRecordedManifest(path, agent string) (*manifest.Manifest, string, plan.HostFiles, error) {
	if path == manifest.DefaultName {
		path = ""
	}
	src, data, err := manifest.Locate(path, func(string) string { return "" })
	if err != nil {
		return nil, "", nil, err
	}
	m, err := manifest.Load(src.Path, data)
	if err != nil {
		return nil, "", nil, err
	}
	files, err := plan.ReadHostFiles(m, src.Path, agent, hostfile.ReadPEM)
	return m, src.Path, files, err
}

// removeAgentImages removes the bottle's own built images (with the bottle).
func (e *Engine) removeAgentImages(ctx context.Context, identity names.Identity) error {
	refs, err := e.ctr.ImagesWithPrefix(ctx, imagebuild.ImageRepo(identity)+":")
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range refs {
		errs = append(errs, e.ctr.RemoveImage(ctx, r))
	}
	return errors.Join(errs...)
}
