package k8s

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/bottle-dev/bottle/internal/names"
)

// fakeClient is a Client of a fake dynamic client that gives each Service a cluster IP,
// as the API server does, and records the order of creations.
func fakeClient(t *testing.T) (*Client, *dynamicfake.FakeDynamicClient, *[]string) {
	t.Helper()
	// Objects stay unstructured, as with a real API server; Sandboxes are served, as by a
	// cluster with agent-sandbox installed.
	listKinds := map[schema.GroupVersionResource]string{sandboxes: "SandboxList"}
	for r, kind := range map[schema.GroupVersionResource]string{secrets: "Secret", configMaps: "ConfigMap", services: "Service", pods: "Pod", networkPolicies: "NetworkPolicy"} {
		listKinds[r] = kind + "List"
	}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), listKinds)
	var created []string
	n := 0
	dyn.PrependReactor("create", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		obj := a.(k8stesting.CreateAction).GetObject().(*unstructured.Unstructured)
		if a.GetResource().Resource == "services" {
			n++
			if err := unstructured.SetNestedField(obj.Object, fmt.Sprintf("10.254.0.%d", n), "spec", "clusterIP"); err != nil {
				t.Fatal(err)
			}
		}
		created = append(created, a.GetResource().Resource+"/"+obj.GetName())
		return false, nil, nil
	})
	return &Client{dyn: dyn, ns: "agents"}, dyn, &created
}

// get reads the object name of resource r from the fake into out.
func get(t *testing.T, dyn *dynamicfake.FakeDynamicClient, r schema.GroupVersionResource, name string, out any) {
	t.Helper()
	u, err := dyn.Resource(r).Namespace("agents").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, out); err != nil {
		t.Fatal(err)
	}
}

// count is the number of objects of resource r in the fake with the label selector.
func count(t *testing.T, dyn *dynamicfake.FakeDynamicClient, r schema.GroupVersionResource, selector string) int {
	t.Helper()
	l, err := dyn.Resource(r).Namespace("agents").List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	return len(l.Items)
}

func TestApplyListRemove(t *testing.T) {
	ctx := context.Background()
	p := testPlan(t)
	c, dyn, created := fakeClient(t)
	if err := c.Apply(ctx, p, Options{OptionalEnv: []string{"TZ"}}, 0); err != nil {
		t.Fatal(err)
	}
	// Order: Secrets, ConfigMaps, Services, policies, sidecars, the agent last.
	kindOrder := []string{"secrets", "configmaps", "services", "networkpolicies", "pods"}
	last := 0
	for _, c := range *created {
		kind, _, _ := strings.Cut(c, "/")
		i := slices.Index(kindOrder, kind)
		if i < last {
			t.Errorf("%s created after a later kind: %v", c, *created)
		}
		last = i
	}
	if got := (*created)[len(*created)-1]; got != "pods/bottle-coder-abc123-agent" {
		t.Errorf("last created %s, want the agent", got)
	}
	// The Secrets hold the plan's values, each only its own Pod's.
	var s corev1.Secret
	get(t, dyn, secrets, "bottle-coder-abc123-egress-proxy", &s)
	if len(s.StringData) != 1 || s.StringData["MY_CLAUDE_OAUTH"] != secretValue("MY_CLAUDE_OAUTH") {
		t.Errorf("egress-proxy Secret data %v", s.StringData)
	}
	var agent corev1.Pod
	get(t, dyn, pods, "bottle-coder-abc123-agent", &agent)
	aliases := map[string]string{}
	for _, a := range agent.Spec.HostAliases {
		aliases[a.Hostnames[0]] = a.IP
	}
	for _, role := range []string{names.RoleFilter, names.RoleEgressProxy, names.RoleGitGate} {
		var svc corev1.Service
		get(t, dyn, services, "bottle-coder-abc123-"+role, &svc)
		if aliases[role] != svc.Spec.ClusterIP {
			t.Errorf("agent resolves %s to %q, Service has %q", role, aliases[role], svc.Spec.ClusterIP)
		}
	}

	listed, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var roles []string
	for _, p := range listed {
		if p.Identity != "coder-abc123" {
			t.Errorf("pod %s of identity %q", p.Name, p.Identity)
		}
		roles = append(roles, p.Role)
	}
	if !slices.Equal(roles, []string{"agent", "egress-proxy", "filter", "git-gate"}) {
		t.Errorf("List roles %v", roles)
	}

	// An object of another bottle is left alone.
	other := &corev1.ConfigMap{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: "agents", Labels: map[string]string{names.LabelIdentity: "coder-000000"}}}
	if err := c.create(ctx, configMaps, other, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove(ctx, "coder-abc123"); err != nil {
		t.Fatal(err)
	}
	sel := names.LabelIdentity + "=coder-abc123"
	left := 0
	for _, r := range []schema.GroupVersionResource{pods, services, secrets, configMaps, networkPolicies} {
		left += count(t, dyn, r, sel)
	}
	if left != 0 {
		t.Errorf("%d objects left after Remove", left)
	}
	var kept corev1.ConfigMap
	get(t, dyn, configMaps, "other", &kept)
}

