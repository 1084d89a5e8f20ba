package k8s

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/bottle-dev/bottle/internal/names"
)

// fakeClient is a Client of a fake clientset that gives each Service a cluster IP, as
// the API server does, and records the order of creations.
func fakeClient(t *testing.T) (*Client, *fake.Clientset, *[]string) {
	t.Helper()
	cs := fake.NewClientset()
	var created []string
	n := 0
	cs.PrependReactor("create", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		obj := a.(k8stesting.CreateAction).GetObject()
		if s, ok := obj.(*corev1.Service); ok {
			n++
			s.Spec.ClusterIP = fmt.Sprintf("10.254.0.%d", n)
		}
		created = append(created, a.GetResource().Resource+"/"+obj.(metav1.Object).GetName())
		return false, nil, nil
	})
	return &Client{cs: cs, ns: "agents"}, cs, &created
}

func TestApplyListRemove(t *testing.T) {
	ctx := context.Background()
	p := testPlan(t)
	c, cs, created := fakeClient(t)
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
	s, err := cs.CoreV1().Secrets("agents").Get(ctx, "bottle-coder-abc123-egress-proxy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.StringData) != 1 || s.StringData["MY_CLAUDE_OAUTH"] != secretValue("MY_CLAUDE_OAUTH") {
		t.Errorf("egress-proxy Secret data %v", s.StringData)
	}
	agent, err := cs.CoreV1().Pods("agents").Get(ctx, "bottle-coder-abc123-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	aliases := map[string]string{}
	for _, a := range agent.Spec.HostAliases {
		aliases[a.Hostnames[0]] = a.IP
	}
	for _, role := range []string{names.RoleFilter, names.RoleEgressProxy, names.RoleGitGate} {
		svc, err := cs.CoreV1().Services("agents").Get(ctx, "bottle-coder-abc123-"+role, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if aliases[role] != svc.Spec.ClusterIP {
			t.Errorf("agent resolves %s to %q, Service has %q", role, aliases[role], svc.Spec.ClusterIP)
		}
	}

	pods, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var roles []string
	for _, p := range pods {
		if p.Identity != "coder-abc123" {
			t.Errorf("pod %s of identity %q", p.Name, p.Identity)
		}
		roles = append(roles, p.Role)
	}
	if !slices.Equal(roles, []string{"agent", "egress-proxy", "filter", "git-gate"}) {
		t.Errorf("List roles %v", roles)
	}

	// An object of another bottle is left alone.
	other := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: "agents", Labels: map[string]string{names.LabelIdentity: "coder-000000"}}}
	if _, err := cs.CoreV1().ConfigMaps("agents").Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove(ctx, "coder-abc123"); err != nil {
		t.Fatal(err)
	}
	lo := metav1.ListOptions{LabelSelector: names.LabelIdentity + "=coder-abc123"}
	count := func(n int, err error) int {
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	core := cs.CoreV1()
	left := count(listLen(core.Pods("agents").List(ctx, lo))) +
		count(listLen(core.Services("agents").List(ctx, lo))) +
		count(listLen(core.Secrets("agents").List(ctx, lo))) +
		count(listLen(core.ConfigMaps("agents").List(ctx, lo))) +
		count(listLen(cs.NetworkingV1().NetworkPolicies("agents").List(ctx, lo)))
	if left != 0 {
		t.Errorf("%d objects left after Remove", left)
	}
	if _, err := core.ConfigMaps("agents").Get(ctx, "other", metav1.GetOptions{}); err != nil {
		t.Errorf("Remove took another bottle's object: %v", err)
	}
}

// listLen is the number of items of a typed list.
func listLen(l runtime.Object, err error) (int, error) {
	if err != nil {
		return 0, err
	}
	items, err := meta.ExtractList(l)
	return len(items), err
}

// TestApplyUndoesOnFailure: a creation that fails removes what apply made before it.
func TestApplyUndoesOnFailure(t *testing.T) {
	ctx := context.Background()
	c, cs, _ := fakeClient(t)
	cs.PrependReactor("create", "networkpolicies", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, fmt.Errorf("refused by the test")
	})
	err := c.Apply(ctx, testPlan(t), Options{}, 0)
	if err == nil || !strings.Contains(err.Error(), "refused by the test") {
		t.Fatalf("Apply = %v", err)
	}
	core := cs.CoreV1()
	for kind, n := range map[string]func() (int, error){
		"Secrets":    func() (int, error) { return listLen(core.Secrets("agents").List(ctx, metav1.ListOptions{})) },
		"ConfigMaps": func() (int, error) { return listLen(core.ConfigMaps("agents").List(ctx, metav1.ListOptions{})) },
		"Services":   func() (int, error) { return listLen(core.Services("agents").List(ctx, metav1.ListOptions{})) },
	} {
		if left, err := n(); err != nil || left != 0 {
			t.Errorf("%d %s left after a failed apply (%v)", left, kind, err)
		}
	}
}
