package plan

import (
	"encoding/json"
	"fmt"
	"path"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/supervise"
)

// SupervisePort is the port the supervise sidecar serves the agent on: unprivileged, so
// the sidecar needs no capability.
const SupervisePort = 8080

// SuperviseURL is the supervise sidecar's base URL, as the agent reaches it.
var SuperviseURL = fmt.Sprintf("http://%s:%d", names.RoleSupervise, SupervisePort)

// Where the supervise directories appear in the sidecars.
const (
	superviseProposals = "/run/supervise/proposals"
	superviseHost      = "/etc/bottle/supervise"
	changesDir         = "/etc/bottle/changes"
	// ClaudeManagedMCP is the file Claude Code reads its administrator's MCP servers
	// from: the agent uses the supervise server with no step by the user.
	ClaudeManagedMCP = "/etc/claude-code/managed-mcp.json"
)

// SuperviseDirs is a bottle's supervise directory: outside the stage dir, so approved
// changes survive the stage being written again at resume.
func SuperviseDirs(stateDir string, id names.Identity) supervise.Dirs {
	return supervise.Dirs{Root: path.Join(stateDir, "bottles", id.String(), "supervise")}
}

// superviseKind shows the agent its capabilities and takes its proposals to change them
// (internal/supervise). It lives on the internal network only; the host decides.
type superviseKind struct{}

func (superviseKind) records()               {}
func (superviseKind) role() string           { return names.RoleSupervise }
func (superviseKind) wanted(b *builder) bool { return b.bottle.Supervise }
func (superviseKind) container(b *builder) (*Container, error) {
	c := b.newContainer(names.RoleSupervise, b.in.SidecarImage, false)
	dirs := SuperviseDirs(b.in.StateDir, b.p.Identity)
	cfg := supervise.Config{
		Listen:       fmt.Sprintf("%s:%d", b.addr(names.RoleSupervise, names.NetInternal), SupervisePort),
		ProposalsDir: superviseProposals,
		HostDir:      superviseHost,
	}
	if t := b.bottle.SuperviseTimeout; t != "" {
		d, err := time.ParseDuration(t)
		if err != nil {
			return nil, fmt.Errorf("bottle %s: supervise_timeout: %w", b.agent.Bottle, err)
		}
		cfg.Timeout = egress.Duration(d)
	}
	mount, err := b.stageJSON("supervise/config.json", "/etc/bottle/supervise.json", cfg)
	if err != nil {
		return nil, err
	}
	mounts := []specs.Mount{mount, bind(dirs.Proposals(), superviseProposals, false), bind(dirs.Host(), superviseHost, true)}
	c.Spec, err = b.sidecarSpec(names.RoleSupervise, []string{"/bottle", "sidecar", names.RoleSupervise, "--config", "/etc/bottle/supervise.json"}, nil, mounts)
	c.Ready = b.readyFiles(names.RoleSupervise)
	if err != nil {
		return nil, err
	}
	return c, b.agentUsesSupervise()
}

// agentUsesSupervise points the agent at the server: its URL in the env, and Claude
// Code's managed MCP config (read-only) naming it.
func (b *builder) agentUsesSupervise() error {
	agent := b.p.Container(names.RoleAgent)
	mcp := map[string]any{"mcpServers": map[string]any{"bottle": map[string]any{"type": "http", "url": SuperviseURL + supervise.MCPPath}}}
	data, err := json.MarshalIndent(mcp, "", "  ")
	if err != nil {
		return err
	}
	b.p.StageFiles = append(b.p.StageFiles, StageFile{Name: "agent/managed-mcp.json", Mode: 0o644, Content: string(data) + "\n"})
	agent.Spec.Mounts = append(agent.Spec.Mounts, bind(path.Join(b.p.StageDir, "agent/managed-mcp.json"), ClaudeManagedMCP, true))
	agent.Spec.Process.Env = append(agent.Spec.Process.Env, "BOTTLE_SUPERVISE_URL="+SuperviseURL)
	return nil
}

// changesMount is the directory of approved changes, read-only, for the filter and
// git-gate: a directory, so the host's atomic rewrites (renames) are seen inside the
// sandbox.
func (b *builder) changesMount() specs.Mount {
	return bind(SuperviseDirs(b.in.StateDir, b.p.Identity).Changes(), changesDir, true)
}
