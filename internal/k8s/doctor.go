package k8s

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	nodev1 "k8s.io/api/node/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/bottle-dev/bottle/internal/k8s/canary"
	"github.com/bottle-dev/bottle/internal/ociarchive"
)

var runtimeClasses = nodev1.SchemeGroupVersion.WithResource("runtimeclasses")

// LabelDoctor marks the objects of one `bottle k8s doctor` run (its value is the run's
// id): they are removed by it when the run ends.
const LabelDoctor = "bottle.doctor"

// Check is one result of the doctor.
type Check struct {
	Name   string
	OK     bool
	Detail string
}

// DoctorOptions say what the doctor checks.
type DoctorOptions struct {
	// RuntimeClass the agent Pods name (it must exist).
	RuntimeClass string
	// SidecarImage the sidecar Pods run: the canary runs it, so a node must pull it.
	SidecarImage string
	// Timeout of each wait for a Pod.
	Timeout time.Duration
}

// Doctor checks what a bottle needs of the cluster: the RuntimeClass, the sidecar image
// (a canary Pod runs it) and NetworkPolicy enforcement, shown live: behind a canary
// Service whose policy admits only Pods labelled allowed, an allowed probe Pod connects
// and a denied one does not. Everything it creates is labelled LabelDoctor and removed.
func (c *Client) Doctor(ctx context.Context, o DoctorOptions) ([]Check, error) {
	var checks []Check
	_, err := c.dyn.Resource(runtimeClasses).Get(ctx, o.RuntimeClass, metav1.GetOptions{})
	switch {
	case err == nil:
		checks = append(checks, Check{"runtimeclass", true, "RuntimeClass " + o.RuntimeClass + " exists"})
	case apierrors.IsNotFound(err):
		checks = append(checks, Check{"runtimeclass", false, "RuntimeClass " + o.RuntimeClass + " does not exist: the agent Pod would not start (create it for gVisor's handler, e.g. runsc)"})
	default:
		return nil, fmt.Errorf("read RuntimeClass %s: %w", o.RuntimeClass, err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	run := hex.EncodeToString(b)
	defer c.removeDoctor(run)
	if !checks[0].OK {
		// The probes run without it: admission refuses a Pod naming a missing class.
		o.RuntimeClass = ""
	}
	image, policy, err := c.probePolicy(ctx, o, run)
	if err != nil {
		return nil, err
	}
	return append(checks, image, policy), nil
}

// removeDoctor deletes the objects of doctor run (on its own context: the run's may be
// cancelled).
func (c *Client) removeDoctor(run string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, r := range []schema.GroupVersionResource{pods, networkPolicies, services} {
		items, err := c.list(ctx, r, LabelDoctor+"="+run)
		if err != nil {
			continue
		}
		for _, n := range itemNames(items) {
			_ = c.dyn.Resource(r).Namespace(c.ns).Delete(ctx, n, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))})
		}
	}
}

// doctorPod is a Pod of run running the sidecar image's bottle with args, as locked down
// as a sidecar.
func doctorPod(o DoctorOptions, run, name string, labels map[string]string, args ...string) *corev1.Pod {
	l := map[string]string{LabelDoctor: run}
	for k, v := range labels {
		l[k] = v
	}
	pod := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "bottle-doctor-" + run + "-" + name, Labels: l},
		Spec: corev1.PodSpec{
			RestartPolicy:                corev1.RestartPolicyNever,
			AutomountServiceAccountToken: new(false),
			EnableServiceLinks:           new(false),
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   new(true),
				RunAsUser:      new(int64(65534)),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name: name, Image: o.SidecarImage, ImagePullPolicy: corev1.PullIfNotPresent,
				Command: append([]string{ociarchive.SidecarExecutablePath}, args...),
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: new(false),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
	return pod
}

