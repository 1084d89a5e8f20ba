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
	"syscall"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/ctr"
	"github.com/bottle-dev/bottle/internal/ociarchive"
	"github.com/bottle-dev/bottle/internal/testutil"
)

// k8sBinDir is where scripts/k8s-build.sh leaves the cluster's binaries by default.
const k8sBinDir = "/var/cache/bottle/k8s/v1.34.4/bin"

// apiServer is a private one-node cluster (control plane on 127.0.0.1, a kubelet node
// on its own containerd with gVisor, kube-proxy and kube-network-policies) started by
// scripts/k8s-cluster.sh for one test, and a client of its API server.
type apiServer struct {
	kubeconfig string
	server     string
	token      string
	client     *http.Client
	// containerd is the node containerd's socket (images go into its k8s.io namespace).
	containerd string
}

// startAPIServer starts the cluster; it is stopped (by pid) and removed when the test
// ends.
func startAPIServer(t *testing.T) *apiServer {
	t.Helper()
	testutil.RequireRoot(t)
	bin := os.Getenv("BOTTLE_TEST_K8S_BIN")
	if bin == "" {
		bin = k8sBinDir
	}
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kube-network-policies-xtq"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			testutil.Missing(t, "%s (scripts/k8s-build.sh builds it; scripts/test.sh runs that)", filepath.Join(bin, b))
		}
	}
	for _, b := range []string{"openssl", "curl", "containerd", "ctr", "runsc", "nft", "perl"} {
		testutil.RequireBinary(t, b)
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		testutil.Missing(t, "/bin/busybox (Debian busybox-static)")
	}
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
	t.Cleanup(func() {
		if t.Failed() {
			// The logs go with the cluster's dir: show their ends first.
			logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
			for _, l := range logs {
				data, _ := os.ReadFile(l)
				lines := strings.Split(strings.TrimSpace(string(data)), "\n")
				t.Logf("--- %s (last lines)\n%s", filepath.Base(l), strings.Join(lines[max(0, len(lines)-15):], "\n"))
			}
		}
		script("stop")
	})
	script("start")
	a := &apiServer{kubeconfig: filepath.Join(dir, "kubeconfig"), containerd: filepath.Join(dir, "containerd.sock")}
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

// do sends a request with a JSON body to the API server and returns the status and body;
// a request that gets no answer is status 0 with the error as its body (subtests call it:
// it must not end the parent test).
func (a *apiServer) do(method, path string, body []byte) (int, []byte) {
	req, err := http.NewRequestWithContext(context.Background(), method, a.server+path, bytes.NewReader(body))
	if err != nil {
		return 0, []byte(err.Error())
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, []byte(err.Error())
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
	case "Sandbox":
		return "/apis/agents.x-k8s.io/v1alpha1/namespaces/" + ns + "/sandboxes"
	}
	return "/api/v1/namespaces/" + ns + "/" + strings.ToLower(kind) + "s"
}

// exportObject is one object of an `export -o json` List.
type exportObject struct {
	Kind, Name string
	JSON       []byte
}

