package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// crdSchemaDepth bounds the inlining of $refs: PodSpec nests about a dozen deep; a
// recursive type would otherwise never end.
const crdSchemaDepth = 40

// crdFormats are the formats a CRD schema keeps (others are dropped: they say nothing a
// CRD validates).
var crdFormats = []string{"int32", "int64", "float", "double", "byte", "date-time"}

// crdSchema makes the API server's OpenAPI v3 schema node (of components schemas) a
// structural CRD schema: $refs inlined, a value of several types (IntOrString, Quantity)
// as x-kubernetes-int-or-string, only the keywords and extensions a CRD accepts (no
// descriptions: they would make the CRD too large for etcd), scalar defaults kept (a
// list map's keys need them) where their enum allows them, and a list map whose keys are neither required nor
// defaulted made a plain list. stack holds the names being inlined (recursion guard).
func crdSchema(schemas map[string]map[string]any, node map[string]any, stack []string) (map[string]any, error) {
	if len(stack) > crdSchemaDepth {
		return nil, fmt.Errorf("schema deeper than %d: %v", crdSchemaDepth, stack)
	}
	ref, _ := node["$ref"].(string)
	if all, ok := node["allOf"].([]any); ok && len(all) == 1 {
		if m, ok := all[0].(map[string]any); ok {
			ref, _ = m["$ref"].(string)
		}
	}
	if ref != "" {
		name := strings.TrimPrefix(ref, "#/components/schemas/")
		if slices.Contains(stack, name) {
			return nil, fmt.Errorf("recursive schema %s (via %v)", name, stack)
		}
		target, ok := schemas[name]
		if !ok {
			return nil, fmt.Errorf("no schema %s", name)
		}
		return crdSchema(schemas, target, append(stack, name))
	}
	if _, ok := node["oneOf"]; ok {
		return map[string]any{"x-kubernetes-int-or-string": true}, nil
	}
	out := map[string]any{}
	for _, k := range []string{"type", "enum", "required", "minimum", "maximum", "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type"} {
		if v, ok := node[k]; ok {
			out[k] = v
		}
	}
	if f, ok := node["format"].(string); ok && slices.Contains(crdFormats, f) {
		out["format"] = f
	}
	switch d := node["default"].(type) {
	case string, float64, bool:
		// A CRD refuses a default outside its enum (the API server's "" of an enum: Go's
		// zero value, which its own types take as unset).
		if enum, ok := node["enum"].([]any); !ok || slices.Contains(enum, any(d)) {
			out["default"] = d
		}
	}
	if props, ok := node["properties"].(map[string]any); ok {
		conv := map[string]any{}
		for k, v := range props {
			m, ok := v.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("property %s: not a schema", k)
			}
			c, err := crdSchema(schemas, m, stack)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			conv[k] = c
		}
		out["properties"] = conv
		out["type"] = "object"
	}
	for _, k := range []string{"items", "additionalProperties"} {
		if m, ok := node[k].(map[string]any); ok {
			c, err := crdSchema(schemas, m, stack)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			out[k] = c
		}
	}
	if _, ok := out["type"]; !ok {
		// An untyped value (none in PodSpec today): kept as it comes.
		out["type"] = "object"
		out["x-kubernetes-preserve-unknown-fields"] = true
	}
	if out["x-kubernetes-list-type"] == "map" {
		item, _ := out["items"].(map[string]any)
		props, _ := item["properties"].(map[string]any)
		required, _ := item["required"].([]any)
		keys, _ := out["x-kubernetes-list-map-keys"].([]any)
		for _, k := range keys {
			p, _ := props[k.(string)].(map[string]any)
			if _, def := p["default"]; !def && !slices.Contains(required, k) {
				delete(out, "x-kubernetes-list-type")
				delete(out, "x-kubernetes-list-map-keys")
				break
			}
		}
	}
	return out, nil
}

