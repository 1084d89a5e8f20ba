package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/testutil"
)

// k8sBinDir is where scripts/k8s-build.sh leaves the cluster's binaries by default.
const k8sBinDir = "/var/cache/bottle/k8s/v1.34.4/bin"

// apiServer is a private control plane (etcd + kube-apiserver on 127.0.0.1) started by
// scripts/k8s-cluster.sh for one test, and a client of it.
type apiServer struct {
	t          *testing.T
	kubeconfig string
	server     string
	token      string
	client     *http.Client
}

// startAPIServer starts the control plane; it is stopped (by pid) and removed when the
// test ends.
func startAPIServer(t *testing.T) *apiServer {
	t.Helper()
	bin := os.Getenv("BOTTLE_TEST_K8S_BIN")
	if bin == "" {
		bin = k8sBinDir
	}
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			testutil.Missing(t, "%s (scripts/k8s-build.sh builds it; scripts/test.sh runs that)", filepath.Join(bin, b))
		}
	}
	testutil.RequireBinary(t, "openssl")
	testutil.RequireBinary(t, "curl")
	dir, err := os.MkdirTemp("/var/tmp", "bottle-k8s.")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(dir); err != nil { // the script makes it, and marks it as its own
		t.Fatal(err)
	}
	script := func(cmd string) []byte {
		c := exec.Command("../scripts/k8s-cluster.sh", cmd, dir)
		c.Env = append(os.Environ(), "BOTTLE_K8S_BIN="+bin)
		var stderr bytes.Buffer
		c.Stderr = &stderr
		out, err := c.Output()
		if err != nil {
			t.Fatalf("k8s-cluster.sh %s: %v\n%s", cmd, err, stderr.String())
		}
		return out
	}
	t.Cleanup(func() { script("stop") })
	script("start")
	a := &apiServer{t: t, kubeconfig: filepath.Join(dir, "kubeconfig")}
	var caFile string
	f, err := os.Open(a.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(strings.TrimSpace(sc.Text()), ": ")
		switch k {
		case "server":
			a.server = v
		case "token":
			a.token = v
		case "certificate-authority":
			caFile = v
		}
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		t.Fatalf("no certificate in %s", caFile)
	}
	a.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	return a
}

// do sends a request with a JSON body to the API server and returns the status and body.
func (a *apiServer) do(method, path string, body []byte) (int, []byte) {
	a.t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, a.server+path, bytes.NewReader(body))
	if err != nil {
		a.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatal(err)
	}
	return resp.StatusCode, data
}

// collection is the API path of an object kind's collection in namespace ns.
func collection(kind, ns string) string {
	switch kind {
	case "NetworkPolicy":
		return "/apis/networking.k8s.io/v1/namespaces/" + ns + "/networkpolicies"
	case "RuntimeClass":
		return "/apis/node.k8s.io/v1/runtimeclasses"
	}
	return "/api/v1/namespaces/" + ns + "/" + strings.ToLower(kind) + "s"
}

// TestK8s runs bottle's Kubernetes commands against a real API server (no node: Pods
// stay pending).
func TestK8s(t *testing.T) {
	a := startAPIServer(t)
	// What the cluster's controllers and its admin would have made: the namespace's
	// default service account (admission looks it up even without a token) and the
	// gVisor RuntimeClass the agent names.
	for _, obj := range []struct{ kind, body string }{
		{"serviceaccount", `{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default"}}`},
		{"RuntimeClass", `{"apiVersion":"node.k8s.io/v1","kind":"RuntimeClass","metadata":{"name":"gvisor"},"handler":"runsc"}`},
	} {
		if code, body := a.do("POST", collection(obj.kind, "default"), []byte(obj.body)); code != http.StatusCreated && code != http.StatusConflict {
			t.Fatalf("create %s: %d %s", obj.kind, code, body)
		}
	}
	t.Run("ExportPassesStrictValidation", func(t *testing.T) { testK8sExportStrict(t, a) })
	t.Run("ApplyPsRm", func(t *testing.T) { testK8sApplyPsRm(t, a) })
}