// exportObjects are the objects of an `export -o json` List, by kind.
func exportObjects(t *testing.T, out []byte) ([]exportObject, map[string]int) {
	t.Helper()
	var list struct {
		Items []json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("export is not JSON: %v", err)
	}
	var objs []exportObject
	kinds := map[string]int{}
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
		objs = append(objs, exportObject{meta.Kind, meta.Metadata.Name, item})
	}
	return objs, kinds
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
	t.Run("PodRunsUnderGVisor", func(t *testing.T) { testK8sGVisorPod(t, a) })
	t.Run("ExportPassesStrictValidation", func(t *testing.T) { testK8sExportStrict(t, a) })
	t.Run("ApplyPsRm", func(t *testing.T) { testK8sApplyPsRm(t, a) })
	t.Run("AgentSandbox", func(t *testing.T) { testK8sAgentSandbox(t, a) })
	t.Run("AgentThroughFilter", func(t *testing.T) { testK8sAgentThroughFilter(t, a) })
	t.Run("Doctor", func(t *testing.T) { testK8sDoctor(t, a) })
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
	objs, kinds := exportObjects(t, out)
	var agentPod []byte
	for _, o := range objs {
		code, body := a.do("POST", collection(o.Kind, ns)+"?dryRun=All&fieldValidation=Strict", o.JSON)
		if code != http.StatusCreated && code != http.StatusOK {
			t.Errorf("%s %s refused: %d %s", o.Kind, o.Name, code, body)
		}
		if o.Kind == "Pod" && strings.HasSuffix(o.Name, "-agent") {
			var compact bytes.Buffer
			if err := json.Compact(&compact, o.JSON); err != nil {
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
	fmt.Fprintf(os.Stderr, "k8s: %d objects passed strict validation: %v\n", len(objs), kinds)
}

// testK8sApplyPsRm: `bottle k8s apply` creates the bottle's objects with the host's
// credential only in the Secret of the Pod that uses it and the agent's hostAliases
// naming the Services' cluster IPs; `ps` lists it; `rm` removes every object.
func testK8sApplyPsRm(t *testing.T, a *apiServer) {
	dir := t.TempDir()
	manifest := filepath.Join(dir, "bottle.toml")
	// Only images the node has: it pulls from no registry.
	a.importNodeImage(t)
	a.importSidecarImage(t)
	if err := os.WriteFile(manifest, []byte(`[agents.coder]
bottle = "b"
image = "`+testImage+`"
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
	id := strings.TrimSpace(bottle(secrets, "apply", "--manifest", manifest, "--sidecar-image", k8sSidecarImage, "--wait", "0", "coder"))
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
	// The node stops the Pods first; they are gone once it has.
	deadline := time.Now().Add(60 * time.Second)
	for _, kind := range []string{"Pod", "Service", "Secret", "ConfigMap", "NetworkPolicy"} {
		for {
			code, body := a.do("GET", collection(kind, "default")+"?labelSelector=bottle.identity%3D"+id, nil)
			var list struct {
				Items []json.RawMessage `json:"items"`
			}
			if err := json.Unmarshal(body, &list); code != http.StatusOK || err != nil {
				t.Fatalf("list %s: %d %s", kind, code, body)
			}
			if len(list.Items) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%d %s objects of %s left after k8s rm", len(list.Items), kind, id)
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}

// importNodeImage puts the busybox test image into the node containerd's k8s.io
// namespace, where the kubelet's CRI finds it (there is no registry).
func (a *apiServer) importNodeImage(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	c, err := ctr.Connect(ctx, a.containerd, "k8s.io")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	img := ociarchive.BusyboxImage(testImage, "/bin/busybox")
	img.Entries = append(img.Entries, ociarchive.Entry{Path: "/usr/local/bin/probe", Type: ociarchive.File, Mode: 0o755, Source: probeBin})
	if err := c.ImportImage(ctx, img, nil); err != nil {
		t.Fatalf("import the test image into the node: %v", err)
	}
}

// podStatus is what the tests read of a Pod.
type podStatus struct {
	Status struct {
		Phase      string `json:"phase"`
		PodIP      string `json:"podIP"`
		Conditions []struct {
			Type   string `json:"type"`
			Status string `json:"status"`
		} `json:"conditions"`
	} `json:"status"`
}

// waitPod waits (90 s) until Pod name in ns is in one of phases, or Ready when phases
// holds "Ready".
func (a *apiServer) waitPod(t *testing.T, ns, name string, phases ...string) podStatus {
	t.Helper()
	var p podStatus
	deadline := time.Now().Add(90 * time.Second)
	for {
		code, body := a.do("GET", collection("Pod", ns)+"/"+name, nil)
		if code == http.StatusOK {
			if err := json.Unmarshal(body, &p); err != nil {
				t.Fatal(err)
			}
			for _, ph := range phases {
				if p.Status.Phase == ph {
					return p
				}
				for _, c := range p.Status.Conditions {
					if ph == "Ready" && c.Type == "Ready" && c.Status == "True" {
						return p
					}
				}
			}
		}
		if time.Now().After(deadline) {
			_, events := a.do("GET", "/api/v1/namespaces/"+ns+"/events", nil)
			t.Fatalf("Pod %s not %v within 90 s: %d %s\nevents: %s", name, phases, code, body, events)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// podLog is a Pod's log, through the API server and the kubelet.
func (a *apiServer) podLog(t *testing.T, ns, name string) string {
	t.Helper()
	code, body := a.do("GET", collection("Pod", ns)+"/"+name+"/log", nil)
	if code != http.StatusOK {
		t.Fatalf("log of %s: %d %s", name, code, body)
	}
	return string(body)
}

// testK8sGVisorPod: the node runs a Pod of RuntimeClass gvisor under gVisor (its kernel
// log is gVisor's) and a Pod without it under runc (the host's).
func testK8sGVisorPod(t *testing.T, a *apiServer) {
	a.importNodeImage(t)
	for _, c := range []struct {
		name, class string
		gvisor      bool
	}{{"gvisor-check", `"runtimeClassName":"gvisor",`, true}, {"runc-check", "", false}} {
		pod := fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":%q},"spec":{%s"restartPolicy":"Never","automountServiceAccountToken":false,
"containers":[{"name":"c","image":%q,"command":["/bin/sh","-c","dmesg 2>&1 | head -3; cat /proc/version"]}]}}`, c.name, c.class, testImage)
		if code, body := a.do("POST", collection("Pod", "default"), []byte(pod)); code != http.StatusCreated {
			t.Fatalf("create Pod %s: %d %s", c.name, code, body)
		}
		a.waitPod(t, "default", c.name, "Succeeded", "Failed")
		log := a.podLog(t, "default", c.name)
		if strings.Contains(log, "gVisor") != c.gvisor {
			t.Errorf("Pod %s (gVisor: %t) logged:\n%s", c.name, c.gvisor, log)
		}
		a.do("DELETE", collection("Pod", "default")+"/"+c.name+"?gracePeriodSeconds=0", nil)
	}
}

// k8sSidecarImage is the ref the tests give bottle's sidecar image on the node.
const k8sSidecarImage = "bottle.test/sidecar:e2e"

// importSidecarImage writes bottle's sidecar image with `bottle image export` (the OCI
// archive a user pushes to a registry) and imports it into the node's containerd.
func (a *apiServer) importSidecarImage(t *testing.T) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "sidecar.tar")
	if out, err := exec.Command(bottleBin, "image", "export", "--ref", k8sSidecarImage, file).CombinedOutput(); err != nil {
		t.Fatalf("bottle image export: %v: %s", err, out)
	}
	if out, err := exec.Command("ctr", "--address", a.containerd, "-n", "k8s.io", "images", "import", file).CombinedOutput(); err != nil {
		t.Fatalf("import the sidecar image into the node: %v: %s", err, out)
	}
}