// sandboxCRD is a CustomResourceDefinition of agent-sandbox's Sandbox
// (agents.x-k8s.io/v1alpha1, after its API reference) whose Pod template spec is the
// real PodSpec schema of the API server's OpenAPI v3 document openapi (/openapi/v3/api/v1).
// Only what an export fills is checked as upstream does; volumeClaimTemplates and status
// are kept as they come.
func sandboxCRD(openapi []byte) ([]byte, error) {
	var doc struct {
		Components struct {
			Schemas map[string]map[string]any `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openapi, &doc); err != nil {
		return nil, fmt.Errorf("openapi v3 api/v1: %w", err)
	}
	podSpec, ok := doc.Components.Schemas["io.k8s.api.core.v1.PodSpec"]
	if !ok {
		return nil, fmt.Errorf("openapi v3 api/v1 has no PodSpec")
	}
	spec, err := crdSchema(doc.Components.Schemas, podSpec, []string{"io.k8s.api.core.v1.PodSpec"})
	if err != nil {
		return nil, fmt.Errorf("PodSpec: %w", err)
	}
	str := map[string]any{"type": "string"}
	strMap := map[string]any{"type": "object", "additionalProperties": str}
	preserve := map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}
	schema := map[string]any{
		"type": "object",
		"properties": map[string]any{
			"apiVersion": str, "kind": str, "metadata": map[string]any{"type": "object"},
			"spec": map[string]any{
				"type": "object", "required": []string{"podTemplate"},
				"properties": map[string]any{
					"podTemplate": map[string]any{
						"type": "object", "required": []string{"spec"},
						"properties": map[string]any{
							"metadata": map[string]any{"type": "object", "properties": map[string]any{"labels": strMap, "annotations": strMap}},
							"spec":     spec,
						},
					},
					"volumeClaimTemplates": map[string]any{"type": "array", "items": preserve},
					"shutdownTime":         map[string]any{"type": "string", "format": "date-time"},
					"shutdownPolicy":       map[string]any{"type": "string", "enum": []string{"Delete", "Retain"}},
					"replicas":             map[string]any{"type": "integer", "format": "int32", "minimum": 0, "maximum": 1},
				},
			},
			"status": preserve,
		},
	}
	return json.Marshal(map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": "sandboxes.agents.x-k8s.io"},
		"spec": map[string]any{
			"group": "agents.x-k8s.io", "scope": "Namespaced",
			"names": map[string]any{"plural": "sandboxes", "singular": "sandbox", "kind": "Sandbox", "listKind": "SandboxList"},
			"versions": []any{map[string]any{
				"name": "v1alpha1", "served": true, "storage": true,
				"schema":       map[string]any{"openAPIV3Schema": schema},
				"subresources": map[string]any{"status": map[string]any{}},
			}},
		},
	})
}

// testK8sAgentSandbox: with --format agent-sandbox, `bottle k8s apply` on a cluster
// without agent-sandbox refuses and creates nothing; with a Sandbox CRD whose Pod
// template is the API server's own PodSpec schema installed, the exported Sandbox passes
// strict validation (and one with an unknown field inside its Pod spec does not), apply
// creates it (no controller here: it never becomes a Pod), ps lists it and rm removes it.
func testK8sAgentSandbox(t *testing.T, a *apiServer) {
	const ns = "default"
	dir := t.TempDir()
	bottle := func(args ...string) (string, error) {
		cmd := exec.Command(bottleBin, append([]string{"--address", filepath.Join(dir, "no-containerd.sock")}, args...)...)
		cmd.Dir = dir
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return string(out), fmt.Errorf("bottle %v: %w\n%s", args, err, stderr.String())
		}
		return string(out), nil
	}
	manifest := filepath.Join(dir, "bottle.toml")
	if err := os.WriteFile(manifest, []byte(`[agents.coder]
bottle = "b"
image = "`+testImage+`"
command = ["/bin/sh", "-c", "sleep 3600"]

[bottles.b]
allowlist = ["upstream.test"]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	apply := []string{"k8s", "--kubeconfig", a.kubeconfig, "apply", "--manifest", manifest, "--sidecar-image", k8sSidecarImage, "--wait", "0", "--format", "agent-sandbox", "coder"}
	left := func(kind string) int {
		t.Helper()
		code, body := a.do("GET", collection(kind, ns)+"?labelSelector=bottle.identity", nil)
		var list struct {
			Items []json.RawMessage `json:"items"`
		}
		if err := json.Unmarshal(body, &list); code != http.StatusOK || err != nil {
			t.Fatalf("list %s: %d %s", kind, code, body)
		}
		return len(list.Items)
	}

	// No agent-sandbox: a clear refusal, before anything is created.
	if _, err := bottle(apply...); err == nil || !strings.Contains(err.Error(), "agent-sandbox") || !strings.Contains(err.Error(), "--format pod") {
		t.Fatalf("apply --format agent-sandbox without agent-sandbox: %v, want a refusal naming it", err)
	}
	for _, kind := range []string{"Secret", "ConfigMap", "Service", "NetworkPolicy", "Pod"} {
		if n := left(kind); n != 0 {
			t.Errorf("the refused apply left %d %s objects", n, kind)
		}
	}

	// The CRD, from the API server's own PodSpec schema.
	code, openapi := a.do("GET", "/openapi/v3/api/v1", nil)
	if code != http.StatusOK {
		t.Fatalf("GET /openapi/v3/api/v1: %d %.300s", code, openapi)
	}
	crd, err := sandboxCRD(openapi)
	if err != nil {
		t.Fatal(err)
	}
	const crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
	if code, body := a.do("POST", crds+"?fieldValidation=Strict", crd); code != http.StatusCreated {
		t.Fatalf("create the Sandbox CRD (%d bytes): %d %s", len(crd), code, body)
	}
	t.Cleanup(func() { a.do("DELETE", crds+"/sandboxes.agents.x-k8s.io", nil) })
	established := func() bool {
		_, body := a.do("GET", crds+"/sandboxes.agents.x-k8s.io", nil)
		var got struct {
			Status struct {
				Conditions []struct{ Type, Status string } `json:"conditions"`
			} `json:"status"`
		}
		return json.Unmarshal(body, &got) == nil && slices.Contains(got.Status.Conditions, struct{ Type, Status string }{"Established", "True"})
	}
	for deadline := time.Now().Add(30 * time.Second); !established(); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the Sandbox CRD is not Established within 30 s")
		}
	}
	// Established is the API's; its handler may take a moment more.
	dryRun := func(kind string, item []byte) (int, []byte) {
		var code int
		var body []byte
		for range 50 {
			if code, body = a.do("POST", collection(kind, ns)+"?dryRun=All&fieldValidation=Strict", item); code != http.StatusNotFound {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		return code, body
	}

	// The export of the unit tests' manifest (routes, git, forwarded and optional env:
	// secretKeyRefs in the Sandbox's Pod), every object of it.
	full, err := filepath.Abs("../internal/k8s/testdata/bottle.toml")
	if err != nil {
		t.Fatal(err)
	}
	out, err := bottle("export", "--manifest", full, "-o", "json", "--k8s-namespace", ns, "--sidecar-image", "registry.test/bottle/sidecar:1", "--format", "agent-sandbox")
	if err != nil {
		t.Fatal(err)
	}
	objs, kinds := exportObjects(t, []byte(out))
	var sandbox map[string]any
	for _, o := range objs {
		if code, body := dryRun(o.Kind, o.JSON); code != http.StatusCreated && code != http.StatusOK {
			t.Errorf("%s %s refused: %d %s", o.Kind, o.Name, code, body)
		}
		if o.Kind == "Sandbox" {
			if err := json.Unmarshal(o.JSON, &sandbox); err != nil {
				t.Fatal(err)
			}
		}
	}
	if kinds["Sandbox"] != 1 || kinds["Pod"] != 3 { // the agent's Pod is the Sandbox's
		t.Fatalf("export --format agent-sandbox kinds %v, want one Sandbox and three sidecar Pods", kinds)
	}
	if !strings.Contains(out, `"secretKeyRef"`) {
		t.Error("the export holds no secretKeyRef: the test manifest changed")
	}
	// The validation is real: an unknown field in the Pod spec, or deep in its container,
	// is refused.
	podSpec := sandbox["spec"].(map[string]any)["podTemplate"].(map[string]any)["spec"].(map[string]any)
	ctrSC := podSpec["containers"].([]any)[0].(map[string]any)["securityContext"].(map[string]any)
	for _, target := range []map[string]any{podSpec, ctrSC} {
		target["bottleUnknownField"] = true
		bad, err := json.Marshal(sandbox)
		if err != nil {
			t.Fatal(err)
		}
		delete(target, "bottleUnknownField")
		if code, body := dryRun("Sandbox", bad); code < 400 || !strings.Contains(string(body), "bottleUnknownField") {
			t.Errorf("a Sandbox with an unknown field: %d %s, want it refused", code, body)
		}
	}
	if code, body := a.do("GET", collection("Sandbox", ns), nil); code != http.StatusOK || strings.Contains(string(body), "bottle-coder") {
		t.Errorf("Sandboxes after the dry runs: %d %s", code, body)
	}

	// apply: the Sandbox with the agent's labels, and no agent Pod (no controller here).
	out, err = bottle(apply...)
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(out)
	name := "bottle-" + id + "-agent"
	code, body := a.do("GET", collection("Sandbox", ns)+"/"+name, nil)
	var got struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec struct {
			PodTemplate struct {
				Metadata struct {
					Labels map[string]string `json:"labels"`
				} `json:"metadata"`
				Spec struct {
					RuntimeClassName string `json:"runtimeClassName"`
					HostAliases      []struct {
						IP string `json:"ip"`
					} `json:"hostAliases"`
				} `json:"spec"`
			} `json:"podTemplate"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(body, &got); code != http.StatusOK || err != nil {
		t.Fatalf("get Sandbox %s: %d %s", name, code, body)
	}
	tmpl := got.Spec.PodTemplate
	if tmpl.Metadata.Labels["bottle.identity"] != id || tmpl.Metadata.Labels["bottle.role"] != "agent" || got.Metadata.Labels["bottle.identity"] != id {
		t.Errorf("Sandbox labels %v, Pod template labels %v", got.Metadata.Labels, tmpl.Metadata.Labels)
	}
	if tmpl.Spec.RuntimeClassName != "gvisor" || len(tmpl.Spec.HostAliases) != 1 || tmpl.Spec.HostAliases[0].IP == "" {
		t.Errorf("the Sandbox's Pod: runtimeClassName %q, hostAliases %+v (want the filter's cluster IP)", tmpl.Spec.RuntimeClassName, tmpl.Spec.HostAliases)
	}
	if code, _ := a.do("GET", collection("Pod", ns)+"/"+name, nil); code != http.StatusNotFound {
		t.Errorf("agent Pod %s: %d, want none (apply made a Sandbox)", name, code)
	}
	ps, err := bottle("k8s", "--kubeconfig", a.kubeconfig, "ps")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ps, name) || !strings.Contains(ps, "Sandbox, no Pod") {
		t.Errorf("k8s ps does not list the Sandbox:\n%s", ps)
	}
	if _, err := bottle("k8s", "--kubeconfig", a.kubeconfig, "rm", id); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, kind := range []string{"Sandbox", "Pod", "Service", "ConfigMap", "NetworkPolicy"} {
		for left(kind) != 0 {
			if time.Now().After(deadline) {
				t.Errorf("%s objects of %s left after k8s rm", kind, id)
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	fmt.Fprintf(os.Stderr, "k8s: the Sandbox CRD (%d bytes, PodSpec from the API server) validated the export: %v\n", len(crd), kinds)
}