// probePolicy runs the canary (the image check) and the two probes (the policy check).
func (c *Client) probePolicy(ctx context.Context, o DoctorOptions, run string) (image, policy Check, err error) {
	image, policy = Check{Name: "sidecar-image"}, Check{Name: "networkpolicy"}
	canaryLabels := map[string]string{LabelDoctor + "-role": "canary"}
	port := intstr.FromInt32(canary.Port)
	np := &networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: "bottle-doctor-" + run, Labels: map[string]string{LabelDoctor: run}},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{LabelDoctor: run, LabelDoctor + "-role": "canary"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{LabelDoctor: run, LabelDoctor + "-role": "allowed"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: new(corev1.ProtocolTCP), Port: &port}},
			}},
		},
	}
	if err := c.create(ctx, networkPolicies, np, nil); err != nil {
		return image, policy, fmt.Errorf("create NetworkPolicy %s: %w", np.Name, err)
	}
	svc := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: "bottle-doctor-" + run, Labels: map[string]string{LabelDoctor: run}},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{LabelDoctor: run, LabelDoctor + "-role": "canary"},
			Ports:    []corev1.ServicePort{{Port: canary.Port, TargetPort: port, Protocol: corev1.ProtocolTCP}},
		},
	}
	var created corev1.Service
	if err := c.create(ctx, services, svc, &created); err != nil {
		return image, policy, fmt.Errorf("create Service %s: %w", svc.Name, err)
	}
	server := doctorPod(o, run, "canary", canaryLabels, "canary", "serve", strconv.Itoa(canary.Port))
	server.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: port}}, PeriodSeconds: 1}
	if err := c.create(ctx, pods, server, nil); err != nil {
		return image, policy, fmt.Errorf("create Pod %s: %w", server.Name, err)
	}
	if why := c.waitPod(ctx, server.Name, o.Timeout, podReady); why != "" {
		image.Detail = fmt.Sprintf("the canary Pod on image %s did not become ready: %s", o.SidecarImage, why)
		policy.Detail = "not checked: no canary"
		return image, policy, nil
	}
	image.OK, image.Detail = true, "a node ran "+o.SidecarImage
	target := net.JoinHostPort(created.Spec.ClusterIP, strconv.Itoa(canary.Port))
	// The allowed probe retries (a node's enforcer may learn a new Pod late); the denied
	// one must fail every try.
	finished := func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	}
	for _, pr := range []struct {
		role  string
		tries string
	}{{"allowed", "20"}, {"denied", "5"}} {
		p := doctorPod(o, run, pr.role, map[string]string{LabelDoctor + "-role": pr.role}, "canary", "dial", target, pr.tries)
		if o.RuntimeClass != "" {
			p.Spec.RuntimeClassName = new(o.RuntimeClass)
		}
		if err := c.create(ctx, pods, p, nil); err != nil {
			return image, policy, fmt.Errorf("create Pod %s: %w", p.Name, err)
		}
		if why := c.waitPod(ctx, p.Name, o.Timeout, finished); why != "" {
			policy.Detail = fmt.Sprintf("the %s probe Pod did not finish: %s", pr.role, why)
			return image, policy, nil
		}
		got, err := c.getPod(ctx, p.Name)
		if err != nil {
			return image, policy, fmt.Errorf("read Pod %s: %w", p.Name, err)
		}
		connected := got.Status.Phase == corev1.PodSucceeded
		switch {
		case pr.role == "allowed" && !connected:
			policy.Detail = "an allowed Pod could not reach the canary Service " + target + ": the check cannot tell (Service routing or the policy's allow rule fails)"
			return image, policy, nil
		case pr.role == "denied" && connected:
			policy.Detail = "a Pod the canary's NetworkPolicy denies reached it at " + target + ": NetworkPolicy is NOT enforced; the agent could bypass its sidecars"
			return image, policy, nil
		}
	}
	policy.OK, policy.Detail = true, "a denied Pod could not reach the canary Service "+target+", an allowed one could"
	return image, policy, nil
}

// waitPod waits up to d until done(Pod name); it returns why not ("" when done).
func (c *Client) waitPod(ctx context.Context, name string, d time.Duration, done func(*corev1.Pod) bool) string {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		p, err := c.getPod(ctx, name)
		if err == nil && done(p) {
			return ""
		}
		select {
		case <-ctx.Done():
			if p == nil {
				return fmt.Sprintf("not found (%v)", err)
			}
			return podWhy(p)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// podWhy says why a Pod is not running: its phase and its container's waiting reason.
func podWhy(p *corev1.Pod) string {
	why := []string{string(p.Status.Phase)}
	for _, s := range p.Status.ContainerStatuses {
		if w := s.State.Waiting; w != nil {
			why = append(why, w.Reason, w.Message)
		}
	}
	return strings.TrimSpace(strings.Join(why, " "))
}