// testK8sAgentThroughFilter: `bottle k8s apply` of the busybox agent with an allowlist
// and a route, on the node: from the agent Pod (under gVisor), the allowlisted upstream
// answers through the filter, a denied name and direct connections fail, and the route
// injects the real token, which is in no field of the agent Pod and in no exported text.
func testK8sAgentThroughFilter(t *testing.T, a *apiServer) {
	up := newK8sUpstream(t, "api.allowed.test", "api.route.test", "api.denied.test")
	a.importNodeImage(t)
	a.importSidecarImage(t)
	dir := t.TempDir()
	upIP := upstreamAddr.Addr().String()
	// The agent waits (up to 30 s) for kube-network-policies to learn its IP (it has no
	// NRI hook on this node: a new Pod's first packets can pass before), then prints what
	// it sees.
	script := strings.Join([]string{
		"i=0; while [ $i -lt 30 ] && /usr/local/bin/probe tcp " + upIP + ":80 | grep -q REACHED; do i=$((i+1)); sleep 1; done",
		"echo WAITED $i",
		"echo DMESG $(/bin/busybox dmesg | grep -c gVisor)",
		"echo ALLOWED $(/usr/local/bin/probe get http://filter:8888 http://api.allowed.test/hello)",
		"echo DENIED $(/usr/local/bin/probe get http://filter:8888 http://api.denied.test/hello)",
		"echo ROUTE $(/usr/local/bin/probe post http://egress-proxy:9000/api.route.test/v1/messages)",
		"echo DIRECT80 $(/usr/local/bin/probe tcp " + upIP + ":80)",
		"echo DIRECT443 $(/usr/local/bin/probe tcp " + upIP + ":443)",
		"echo DONE",
		"sleep 3600",
	}, "; ")
	manifest := filepath.Join(dir, "bottle.toml")
	if err := os.WriteFile(manifest, fmt.Appendf(nil, `[agents.k8s]
bottle = "b"
image = %q
command = ["/bin/sh", "-c", %q]

[bottles.b]
filter = "builtin"
allowlist = ["api.allowed.test"]

[[bottles.b.egress_proxy.routes]]
host = "api.route.test"
token_ref = "K8S_ROUTE_TOKEN"
`, testImage, script), 0o644); err != nil {
		t.Fatal(err)
	}
	token := fmt.Sprintf("sk-k8s-real-%d-%d", time.Now().UnixNano(), os.Getpid())
	flags := []string{"--manifest", manifest, "--sidecar-image", k8sSidecarImage, "--ca-file", up.caFile,
		"--add-host", "api.allowed.test:" + upIP, "--add-host", "api.denied.test:" + upIP, "--add-host", "api.route.test:" + upIP}
	bottle := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bottleBin, append([]string{"--address", filepath.Join(dir, "no-containerd.sock")}, args...)...)
		cmd.Dir = dir
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "K8S_ROUTE_TOKEN=" + token}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("bottle %v: %v\n%s", args, err, stderr.String())
		}
		if strings.Contains(string(out)+stderr.String(), token) {
			t.Errorf("bottle %v prints the token", args)
		}
		return string(out)
	}
	// No exported text holds the token, in either format.
	for _, format := range []string{"yaml", "json"} {
		bottle(append([]string{"export", "-o", format}, append(flags, "k8s")...)...)
	}
	id := strings.TrimSpace(bottle(append([]string{"k8s", "--kubeconfig", a.kubeconfig, "apply"}, append(flags, "k8s")...)...))
	t.Cleanup(func() { bottle("k8s", "--kubeconfig", a.kubeconfig, "rm", id) })
	agent := "bottle-" + id + "-agent"
	a.waitPod(t, "default", agent, "Running", "Succeeded", "Failed")
	var log string
	for deadline := time.Now().Add(60 * time.Second); ; {
		log = bottle("k8s", "--kubeconfig", a.kubeconfig, "logs", id)
		if strings.Contains(log, "DONE") || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	t.Logf("agent log:\n%s", log)
	expect := func(label, prefix, what string) { t.Helper(); expectPrefix(t, lineOf(log, label), prefix, what) }
	if n := lineOf(log, "DMESG"); n == "" || n == "0" {
		t.Errorf("the agent's kernel log does not name gVisor (%q): it does not run under gVisor", n)
	}
	expect("ALLOWED", "STATUS 200 UPSTREAM-OK host=api.allowed.test", "allowlisted host through the filter")
	expect("DENIED", "STATUS 403", "a name off the allowlist through the filter")
	expect("ROUTE", "STATUS 200 UPSTREAM-OK", "the route through the egress-proxy")
	expect("DIRECT80", "BLOCKED", "a direct connection to the upstream (80)")
	expect("DIRECT443", "BLOCKED", "a direct connection to the upstream (443)")
	// Control: a Pod no policy selects reaches the upstream the same way, so the agent's
	// BLOCKED is its NetworkPolicy, not the route.
	control := fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"upstream-control"},"spec":{"runtimeClassName":"gvisor","restartPolicy":"Never","automountServiceAccountToken":false,
"containers":[{"name":"c","image":%q,"command":["/bin/sh","-c","echo DIRECT80 $(/usr/local/bin/probe tcp %s:80); sleep 3600"]}]}}`, testImage, upIP)
	if code, body := a.do("POST", collection("Pod", "default"), []byte(control)); code != http.StatusCreated {
		t.Fatalf("create the control Pod: %d %s", code, body)
	}
	t.Cleanup(func() { a.do("DELETE", collection("Pod", "default")+"/upstream-control?gracePeriodSeconds=0", nil) })
	a.waitPod(t, "default", "upstream-control", "Running")
	var controlLog string
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(controlLog, "DIRECT80") && time.Now().Before(deadline); time.Sleep(time.Second) {
		controlLog = a.podLog(t, "default", "upstream-control")
	}
	expectPrefix(t, lineOf(controlLog, "DIRECT80"), "REACHED", "a Pod without policies to the upstream (control)")

	var auth []string
	for _, h := range up.headers() {
		if v := h.Get("Authorization"); v != "" {
			auth = append(auth, v)
		}
	}
	if len(auth) != 1 || auth[0] != "Bearer "+token {
		t.Errorf("the upstream saw Authorization %q, want the real token once", auth)
	}
	// The token is in no field of the agent Pod (spec, status, annotations, env).
	code, pod := a.do("GET", collection("Pod", "default")+"/"+agent, nil)
	if code != http.StatusOK {
		t.Fatalf("get %s: %d %s", agent, code, pod)
	}
	if bytes.Contains(pod, []byte(token)) {
		t.Errorf("the agent Pod holds the token:\n%s", pod)
	}
	if !bytes.Contains(pod, []byte(`"runtimeClassName": "gvisor"`)) && !bytes.Contains(pod, []byte(`"runtimeClassName":"gvisor"`)) {
		t.Errorf("the agent Pod does not name RuntimeClass gvisor")
	}
}

// testK8sDoctor: `bottle k8s doctor` passes on the test cluster (the RuntimeClass, the
// sidecar image on the node, and NetworkPolicy enforced: a denied probe Pod cannot reach
// the canary Service, an allowed one can) and removes what it made; it fails on a missing
// RuntimeClass, and on NetworkPolicy once the node's enforcer is stopped (so its
// policy check is live, not a formality). It stops kube-network-policies: run it last.
func testK8sDoctor(t *testing.T, a *apiServer) {
	a.importSidecarImage(t)
	doctor := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(bottleBin, append([]string{"k8s", "--kubeconfig", a.kubeconfig, "doctor", "--sidecar-image", k8sSidecarImage, "--timeout", "90s"}, args...)...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		t.Logf("bottle k8s doctor %v: exit %d\n%s", args, code, out)
		return string(out), code
	}
	leftovers := func() {
		t.Helper()
		for _, kind := range []string{"Pod", "Service", "NetworkPolicy"} {
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
				_, body := a.do("GET", collection(kind, "default")+"?labelSelector=bottle.doctor", nil)
				if !strings.Contains(string(body), "bottle-doctor-") {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("doctor left %s objects: %s", kind, body)
					break
				}
			}
		}
	}
	out, code := doctor()
	if code != 0 {
		t.Errorf("doctor failed on the test cluster: exit %d", code)
	}
	for _, check := range []string{"runtimeclass", "sidecar-image", "networkpolicy"} {
		if !strings.Contains(out, "ok   "+check) {
			t.Errorf("doctor does not pass %s", check)
		}
	}
	leftovers()

	if out, code := doctor("--runtime-class", "no-such-class"); code != 1 || !strings.Contains(out, "FAIL runtimeclass") {
		t.Errorf("doctor with a missing RuntimeClass: exit %d, want 1 and a FAIL of runtimeclass", code)
	}
	leftovers()

	// Without the enforcer, the policy check must fail.
	pidFile := filepath.Join(filepath.Dir(a.kubeconfig), "kube-network-policies.pid")
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(string(data), &pid); err != nil {
		t.Fatal(err)
	}
	proc, err := os.FindProcess(pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("stop kube-network-policies (pid %d): %v", pid, err)
	}
	for deadline := time.Now().Add(15 * time.Second); proc.Signal(syscall.Signal(0)) == nil && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
	}
	if out, code := doctor(); code != 1 || !strings.Contains(out, "FAIL networkpolicy") || !strings.Contains(out, "NOT enforced") {
		t.Errorf("doctor without a NetworkPolicy enforcer: exit %d, want 1 and networkpolicy NOT enforced", code)
	}
	leftovers()
}
