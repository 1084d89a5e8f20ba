package plan

import (
	"fmt"
	"path"

	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/bottle-dev/bottle/internal/gitgate"
	"github.com/bottle-dev/bottle/internal/manifest"
	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/supervise"
)

// GitGatePort is the port git-gate listens on (http://git-gate/NAME.git).
const GitGatePort = 80

// GitGateURL is where the agent reaches a declared remote.
func GitGateURL(name string) string { return fmt.Sprintf("http://%s/%s.git", names.RoleGitGate, name) }

// gitGate is the agent's only way to the declared git remotes (internal/gitgate): its
// config names each remote's credential; the credentials themselves (HTTPS tokens, SSH
// private keys) go only into its process env.
type gitGate struct{}

func (gitGate) role() string           { return names.RoleGitGate }
func (gitGate) wanted(b *builder) bool { return len(b.bottle.Git) > 0 }
func (gitGate) records()               {}
func (gitGate) container(b *builder) (*Container, error) {
	c := b.newContainer(names.RoleGitGate, b.in.SidecarImage, true)
	ca, caFile := b.extraCA()
	cfg := gitgate.Config{
		Listen:   fmt.Sprintf("%s:%d", b.addr(names.RoleGitGate, names.NetInternal), GitGatePort),
		SpoolDir: "/run/bottle/spool",
		CAFile:   caFile,
	}
	env := map[string]string{}
	for i, g := range b.bottle.Git {
		r := gitgate.Remote{Name: g.Name, URL: g.URL, KnownHosts: g.KnownHosts, PushOptions: g.PushOptions}
		for _, pr := range g.PushRules() {
			r.Push = append(r.Push, gitgate.PushRule{Ref: pr.Ref, Force: pr.Force, Delete: pr.Delete})
		}
		if g.TokenRef != "" {
			r.TokenEnv = g.TokenRef
			b.secret(c, env, g.TokenRef, fmt.Sprintf("token_ref of git remote %s: export the HTTPS token; only git-gate gets it", g.Name))
		}
		if g.SSHKey != "" {
			r.SSHKeyEnv = fmt.Sprint(manifest.SSHKeyEnvPrefix, i)
			if b.in.ReadFile == nil {
				b.unresolved("ssh_key "+sshKeyPath(g.SSHKey, b.in.ManifestPath), fmt.Sprintf("the SSH key of git remote %s: read when bottle starts", g.Name))
			} else if key, err := readSSHKey(b.in.ReadFile, b.in.ManifestPath, b.agent.Bottle, i, g); err != nil {
				return nil, err
			} else {
				env[r.SSHKeyEnv] = string(key)
				c.SecretEnv = append(c.SecretEnv, r.SSHKeyEnv)
			}
		}
		cfg.Remotes = append(cfg.Remotes, r)
	}
	mounts := ca
	if b.bottle.Supervise {
		cfg.RulesFile = path.Join(changesDir, supervise.GitRulesFile)
		mounts = append(mounts, b.changesMount())
	}
	mount, err := b.stageJSON("git-gate/config.json", "/etc/bottle/git-gate.json", cfg)
	if err != nil {
		return nil, err
	}
	c.Spec, err = b.sidecarSpec(names.RoleGitGate, []string{"/bottle", "sidecar", "git-gate", "--config", "/etc/bottle/git-gate.json"}, env,
		append([]specs.Mount{mount}, mounts...),
		// Port 80 (http://git-gate/NAME.git) needs this one capability, nothing else.
		oci.WithCapabilities([]string{"CAP_NET_BIND_SERVICE"}),
		oci.WithAmbientCapabilities([]string{"CAP_NET_BIND_SERVICE"}))
	c.Ready = b.readyFiles(names.RoleGitGate)
	return c, err
}

// HostFiles are the host files an agent's bottle names (each git remote's ssh_key), read
// once by ReadHostFiles; Read serves them to Build.
type HostFiles map[string][]byte

// Read returns a file ReadHostFiles read; any other path is an error.
func (f HostFiles) Read(path string) ([]byte, error) {
	data, ok := f[path]
	if !ok {
		return nil, fmt.Errorf("%s was not read before the start", path)
	}
	return data, nil
}

// ReadHostFiles reads the host files an agent's bottle names through read. start and
// resume call it before they create anything, so that a file it cannot read is refused
// before there is anything to take back, and hand the result to Build as its ReadFile.
func ReadHostFiles(m *manifest.Manifest, manifestPath, agent string, read func(string) ([]byte, error)) (HostFiles, error) {
	files := HostFiles{}
	a := m.Agents[agent]
	if a == nil || m.Bottles[a.Bottle] == nil {
		return files, nil // Build says what is wrong
	}
	for i, g := range m.Bottles[a.Bottle].Git {
		if g.SSHKey != "" {
			key, err := readSSHKey(read, manifestPath, a.Bottle, i, g)
			if err != nil {
				return nil, err
			}
			files[sshKeyPath(g.SSHKey, manifestPath)] = key
		}
	}
	return files, nil
}

// readSSHKey reads the ssh_key of the bottle's remote i; its error is a manifest error
// naming the field.
func readSSHKey(read func(string) ([]byte, error), manifestPath, bottle string, i int, g *manifest.GitRemote) ([]byte, error) {
	key, err := read(sshKeyPath(g.SSHKey, manifestPath))
	if err != nil {
		return nil, &manifest.Errors{List: []*manifest.FieldError{{
			File: manifestPath, Path: fmt.Sprintf("bottles.%s.git[%d].ssh_key", bottle, i),
			Problem: fmt.Sprintf("git remote %s: cannot read ssh_key: %v", g.Name, err),
			Fix:     "name the private key file (absolute, or relative to the manifest's directory) and run bottle as a user who can read it",
		}}}
	}
	return key, nil
}

// sshKeyPath is where a remote's ssh_key is on the host: a relative path is relative to
// the manifest's directory.
func sshKeyPath(key, manifestPath string) string {
	if path.IsAbs(key) || manifestPath == manifest.DefaultName {
		return key
	}
	return path.Join(path.Dir(manifestPath), key)
}
