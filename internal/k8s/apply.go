package k8s

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
)

// Client talks to one cluster namespace. It uses the dynamic client and a plain REST
// client, not client-go's typed clientset: that one links and initialises every API group
// of Kubernetes, about half of the bottle binary, which every sidecar sandbox then maps
// and starts (issue 13).
type Client struct {
	dyn dynamic.Interface
	// logs reads a Pod's log (a stream the dynamic client has no call for); nil in tests.
	logs rest.Interface
	ns   string
}

// The resources a bottle is made of.
var (
	secrets         = corev1.SchemeGroupVersion.WithResource("secrets")
	configMaps      = corev1.SchemeGroupVersion.WithResource("configmaps")
	services        = corev1.SchemeGroupVersion.WithResource("services")
	pods            = corev1.SchemeGroupVersion.WithResource("pods")
	networkPolicies = networkingv1.SchemeGroupVersion.WithResource("networkpolicies")
)

// Connect reads kubeconfig (empty: $KUBECONFIG, ~/.kube/config, else the in-cluster
// service account); namespace empty is the kubeconfig's (else "default").
func Connect(kubeconfig, namespace string) (*Client, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	if namespace == "" {
		if namespace, _, err = cc.Namespace(); err != nil {
			return nil, fmt.Errorf("kubernetes namespace: %w", err)
		}
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	lc := rest.CopyConfig(cfg)
	lc.APIPath, lc.GroupVersion = "/api", &corev1.SchemeGroupVersion
	// Logs are a byte stream: the codecs of an empty scheme are never used.
	lc.NegotiatedSerializer = serializer.NewCodecFactory(runtime.NewScheme()).WithoutConversion()
	logs, err := rest.RESTClientFor(lc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &Client{dyn: dyn, logs: logs, ns: namespace}, nil
}

// create creates obj (with its TypeMeta) as resource r in the namespace and returns what
// the API server made of it in out, when out is not nil.
func (c *Client) create(ctx context.Context, r schema.GroupVersionResource, obj, out any) error {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return err
	}
	got, err := c.dyn.Resource(r).Namespace(c.ns).Create(ctx, &unstructured.Unstructured{Object: m}, metav1.CreateOptions{})
	if err != nil || out == nil {
		return err
	}
	return runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, out)
}

// getPod reads the Pod name.
func (c *Client) getPod(ctx context.Context, name string) (*corev1.Pod, error) {
	u, err := c.dyn.Resource(pods).Namespace(c.ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	var p corev1.Pod
	return &p, runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &p)
}