// TestApplySandbox: with FormatAgentSandbox apply creates, last, a Sandbox in place of
// the agent Pod, with the Services' cluster IPs in its Pod's hostAliases; List shows it
// while its controller has made no Pod, and Remove deletes it.
func TestApplySandbox(t *testing.T) {
	ctx := context.Background()
	c, dyn, created := fakeClient(t)
	if err := c.Apply(ctx, testPlan(t), Options{AgentFormat: FormatAgentSandbox}, 0); err != nil {
		t.Fatal(err)
	}
	if got := (*created)[len(*created)-1]; got != "sandboxes/bottle-coder-abc123-agent" {
		t.Errorf("last created %s, want the agent's Sandbox", got)
	}
	if slices.Contains(*created, "pods/bottle-coder-abc123-agent") {
		t.Error("apply created the agent Pod as well as its Sandbox")
	}
	var sb Sandbox
	get(t, dyn, sandboxes, "bottle-coder-abc123-agent", &sb)
	aliases := map[string]string{}
	for _, a := range sb.Spec.PodTemplate.Spec.HostAliases {
		aliases[a.Hostnames[0]] = a.IP
	}
	var svc corev1.Service
	get(t, dyn, services, "bottle-coder-abc123-filter", &svc)
	if svc.Spec.ClusterIP == "" || aliases[names.RoleFilter] != svc.Spec.ClusterIP {
		t.Errorf("the Sandbox's Pod resolves filter to %q, its Service has %q", aliases[names.RoleFilter], svc.Spec.ClusterIP)
	}
	listed, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(listed, PodStatus{Identity: "coder-abc123", Role: names.RoleAgent, Name: "bottle-coder-abc123-agent", Phase: PhaseNoPod}) {
		t.Errorf("List does not show the Sandbox without a Pod: %+v", listed)
	}
	if err := c.Remove(ctx, "coder-abc123"); err != nil {
		t.Fatal(err)
	}
	if n := count(t, dyn, sandboxes, ""); n != 0 {
		t.Errorf("%d Sandboxes left after Remove", n)
	}
}

// TestApplySandboxWithoutAgentSandbox: on a cluster that does not serve Sandboxes, apply
// with FormatAgentSandbox says so and creates nothing; ps and rm work there as before.
func TestApplySandboxWithoutAgentSandbox(t *testing.T) {
	ctx := context.Background()
	c, dyn, created := fakeClient(t)
	dyn.PrependReactor("list", "sandboxes", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewNotFound(sandboxes.GroupResource(), "")
	})
	err := c.Apply(ctx, testPlan(t), Options{AgentFormat: FormatAgentSandbox}, 0)
	if err == nil || !strings.Contains(err.Error(), "agent-sandbox") || !strings.Contains(err.Error(), "--format pod") {
		t.Fatalf("Apply = %v, want a refusal naming agent-sandbox and --format pod", err)
	}
	if len(*created) != 0 {
		t.Errorf("apply created %v on a cluster without agent-sandbox", *created)
	}
	if err := c.Apply(ctx, testPlan(t), Options{}, 0); err != nil {
		t.Fatal(err)
	}
	if listed, err := c.List(ctx); err != nil || len(listed) != 4 {
		t.Errorf("List = %d Pods, %v; want 4", len(listed), err)
	}
	if err := c.Remove(ctx, "coder-abc123"); err != nil {
		t.Fatalf("Remove on a cluster without agent-sandbox: %v", err)
	}
	if n := count(t, dyn, pods, ""); n != 0 {
		t.Errorf("%d Pods left after Remove", n)
	}
}

// TestApplyUndoesOnFailure: a creation that fails removes what apply made before it.
func TestApplyUndoesOnFailure(t *testing.T) {
	ctx := context.Background()
	c, dyn, _ := fakeClient(t)
	dyn.PrependReactor("create", "networkpolicies", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, fmt.Errorf("refused by the test")
	})
	err := c.Apply(ctx, testPlan(t), Options{}, 0)
	if err == nil || !strings.Contains(err.Error(), "refused by the test") {
		t.Fatalf("Apply = %v", err)
	}
	for kind, r := range map[string]schema.GroupVersionResource{"Secrets": secrets, "ConfigMaps": configMaps, "Services": services} {
		if left := count(t, dyn, r, ""); left != 0 {
			t.Errorf("%d %s left after a failed apply", left, kind)
		}
	}
}

// Logs asks the API server for the Pod's log subresource (through a client that Connect
// makes from a kubeconfig) and copies the stream.
func TestLogsStreamsThePodLog(t *testing.T) {
	var asked string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked = r.URL.Path + "?" + r.URL.RawQuery
		io.WriteString(w, "first line\nsecond line\n")
	}))
	defer srv.Close()
	kubeconfig := filepath.Join(t.TempDir(), "config")
	conf := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: %q}}]
users: [{name: test, user: {token: test-token}}]
contexts: [{name: test, context: {cluster: test, user: test, namespace: agents}}]
current-context: test
`, srv.URL)
	if err := os.WriteFile(kubeconfig, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Connect(kubeconfig, "")
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := c.Logs(context.Background(), "coder-abc123", names.RoleFilter, true, &out); err != nil {
		t.Fatal(err)
	}
	if want := "/api/v1/namespaces/agents/pods/bottle-coder-abc123-filter/log?follow=true"; asked != want {
		t.Errorf("asked %s, want %s", asked, want)
	}
	if out.String() != "first line\nsecond line\n" {
		t.Errorf("log %q", out.String())
	}
}
