package plan

import (
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"

	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
)

// agentContainer plans the agent: its env (literals, forwarded host values, the proxies,
// the placeholders of routed credentials, git-gate's URLs), its user and resources.
func (b *builder) agentContainer(roles []string) (*Container, error) {
	c := b.newContainer(names.RoleAgent, b.agent.Image, false)
	env := map[string]string{}
	for k, v := range b.agent.Env {
		env[k] = v
	}
	for _, forwarded := range []struct {
		list     []string
		optional bool
	}{{b.agent.ForwardEnv, false}, {b.agent.OptionalEnv, true}} {
		for _, name := range forwarded.list {
			v, ok := b.lookup(name)
			switch {
			case ok:
				env[name] = v
				c.SecretEnv = append(c.SecretEnv, name)
			case !forwarded.optional:
				b.unresolved(name, fmt.Sprintf("forward_env of agent %s: export it, or move it to optional_env to start without it", b.in.AgentName))
			}
		}
	}
	proxy := fmt.Sprintf("http://%s:%d", names.RoleFilter, FilterPort)
	noProxy := []string{"localhost", "127.0.0.1", "::1"}
	for _, r := range roles {
		if r != names.RoleAgent && r != names.RoleFilter {
			noProxy = append(noProxy, r)
		}
	}
	for _, k := range []string{"HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"} {
		env[k] = proxy
	}
	env["NO_PROXY"] = strings.Join(noProxy, ",")
	env["no_proxy"] = env["NO_PROXY"]
	env["BOTTLE_IDENTITY"] = b.p.Identity.String()
	for _, r := range b.p.Routes {
		if slices.Contains(r.Roles, manifest.RoleClaudeCodeOAuth) {
			// The agent holds only a placeholder; the egress-proxy swaps in the real token.
			env["CLAUDE_CODE_OAUTH_TOKEN"] = ClaudePlaceholderToken
			env["ANTHROPIC_BASE_URL"] = RouteURL(r.Host)
			setDefault(env, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
			setDefault(env, "DISABLE_ERROR_REPORTING", "1")
		}
	}
	// The agent's git reaches each declared remote through git-gate, by its usual URL.
	for i, g := range b.bottle.Git {
		env[fmt.Sprintf("GIT_CONFIG_KEY_%d", i)] = fmt.Sprintf("url.%s.insteadOf", GitGateURL(g.Name))
		env[fmt.Sprintf("GIT_CONFIG_VALUE_%d", i)] = g.URL
		env["GIT_CONFIG_COUNT"] = fmt.Sprint(i + 1)
	}
	// A forwarded name can never smuggle a routed credential in: validation rejects
	// token_ref names in forward_env, and the placeholder above overrides literals.
	args := b.agent.Command
	if len(b.in.Command) > 0 {
		args = b.in.Command
	}
	uid, gid, err := b.agentUser()
	if err != nil {
		return nil, err
	}
	if uid == 0 {
		// Root in the sandbox still has no capabilities, so it writes only what root owns:
		// its own home. IS_SANDBOX=1 is Claude Code's switch that lets it skip permission
		// prompts as root (it is in one).
		setDefault(env, "HOME", "/root")
		setDefault(env, "IS_SANDBOX", "1")
	}
	res := b.bottle.Resources
	mem := res.MemoryMB
	if mem == 0 {
		mem = 8192
	}
	pids := res.Pids
	if pids == 0 {
		pids = 4096
	}
	stage := b.p.StageDir
	opts := []oci.SpecOpts{
		oci.WithProcessArgs(slices.Clone(args)...),
		withEnvMap(env),
		oci.WithProcessCwd("/workspace"),
		oci.WithUIDGID(uid, gid),
		oci.WithHostname(b.p.Identity.String()),
		oci.WithMounts(append([]specs.Mount{
			bind(b.p.Workspace.Source, "/workspace", false),
			bind(path.Join(stage, "agent/hosts"), "/etc/hosts", true),
			bind(path.Join(stage, "agent/resolv.conf"), "/etc/resolv.conf", true),
			bind(path.Join(stage, "agent/prompt.txt"), "/run/bottle/prompt.txt", true),
		}, b.protectMounts()...)),
		oci.WithAnnotations(map[string]string{annotationOverlay2: "none"}),
		withoutSetIDFiles,
		oci.WithMemoryLimit(uint64(mem) << 20),
		oci.WithPidsLimit(pids),
	}
	if res.CPUs > 0 {
		opts = append(opts, oci.WithCPUCFS(int64(res.CPUs*cpuPeriod), cpuPeriod))
	}
	spec, err := NewSpec(opts...)
	if err != nil {
		return nil, fmt.Errorf("agent spec: %w", err)
	}
	c.Spec = spec
	sort.Strings(c.SecretEnv)
	return c, nil
}

// agentUser is the agent's uid and gid: the manifest's user, else the workspace's owner
// (root too: the files the agent makes then belong to whoever owns the workspace, and
// gVisor's root holds no capabilities), else 1000:1000 when the owner is unknown. A
// bound workspace the user cannot write is a warning with its fix; a --cwd copy is
// always given to the agent's user.
func (b *builder) agentUser() (uid, gid uint32, err error) {
	dir := b.in.WorkspaceDir
	switch {
	case b.agent.User != "":
		if uid, gid, err = manifest.ParseUser(b.agent.User); err != nil {
			return 0, 0, err
		}
	case dir.Known:
		uid, gid = dir.UID, dir.GID
	default:
		uid, gid = 1000, 1000
	}
	if dir.Known && !b.in.CopyWorkspace && !CanWrite(dir, uid, gid) {
		fix := fmt.Sprintf("`chmod u+w %s`, or `--cwd` (a copy the agent owns)", b.in.Workspace)
		if b.agent.User != "" {
			fix = fmt.Sprintf("drop `user` from agent %s (it then runs as the owner), `chown -R %d:%d %s`, or `--cwd` (a copy the agent owns)",
				b.in.AgentName, uid, gid, b.in.Workspace)
		}
		b.p.Warnings = append(b.p.Warnings, fmt.Sprintf("agent %s runs as %d:%d and cannot write /workspace (%s: owner %d:%d, mode %04o); fix: %s",
			b.in.AgentName, uid, gid, b.in.Workspace, dir.UID, dir.GID, dir.Perm, fix))
	}
	return uid, gid, nil
}

// CanWrite reports whether uid:gid may create files in dir by its mode bits alone (the
// agent holds no capabilities, so root is no exception; supplementary groups are not
// known here).
func CanWrite(dir DirInfo, uid, gid uint32) bool {
	switch {
	case uid == dir.UID:
		return dir.Perm&0o300 == 0o300
	case gid == dir.GID:
		return dir.Perm&0o030 == 0o030
	default:
		return dir.Perm&0o003 == 0o003
	}
}

func setDefault(env map[string]string, k, v string) {
	if _, ok := env[k]; !ok {
		env[k] = v
	}
}