// testK8sExportStrict: every object `bottle export` prints is accepted by the API
// server's strict validation (server-side dry run, fieldValidation=Strict: an unknown or
// duplicate field is an error), and the export holds no secret value.
func testK8sExportStrict(t *testing.T, a *apiServer) {
	const ns = "default"
	manifest, err := filepath.Abs("../internal/k8s/testdata/bottle.toml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	secrets := map[string]string{"MY_CLAUDE_OAUTH": "k8s-secret-oauth-1", "UPSTREAM_GIT_TOKEN": "k8s-secret-git-2", "GITHUB_USER": "k8s-secret-user-3", "TZ": "k8s-secret-tz-4"}
	cmd := exec.Command(bottleBin, "--address", filepath.Join(dir, "no-containerd.sock"), "export",
		"--manifest", manifest, "-o", "json", "--k8s-namespace", ns, "--sidecar-image", "registry.test/bottle/sidecar:1")
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range secrets {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bottle export: %v\n%s", err, stderr.String())
	}
	for k, v := range secrets {
		if bytes.Contains(out, []byte(v)) || strings.Contains(stderr.String(), v) {
			t.Errorf("the export holds the value of %s", k)
		}
	}
	var list struct {
		Items []json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("export is not JSON: %v", err)
	}
	kinds := map[string]int{}
	var agentPod []byte
	for _, item := range list.Items {
		var meta struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(item, &meta); err != nil {
			t.Fatal(err)
		}
		kinds[meta.Kind]++
		code, body := a.do("POST", collection(meta.Kind, ns)+"?dryRun=All&fieldValidation=Strict", item)
		if code != http.StatusCreated && code != http.StatusOK {
			t.Errorf("%s %s refused: %d %s", meta.Kind, meta.Metadata.Name, code, body)
		}
		if meta.Kind == "Pod" && strings.HasSuffix(meta.Metadata.Name, "-agent") {
			var compact bytes.Buffer
			if err := json.Compact(&compact, item); err != nil {
				t.Fatal(err)
			}
			agentPod = compact.Bytes()
		}
	}
	want := map[string]int{"Secret": 3, "ConfigMap": 4, "Service": 3, "NetworkPolicy": 5, "Pod": 4} // agent and three sidecars: the manifest has supervise = false
	for k, n := range want {
		if kinds[k] != n {
			t.Errorf("%d %s objects, want %d (all: %v)", kinds[k], k, n, kinds)
		}
	}
	if agentPod == nil {
		t.Fatal("no agent Pod in the export")
	}
	// The validation is strict: the same Pod with one unknown field is refused.
	bad := bytes.Replace(agentPod, []byte(`"spec":{`), []byte(`"spec":{"bottleUnknownField":true,`), 1)
	if bytes.Equal(bad, agentPod) {
		t.Fatal("could not add a field to the agent Pod")
	}
	if code, body := a.do("POST", collection("Pod", ns)+"?dryRun=All&fieldValidation=Strict", bad); code < 400 || !strings.Contains(string(body), "bottleUnknownField") {
		t.Errorf("a Pod with an unknown field: %d %s, want it refused", code, body)
	}
	// A dry run creates nothing.
	if code, body := a.do("GET", collection("Pod", ns), nil); code != http.StatusOK || strings.Contains(string(body), "bottle-coder") {
		t.Errorf("pods after the dry run: %d %s", code, body)
	}
	fmt.Fprintf(os.Stderr, "k8s: %d objects passed strict validation: %v\n", len(list.Items), kinds)
}

// testK8sApplyPsRm: `bottle k8s apply` creates the bottle's objects with the host's
// credential only in the Secret of the Pod that uses it and the agent's hostAliases
// naming the Services' cluster IPs; `ps` lists it; `rm` removes every object.
func testK8sApplyPsRm(t *testing.T, a *apiServer) {
	dir := t.TempDir()
	manifest := filepath.Join(dir, "bottle.toml")
	if err := os.WriteFile(manifest, []byte(`[agents.coder]
bottle = "b"
image = "bottle.local/agent:1"
command = ["/bin/sh", "-c", "sleep 3600"]
forward_env = ["GITHUB_USER"]

[bottles.b]
allowlist = ["upstream.test"]

[[bottles.b.egress_proxy.routes]]
host = "api.upstream.test"
token_ref = "ROUTE_TOKEN"

[[bottles.b.git]]
name = "origin"
url = "https://upstream.test/project.git"
token_ref = "GIT_TOKEN"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{"ROUTE_TOKEN": "k8s-apply-route-token", "GIT_TOKEN": "k8s-apply-git-token", "GITHUB_USER": "k8s-apply-user"}
	bottle := func(env map[string]string, args ...string) string {
		t.Helper()
		cmd := exec.Command(bottleBin, append([]string{"--address", filepath.Join(dir, "no-containerd.sock"), "k8s", "--kubeconfig", a.kubeconfig}, args...)...)
		cmd.Dir = dir
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		for k, v := range env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("bottle k8s %v: %v\n%s", args, err, stderr.String())
		}
		for k, v := range secrets {
			if strings.Contains(string(out)+stderr.String(), v) {
				t.Errorf("bottle k8s %v prints the value of %s", args, k)
			}
		}
		return string(out)
	}
	id := strings.TrimSpace(bottle(secrets, "apply", "--manifest", manifest, "--wait", "0", "coder"))
	if !strings.HasPrefix(id, "coder-") {
		t.Fatalf("apply printed %q, want the identity", id)
	}
	get := func(kind, name string) []byte {
		t.Helper()
		code, body := a.do("GET", collection(kind, "default")+"/"+name, nil)
		if code != http.StatusOK {
			t.Fatalf("get %s %s: %d %s", kind, name, code, body)
		}
		return body
	}
	agent := get("Pod", "bottle-"+id+"-agent")
	for k, v := range secrets {
		if bytes.Contains(agent, []byte(v)) {
			t.Errorf("the agent Pod holds the value of %s", k)
		}
	}
	var pod struct {
		Spec struct {
			HostAliases []struct {
				IP        string   `json:"ip"`
				Hostnames []string `json:"hostnames"`
			} `json:"hostAliases"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(agent, &pod); err != nil {
		t.Fatal(err)
	}
	aliases := map[string]string{}
	for _, h := range pod.Spec.HostAliases {
		for _, n := range h.Hostnames {
			aliases[n] = h.IP
		}
	}
	for _, role := range []string{"filter", "egress-proxy", "git-gate"} {
		var svc struct {
			Spec struct {
				ClusterIP string `json:"clusterIP"`
			} `json:"spec"`
		}
		if err := json.Unmarshal(get("Service", "bottle-"+id+"-"+role), &svc); err != nil {
			t.Fatal(err)
		}
		if svc.Spec.ClusterIP == "" || aliases[role] != svc.Spec.ClusterIP {
			t.Errorf("the agent resolves %s to %q, its Service has %q", role, aliases[role], svc.Spec.ClusterIP)
		}
	}
	var secret struct {
		Data map[string][]byte `json:"data"`
	}
	if err := json.Unmarshal(get("Secret", "bottle-"+id+"-egress-proxy"), &secret); err != nil {
		t.Fatal(err)
	}
	if string(secret.Data["ROUTE_TOKEN"]) != secrets["ROUTE_TOKEN"] || len(secret.Data) != 1 {
		t.Errorf("the egress-proxy's Secret holds %d keys, not the route token alone", len(secret.Data))
	}

	ps := bottle(nil, "ps")
	for _, role := range []string{"agent", "filter", "egress-proxy", "git-gate"} {
		if !strings.Contains(ps, "bottle-"+id+"-"+role) {
			t.Errorf("k8s ps does not list the %s Pod:\n%s", role, ps)
		}
	}

	bottle(nil, "rm", id)
	for _, kind := range []string{"Pod", "Service", "Secret", "ConfigMap", "NetworkPolicy"} {
		code, body := a.do("GET", collection(kind, "default")+"?labelSelector=bottle.identity%3D"+id, nil)
		var list struct {
			Items []json.RawMessage `json:"items"`
		}
		if err := json.Unmarshal(body, &list); code != http.StatusOK || err != nil {
			t.Fatalf("list %s: %d %s", kind, code, body)
		}
		// A Pod with no node is deleted at once (nothing has to stop it).
		if len(list.Items) != 0 {
			t.Errorf("%d %s objects of %s left after k8s rm", len(list.Items), kind, id)
		}
	}
}