// list lists resource r in the namespace by label selector.
func (c *Client) list(ctx context.Context, r schema.GroupVersionResource, selector string) ([]unstructured.Unstructured, error) {
	l, err := c.dyn.Resource(r).Namespace(c.ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

// SecretData are the values of a plan's secret env, by container (= Secret) name: what
// apply puts into the Secrets export leaves empty.
func SecretData(p *plan.Plan) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, c := range p.Containers {
		for _, kv := range c.Spec.Process.Env {
			k, v, _ := strings.Cut(kv, "=")
			for _, n := range c.SecretEnv {
				if n == k {
					if out[c.Name] == nil {
						out[c.Name] = map[string]string{}
					}
					out[c.Name][k] = v
				}
			}
		}
	}
	return out
}

// Apply creates a bottle from plan p (which holds the host's secret values): its Secrets
// with those values, ConfigMaps, Services, NetworkPolicies, the sidecars, and once they
// are ready (within ready; 0: no wait) the agent, whose hostAliases name the Services'
// cluster IPs. With FormatAgentSandbox the agent is a Sandbox (the cluster must serve
// agent-sandbox's API; its controller makes the agent Pod). A failure removes what was
// created.
func (c *Client) Apply(ctx context.Context, p *plan.Plan, opts Options, ready time.Duration) (err error) {
	opts.Namespace = c.ns
	objs, err := Export(p, opts)
	if err != nil {
		return err
	}
	if objs.Sandbox != nil {
		// Before anything is created: a cluster without agent-sandbox would get a
		// bottle without its agent.
		if _, err := c.dyn.Resource(sandboxes).Namespace(c.ns).List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
			if apierrors.IsNotFound(err) {
				return fmt.Errorf("the cluster serves no %s Sandbox: install kubernetes-sigs/agent-sandbox, or apply with --format %s", sandboxes.GroupVersion(), FormatPod)
			}
			return fmt.Errorf("list Sandboxes in %s: %w", c.ns, err)
		}
	}
	defer func() {
		if err != nil {
			if rmErr := c.Remove(context.WithoutCancel(ctx), p.Identity); rmErr != nil {
				err = errors.Join(err, fmt.Errorf("undo: %w", rmErr))
			}
		}
	}()
	data := SecretData(p)
	for _, s := range objs.Secrets {
		s = s.DeepCopy()
		s.StringData = data[s.Name]
		if err := c.create(ctx, secrets, s, nil); err != nil {
			return fmt.Errorf("create Secret %s: %w", s.Name, err)
		}
	}
	for _, cm := range objs.ConfigMaps {
		if err := c.create(ctx, configMaps, cm, nil); err != nil {
			return fmt.Errorf("create ConfigMap %s: %w", cm.Name, err)
		}
	}
	opts.ServiceIPs = map[string]netip.Addr{}
	for _, s := range objs.Services {
		got := &corev1.Service{}
		if err := c.create(ctx, services, s, got); err != nil {
			return fmt.Errorf("create Service %s: %w", s.Name, err)
		}
		ip, err := netip.ParseAddr(got.Spec.ClusterIP)
		if err != nil {
			return fmt.Errorf("cluster IP %q of Service %s: %w", got.Spec.ClusterIP, s.Name, err)
		}
		opts.ServiceIPs[s.Labels[names.LabelRole]] = ip
	}
	// The agent's hostAliases need the cluster IPs.
	if objs, err = Export(p, opts); err != nil {
		return err
	}
	for _, np := range objs.NetworkPolicies {
		if err := c.create(ctx, networkPolicies, np, nil); err != nil {
			return fmt.Errorf("create NetworkPolicy %s: %w", np.Name, err)
		}
	}
	for _, pod := range objs.Sidecars {
		if err := c.create(ctx, pods, pod, nil); err != nil {
			return fmt.Errorf("create Pod %s: %w", pod.Name, err)
		}
	}
	if ready > 0 {
		if err := c.waitReady(ctx, objs.Sidecars, ready); err != nil {
			return err
		}
	}
	if objs.Sandbox != nil {
		if err := c.create(ctx, sandboxes, objs.Sandbox, nil); err != nil {
			return fmt.Errorf("create Sandbox %s: %w", objs.Sandbox.Name, err)
		}
		return nil
	}
	if err := c.create(ctx, pods, objs.Agent, nil); err != nil {
		return fmt.Errorf("create Pod %s: %w", objs.Agent.Name, err)
	}
	return nil
}

