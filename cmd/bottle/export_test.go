package main

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExportPrintsNoSecret: with every secret the manifest names set on the host (and
// an SSH key file readable), `bottle export` prints none of them, in either format, and
// the objects name each secret only as a Secret key.
func TestExportPrintsNoSecret(t *testing.T) {
	dir := t.TempDir()
	const key = "SECRET-SSH-KEY-MATERIAL"
	keyFile := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(keyFile, []byte("-----BEGIN OPENSSH PRIVATE KEY-----\n"+key+"\n-----END OPENSSH PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(dir, "bottle.toml")
	if err := os.WriteFile(manifest, []byte(`[agents.coder]
bottle = "b"
image = "bottle.local/agent:1"
command = ["/bin/sh"]
forward_env = ["GITHUB_USER"]

[bottles.b]
allowlist = ["example.com"]

[[bottles.b.egress_proxy.routes]]
host = "api.example.com"
token_ref = "ROUTE_TOKEN"

[[bottles.b.git]]
name = "origin"
url = "git@example.com:me/project.git"
ssh_key = "`+keyFile+`"
known_hosts = "example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"

[[bottles.b.git]]
name = "upstream"
url = "https://example.com/upstream.git"
token_ref = "GIT_TOKEN"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{"ROUTE_TOKEN": "route-secret-1", "GIT_TOKEN": "git-secret-2", "GITHUB_USER": "forwarded-secret-3"}
	var env []string
	for k, v := range secrets {
		env = append(env, k+"="+v)
	}
	noContainerd := []string{"--address", filepath.Join(dir, "no-containerd.sock")}
	for _, format := range []string{"yaml", "json"} {
		out, errOut, code := run(t, dir, env, append(noContainerd, "export", "--manifest", manifest, "-o", format, "--k8s-namespace", "agents")...)
		if code != 0 {
			t.Fatalf("export -o %s: exit %d: %s", format, code, errOut)
		}
		for k, v := range secrets {
			if strings.Contains(out+errOut, v) {
				t.Errorf("export -o %s prints the value of %s", format, k)
			}
			if !strings.Contains(out, k) {
				t.Errorf("export -o %s does not name %s (a Secret key)", format, k)
			}
		}
		if strings.Contains(out+errOut, key) {
			t.Errorf("export -o %s prints the SSH key", format)
		}
		if format == "json" {
			var list struct {
				Kind  string `json:"kind"`
				Items []struct {
					Kind     string `json:"kind"`
					Metadata struct {
						Namespace string `json:"namespace"`
					} `json:"metadata"`
				} `json:"items"`
			}
			if err := json.Unmarshal([]byte(out), &list); err != nil {
				t.Fatalf("export -o json is not JSON: %v", err)
			}
			kinds := map[string]int{}
			for _, it := range list.Items {
				kinds[it.Kind]++
				if it.Metadata.Namespace != "agents" {
					t.Errorf("%s in namespace %q", it.Kind, it.Metadata.Namespace)
				}
			}
			// agent, filter, egress-proxy, git-gate; Secrets of the three that hold one.
			if list.Kind != "List" || kinds["Pod"] != 4 || kinds["Service"] != 3 || kinds["Secret"] != 3 || kinds["NetworkPolicy"] != 5 {
				t.Errorf("export kinds %v", kinds)
			}
		}
	}
	// Export reads no host secret: with none set and the SSH key gone, the objects are
	// the same, every Secret key still named.
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := run(t, dir, nil, append(noContainerd, "export", "--manifest", manifest)...)
	if code != 0 {
		t.Fatalf("export without host secrets: exit %d: %s", code, errOut)
	}
	for _, k := range []string{"ROUTE_TOKEN", "GIT_TOKEN", "GITHUB_USER", "BOTTLE_GIT_SSH_KEY_0"} {
		if !strings.Contains(out, "key: "+k) {
			t.Errorf("export without host secrets does not refer to %s", k)
		}
	}
	if _, errOut, code := run(t, dir, nil, append(noContainerd, "export", "--manifest", manifest, "-o", "toml")...); code != 2 || !strings.Contains(errOut, "toml") {
		t.Errorf("export -o toml: exit %d: %s", code, errOut)
	}
	// --format agent-sandbox: the agent Pod becomes a Sandbox, the rest stays; the Sandbox
	// holds no secret value either.
	out, errOut, code = run(t, dir, env, append(noContainerd, "export", "--manifest", manifest, "-o", "json", "--format", "agent-sandbox")...)
	if code != 0 {
		t.Fatalf("export --format agent-sandbox: exit %d: %s", code, errOut)
	}
	for k, v := range secrets {
		if strings.Contains(out+errOut, v) {
			t.Errorf("export --format agent-sandbox prints the value of %s", k)
		}
	}
	var list struct {
		Items []struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("export --format agent-sandbox is not JSON: %v", err)
	}
	kinds := map[string]int{}
	for _, it := range list.Items {
		kinds[it.APIVersion+" "+it.Kind]++
	}
	if kinds["agents.x-k8s.io/v1alpha1 Sandbox"] != 1 || kinds["v1 Pod"] != 3 || kinds["v1 Service"] != 3 || kinds["networking.k8s.io/v1 NetworkPolicy"] != 5 {
		t.Errorf("export --format agent-sandbox kinds %v", kinds)
	}
	if _, errOut, code := run(t, dir, nil, append(noContainerd, "export", "--manifest", manifest, "--format", "deployment")...); code != 2 || !strings.Contains(errOut, "deployment") {
		t.Errorf("export --format deployment: exit %d: %s", code, errOut)
	}
}

// TestImageExportWritesSidecarArchive: the archive is an OCI layout holding this
// executable at /bottle, under the ref asked for.
func TestImageExportWritesSidecarArchive(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "sidecar.tar")
	if _, errOut, code := run(t, dir, nil, "image", "export", "--ref", "registry.test/bottle/sidecar:1", file); code != 0 {
		t.Fatalf("image export: exit %d: %s", code, errOut)
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	seen := map[string]bool{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seen[h.Name] = true
		if h.Name == "index.json" {
			data, _ := io.ReadAll(tr)
			if !strings.Contains(string(data), "registry.test/bottle/sidecar:1") {
				t.Errorf("index.json does not name the ref: %s", data)
			}
		}
	}
	if !seen["index.json"] || !seen["oci-layout"] {
		t.Errorf("not an OCI layout: %v", seen)
	}
	if _, _, code := run(t, dir, nil, "image", "export"); code != 2 {
		t.Errorf("image export without FILE: exit %d, want 2", code)
	}
}
