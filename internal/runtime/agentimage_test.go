package runtime

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/imagebuild"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
	"github.com/bottle-dev/bottle/internal/state"
	"github.com/bottle-dev/bottle/internal/supervise"
)

// TestResumeRunsTheBottlesOwnImage: a recorded own image wins over the manifest's: resume
// gives the agent a new container from it (Update refuses another image) and keeps it
// recorded; rm removes the bottle's own images and no other.
func TestResumeRunsTheBottlesOwnImage(t *testing.T) {
	st := newStartTest(t)
	ctx := context.Background()
	if _, err := st.e.Start(ctx, st.so); err != nil {
		t.Fatal(err)
	}
	id := names.Identity(st.bottles()[0])
	agent := id.Container(names.RoleAgent)
	manifestImage := st.host.images[agent]
	if err := st.e.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	own := "bottle.local/" + id.String() + ":3"
	m, err := st.e.store.Load(id)
	if err != nil {
		t.Fatal(err)
	}
	m.AgentImage, m.AgentImageSeq = own, 3
	if err := st.e.store.Save(m); err != nil {
		t.Fatal(err)
	}
	st.host.built[own] = true
	st.host.built["bottle.local/"+id.String()+"-other:1"] = true // another bottle's
	load := func(string) (*manifest.Manifest, string, plan.HostFiles, error) {
		return st.so.Manifest, st.so.ManifestPath, nil, nil
	}
	st.host.journal = nil
	if _, err := st.e.Resume(ctx, id, load, true, Stdio{}); err != nil {
		t.Fatal(err)
	}
	ops := st.host.ops()
	if del, cre := slices.Index(ops, "delete agent"), slices.Index(ops, "create agent"); del < 0 || cre < del {
		t.Errorf("resume on the own image: %v; want the agent's container deleted, then created", ops)
	}
	if got := st.host.images[agent]; got != own || got == manifestImage {
		t.Errorf("agent container image %q, want the own image %q (manifest's: %q)", got, own, manifestImage)
	}
	if m, err := st.e.store.Load(id); err != nil || m.AgentImage != own || m.AgentImageSeq != 3 {
		t.Errorf("record after resume: %+v, %v; want the own image kept", m, err)
	}

	if err := st.e.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := st.e.Remove(ctx, id, false); err != nil {
		t.Fatal(err)
	}
	if st.host.built[own] || !st.host.built["bottle.local/"+id.String()+"-other:1"] {
		t.Errorf("images after rm: %v; want only the bottle's own removed", st.host.built)
	}
}

// TestApplyAgentDockerfileRefusesBeforeAnything: a Dockerfile not FROM the current agent
// image is refused before any build, and the record stays as it was.
func TestApplyAgentDockerfileRefusesBeforeAnything(t *testing.T) {
	st := newStartTest(t)
	ctx := context.Background()
	if _, err := st.e.Start(ctx, st.so); err != nil {
		t.Fatal(err)
	}
	id := names.Identity(st.bottles()[0])
	m, err := st.e.store.Load(id)
	if err != nil {
		t.Fatal(err)
	}
	m.AgentImage, m.AgentImageSeq = "bottle.local/"+id.String()+":1", 1
	if err := st.e.store.Save(m); err != nil {
		t.Fatal(err)
	}
	st.host.journal = nil
	_, err = st.e.ApplyAgentDockerfile(ctx, id, "FROM busybox\nRUN true\n", nil)
	if err == nil || !strings.Contains(err.Error(), "only the bottle's current agent image") {
		t.Errorf("ApplyAgentDockerfile FROM another image: %v", err)
	}
	if ops := st.host.ops(); len(ops) != 0 {
		t.Errorf("a refused Dockerfile did %v", ops)
	}
	if after, err := st.e.store.Load(id); err != nil || after.AgentImage != m.AgentImage || after.AgentImageSeq != 1 || after.Phase != state.PhaseRunning {
		t.Errorf("record after a refusal: %+v, %v", after, err)
	}
}

// TestApplyingOutlastsABuild: the sidecar waits past a proposal's deadline for an
// approval being applied longer than a build may take, plus the agent's restart.
func TestApplyingOutlastsABuild(t *testing.T) {
	if supervise.MaxApplying < imagebuild.DefaultTimeout+time.Minute {
		t.Errorf("supervise.MaxApplying %v does not outlast a build (%v) and a restart", supervise.MaxApplying, imagebuild.DefaultTimeout)
	}
}