// waitReady waits until every pod is Ready, for at most d.
func (c *Client) waitReady(ctx context.Context, pods []*corev1.Pod, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for _, want := range pods {
		for {
			got, err := c.getPod(ctx, want.Name)
			if err == nil && podReady(got) {
				break
			}
			select {
			case <-ctx.Done():
				why := "not found"
				if got != nil {
					why = string(got.Status.Phase) + " " + got.Status.Message
				}
				return fmt.Errorf("sidecar Pod %s not ready within %s (%s)", want.Name, d, strings.TrimSpace(why))
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
	return nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// selector selects every object of one bottle, or (id empty) of every bottle.
func selector(id names.Identity) string {
	if id == "" {
		return names.LabelIdentity
	}
	return names.LabelIdentity + "=" + id.String()
}

// Remove deletes every object labelled with the bottle's identity: a Sandbox first (its
// controller would make its Pod again), the Pods (the agent before its sidecars: it must
// not outlive its policies), then the rest.
func (c *Client) Remove(ctx context.Context, id names.Identity) error {
	var errs []error
	for _, k := range []struct {
		kind string
		r    schema.GroupVersionResource
	}{{"Sandbox", sandboxes}, {"Pod", pods}, {"NetworkPolicy", networkPolicies}, {"Service", services}, {"ConfigMap", configMaps}, {"Secret", secrets}} {
		items, err := c.list(ctx, k.r, selector(id))
		if k.r == sandboxes && apierrors.IsNotFound(err) {
			continue // a cluster without agent-sandbox holds no Sandbox
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("list %ss: %w", k.kind, err))
			continue
		}
		todo := itemNames(items)
		if k.r == pods {
			sort.SliceStable(todo, func(i, j int) bool { return strings.HasSuffix(todo[i], "-"+names.RoleAgent) })
		}
		for _, n := range todo {
			if err := c.dyn.Resource(k.r).Namespace(c.ns).Delete(ctx, n, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete %s %s: %w", k.kind, n, err))
			}
		}
	}
	return errors.Join(errs...)
}

// itemNames are the names of a list's items.
func itemNames(items []unstructured.Unstructured) []string {
	out := make([]string, 0, len(items))
	for i := range items {
		out = append(out, items[i].GetName())
	}
	return out
}

// PodStatus is one Pod of a bottle.
type PodStatus struct {
	Identity names.Identity
	Role     string
	Name     string
	Phase    string
	Ready    bool
}

// PhaseNoPod is the phase List gives a Sandbox whose controller has made no Pod (yet).
const PhaseNoPod = "Sandbox, no Pod"

// List lists the Pods of every bottle in the namespace, by identity then role, and each
// Sandbox whose Pod does not exist.
func (c *Client) List(ctx context.Context) ([]PodStatus, error) {
	items, err := c.list(ctx, pods, selector(""))
	if err != nil {
		return nil, fmt.Errorf("list bottle Pods in %s: %w", c.ns, err)
	}
	boxes, err := c.list(ctx, sandboxes, selector(""))
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("list bottle Sandboxes in %s: %w", c.ns, err)
	}
	var out []PodStatus
	podNames := itemNames(items)
	for _, u := range boxes {
		if !slices.Contains(podNames, u.GetName()) {
			l := u.GetLabels()
			out = append(out, PodStatus{Identity: names.Identity(l[names.LabelIdentity]), Role: l[names.LabelRole], Name: u.GetName(), Phase: PhaseNoPod})
		}
	}
	for _, u := range items {
		var p corev1.Pod
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &p); err != nil {
			return nil, fmt.Errorf("read Pod %s: %w", u.GetName(), err)
		}
		out = append(out, PodStatus{
			Identity: names.Identity(p.Labels[names.LabelIdentity]), Role: p.Labels[names.LabelRole],
			Name: p.Name, Phase: string(p.Status.Phase), Ready: podReady(&p),
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Identity != out[j].Identity {
			return out[i].Identity < out[j].Identity
		}
		return out[i].Role < out[j].Role
	})
	return out, nil
}

// Logs streams the log of the bottle's Pod of role.
func (c *Client) Logs(ctx context.Context, id names.Identity, role string, follow bool, w io.Writer) error {
	name := id.Container(role)
	rc, err := c.logs.Get().Namespace(c.ns).Resource("pods").Name(name).SubResource("log").
		Param("follow", strconv.FormatBool(follow)).Stream(ctx)
	if err != nil {
		return fmt.Errorf("logs of Pod %s: %w", name, err)
	}
	defer rc.Close()
	if _, err := io.Copy(w, rc); err != nil {
		return fmt.Errorf("logs of Pod %s: %w", name, err)
	}
	return nil
}
