package k8s

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/plan"
)

// Client talks to one cluster namespace.
type Client struct {
	cs kubernetes.Interface
	ns string
}

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
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &Client{cs: cs, ns: namespace}, nil
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
// cluster IPs. A failure removes what was created.
func (c *Client) Apply(ctx context.Context, p *plan.Plan, opts Options, ready time.Duration) (err error) {
	opts.Namespace = c.ns
	objs, err := Export(p, opts)
	if err != nil {
		return err
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
		if _, err := c.cs.CoreV1().Secrets(c.ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create Secret %s: %w", s.Name, err)
		}
	}
	for _, cm := range objs.ConfigMaps {
		if _, err := c.cs.CoreV1().ConfigMaps(c.ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create ConfigMap %s: %w", cm.Name, err)
		}
	}
	opts.ServiceIPs = map[string]netip.Addr{}
	for _, s := range objs.Services {
		got, err := c.cs.CoreV1().Services(c.ns).Create(ctx, s, metav1.CreateOptions{})
		if err != nil {
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
		if _, err := c.cs.NetworkingV1().NetworkPolicies(c.ns).Create(ctx, np, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create NetworkPolicy %s: %w", np.Name, err)
		}
	}
	for _, pod := range objs.Sidecars {
		if _, err := c.cs.CoreV1().Pods(c.ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create Pod %s: %w", pod.Name, err)
		}
	}
	if ready > 0 {
		if err := c.waitReady(ctx, objs.Sidecars, ready); err != nil {
			return err
		}
	}
	if _, err := c.cs.CoreV1().Pods(c.ns).Create(ctx, objs.Agent, metav1.CreateOptions{}); err != nil {
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
			got, err := c.cs.CoreV1().Pods(c.ns).Get(ctx, want.Name, metav1.GetOptions{})
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

// Remove deletes every object labelled with the bottle's identity: the Pods first (the
// agent before its sidecars: it must not outlive its policies), then the rest.
func (c *Client) Remove(ctx context.Context, id names.Identity) error {
	lo := metav1.ListOptions{LabelSelector: selector(id)}
	do := metav1.DeleteOptions{}
	core, nets := c.cs.CoreV1(), c.cs.NetworkingV1()
	var errs []error
	del := func(kind string, names []string, err error, remove func(context.Context, string, metav1.DeleteOptions) error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("list %ss: %w", kind, err))
			return
		}
		for _, n := range names {
			if err := remove(ctx, n, do); err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete %s %s: %w", kind, n, err))
			}
		}
	}
	pods, err := core.Pods(c.ns).List(ctx, lo)
	var podNames []string
	if err == nil {
		podNames = itemNames(pods.Items)
		sort.SliceStable(podNames, func(i, j int) bool { return strings.HasSuffix(podNames[i], "-"+names.RoleAgent) })
	}
	del("Pod", podNames, err, core.Pods(c.ns).Delete)
	np, err := nets.NetworkPolicies(c.ns).List(ctx, lo)
	if err == nil {
		del("NetworkPolicy", itemNames(np.Items), nil, nets.NetworkPolicies(c.ns).Delete)
	} else {
		del("NetworkPolicy", nil, err, nil)
	}
	svc, err := core.Services(c.ns).List(ctx, lo)
	if err == nil {
		del("Service", itemNames(svc.Items), nil, core.Services(c.ns).Delete)
	} else {
		del("Service", nil, err, nil)
	}
	cms, err := core.ConfigMaps(c.ns).List(ctx, lo)
	if err == nil {
		del("ConfigMap", itemNames(cms.Items), nil, core.ConfigMaps(c.ns).Delete)
	} else {
		del("ConfigMap", nil, err, nil)
	}
	secrets, err := core.Secrets(c.ns).List(ctx, lo)
	if err == nil {
		del("Secret", itemNames(secrets.Items), nil, core.Secrets(c.ns).Delete)
	} else {
		del("Secret", nil, err, nil)
	}
	return errors.Join(errs...)
}

// itemNames are the names of a list's items.
func itemNames[T any, P interface {
	*T
	GetName() string
}](items []T) []string {
	out := make([]string, 0, len(items))
	for i := range items {
		out = append(out, P(&items[i]).GetName())
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

// List lists the Pods of every bottle in the namespace, by identity then role.
func (c *Client) List(ctx context.Context) ([]PodStatus, error) {
	l, err := c.cs.CoreV1().Pods(c.ns).List(ctx, metav1.ListOptions{LabelSelector: selector("")})
	if err != nil {
		return nil, fmt.Errorf("list bottle Pods in %s: %w", c.ns, err)
	}
	var out []PodStatus
	for _, p := range l.Items {
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
	rc, err := c.cs.CoreV1().Pods(c.ns).GetLogs(name, &corev1.PodLogOptions{Follow: follow}).Stream(ctx)
	if err != nil {
		return fmt.Errorf("logs of Pod %s: %w", name, err)
	}
	defer rc.Close()
	if _, err := io.Copy(w, rc); err != nil {
		return fmt.Errorf("logs of Pod %s: %w", name, err)
	}
	return nil
}
