// Package k8s turns a bottle's plan (the one `bottle start` runs) into Kubernetes objects:
// the agent and each sidecar as its own Pod (never sharing a network namespace, which
// would let the agent bypass the filter), a Service per sidecar, NetworkPolicies that
// leave the agent only the sidecars' ports, and Secrets that only the Pods that use them
// reference. It is the only package that imports Kubernetes' API types.
//
// The objects are read off the plan's containers: their OCI specs (args, env, user,
// capabilities, limits), their mounts of the plan's stage files (ConfigMaps), their
// networks (which of them may leave) and their secret env names (Secrets). A secret value
// never enters an object: Secrets are exported empty, their keys named in an annotation.
package k8s

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/bottle-dev/bottle/internal/names"
	"github.com/bottle-dev/bottle/internal/ociarchive"
	"github.com/bottle-dev/bottle/internal/plan"
)

// AnnotationSecretKeys names, on an exported Secret, the keys `bottle k8s apply` (or the
// user) fills; the export itself holds no value.
const AnnotationSecretKeys = "bottle.dev/secret-keys"

// DefaultRuntimeClass is the RuntimeClass the agent Pod runs under (gVisor).
const DefaultRuntimeClass = "gvisor"

// Options choose what the plan alone cannot say.
type Options struct {
	// Namespace of every object (empty: the client's default).
	Namespace string
	// SidecarImage replaces the plan's image of bottle's own sidecars (a registry ref of
	// the image `bottle image export` writes).
	SidecarImage string
	// RuntimeClass of the agent Pod (default DefaultRuntimeClass).
	RuntimeClass string
	// ServiceIPs are the sidecar Services' cluster IPs by role, known once the Services
	// exist: the agent has no DNS, so it finds its sidecars through hostAliases. A role
	// without an IP gets no alias (a plain export; `bottle k8s apply` fills them).
	ServiceIPs map[string]netip.Addr
	// OptionalEnv are the agent's forwarded names that may be unset (their secretKeyRef is
	// optional).
	OptionalEnv []string
	// AgentFormat is what the agent is exported as: FormatPod (the default) or
	// FormatAgentSandbox.
	AgentFormat string
}

// Objects are one bottle's Kubernetes objects, in the order apply creates them.
type Objects struct {
	Secrets         []*corev1.Secret
	ConfigMaps      []*corev1.ConfigMap
	Services        []*corev1.Service
	NetworkPolicies []*networkingv1.NetworkPolicy
	// Sidecars are created before the agent, which starts once they are ready.
	Sidecars []*corev1.Pod
	// Agent is the agent's Pod: the object itself, or (with FormatAgentSandbox) what the
	// Sandbox's controller makes of Sandbox.
	Agent   *corev1.Pod
	Sandbox *Sandbox
}

// All is every object in creation order (policies before any Pod runs).
func (o *Objects) All() []any {
	var all []any
	for _, s := range o.Secrets {
		all = append(all, s)
	}
	for _, c := range o.ConfigMaps {
		all = append(all, c)
	}
	for _, s := range o.Services {
		all = append(all, s)
	}
	for _, n := range o.NetworkPolicies {
		all = append(all, n)
	}
	for _, p := range o.Sidecars {
		all = append(all, p)
	}
	if o.Sandbox != nil {
		return append(all, o.Sandbox)
	}
	return append(all, o.Agent)
}

// Export turns plan p into the bottle's Kubernetes objects.
func Export(p *plan.Plan, opts Options) (*Objects, error) {
	if opts.RuntimeClass == "" {
		opts.RuntimeClass = DefaultRuntimeClass
	}
	if opts.AgentFormat == "" {
		opts.AgentFormat = FormatPod
	}
	if !slices.Contains(AgentFormats, opts.AgentFormat) {
		return nil, fmt.Errorf("export %s: agent format %q: use one of %s", p.Identity, opts.AgentFormat, strings.Join(AgentFormats, ", "))
	}
	if p.Container(names.RoleSupervise) != nil {
		// Proposals and decisions travel through the host's state dir, which a cluster
		// does not have: exporting the sidecar would give the agent tools nobody answers.
		return nil, fmt.Errorf("export %s: supervise is not available on Kubernetes yet; set supervise = false for bottle %q to export it", p.Identity, p.Bottle)
	}
	x := &exporter{p: p, opts: opts, o: &Objects{}, ports: map[string]int32{}}
	// Sidecars first: the agent's hostAliases and policies name their ports.
	for _, c := range p.Containers {
		if c.Role == names.RoleAgent {
			continue
		}
		pod, err := x.pod(c)
		if err != nil {
			return nil, fmt.Errorf("export %s: %w", c.Name, err)
		}
		x.o.Sidecars = append(x.o.Sidecars, pod)
	}
	agent := p.Container(names.RoleAgent)
	if agent == nil {
		return nil, fmt.Errorf("export %s: the plan has no agent", p.Identity)
	}
	pod, err := x.pod(agent)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", agent.Name, err)
	}
	x.o.Agent = pod
	if opts.AgentFormat == FormatAgentSandbox {
		x.o.Sandbox = sandboxOf(pod)
	}
	x.policies()
	return x.o, nil
}

type exporter struct {
	p    *plan.Plan
	opts Options
	o    *Objects
	// ports are the sidecars' service ports by role.
	ports map[string]int32
	// sidecarRoles are the exported sidecars' roles, in plan order.
	sidecarRoles []string
}

func (x *exporter) meta(name string, labels map[string]string) metav1.ObjectMeta {
	l := map[string]string{}
	for k, v := range labels {
		// nerdctl's name label is containerd's; an object's name is its own.
		if k != names.LabelName {
			l[k] = v
		}
	}
	return metav1.ObjectMeta{Name: name, Namespace: x.opts.Namespace, Labels: l}
}

// selector picks the Pod of one role of this bottle.
func (x *exporter) selector(role string) map[string]string {
	return map[string]string{names.LabelIdentity: x.p.Identity.String(), names.LabelRole: role}
}

// stageFile is the content of the plan's stage file mounted from source, if it is one.
func (x *exporter) stageFile(source string) (plan.StageFile, bool) {
	rel, ok := strings.CutPrefix(source, x.p.StageDir+"/")
	if !ok {
		return plan.StageFile{}, false
	}
	for _, f := range x.p.StageFiles {
		if f.Name == rel {
			return f, true
		}
	}
	return plan.StageFile{}, false
}

// pod exports container c as a Pod, with its Service, ConfigMap and Secret.
func (x *exporter) pod(c *plan.Container) (*corev1.Pod, error) {
	s := c.Spec
	if s == nil || s.Process == nil {
		return nil, fmt.Errorf("no process in the plan's spec")
	}
	agent := c.Role == names.RoleAgent
	ctr := corev1.Container{
		Name:       c.Role,
		Image:      c.Image,
		Args:       slices.Clone(s.Process.Args),
		WorkingDir: s.Process.Cwd,
	}
	if !agent && len(s.Process.Args) > 0 && s.Process.Args[0] == ociarchive.SidecarExecutablePath && x.opts.SidecarImage != "" {
		ctr.Image = x.opts.SidecarImage
	}
	// The image's entrypoint is replaced, as the plan's args are the whole command line.
	if len(ctr.Args) > 0 {
		ctr.Command, ctr.Args = ctr.Args[:1], ctr.Args[1:]
	}
	env, secretKeys := x.env(c)
	ctr.Env = env
	ctr.SecurityContext = securityContext(s)
	ctr.Resources = resources(s)

	spec := corev1.PodSpec{
		AutomountServiceAccountToken: new(false),
		EnableServiceLinks:           new(false),
		SecurityContext: &corev1.PodSecurityContext{
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
	if s.Hostname != "" && s.Hostname != c.Role {
		spec.Hostname = s.Hostname
	}
	if s.Process.User.UID != 0 {
		spec.SecurityContext.RunAsNonRoot = new(true)
	}
	if agent {
		spec.RuntimeClassName = new(x.opts.RuntimeClass)
		spec.RestartPolicy = corev1.RestartPolicyNever
	} else {
		spec.RestartPolicy = corev1.RestartPolicyAlways
	}
	cm := &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: x.meta(c.Name, c.Labels),
		Data:       map[string]string{},
	}
	var port int32
	for _, m := range s.Mounts {
		f, staged := x.stageFile(m.Source)
		switch {
		case m.Destination == "/etc/hosts" && staged:
			aliases, err := x.hostAliases(f.Content)
			if err != nil {
				return nil, err
			}
			spec.HostAliases = aliases
		case m.Destination == "/etc/resolv.conf" && staged:
			if !strings.Contains(f.Content, "nameserver") {
				// No resolver: the only name server is the Pod's own loopback, where
				// nothing answers (a Pod must name one when it opts out of the cluster's).
				spec.DNSPolicy = corev1.DNSNone
				spec.DNSConfig = &corev1.PodDNSConfig{Nameservers: []string{"127.0.0.1"}}
			}
		case staged:
			content, p, err := podConfig(f.Content)
			if err != nil {
				return nil, fmt.Errorf("stage file %s: %w", f.Name, err)
			}
			if p != 0 {
				port = p
			}
			key := strings.ReplaceAll(f.Name, "/", "_")
			cm.Data[key] = content
			ctr.VolumeMounts = append(ctr.VolumeMounts, corev1.VolumeMount{Name: "config", MountPath: m.Destination, SubPath: key, ReadOnly: true})
		case m.Type == "bind" && (strings.HasPrefix(m.Source, x.p.StageDir+"/") || (c.AuditDir != "" && m.Source == c.AuditDir)):
			// A writable stage dir (a sidecar's run dir) or its audit dir: the Pod's own
			// scratch space (a cluster's trail stays in the Pod; `bottle audit` reads hosts').
			vol := "run-" + strconv.Itoa(len(spec.Volumes))
			spec.Volumes = append(spec.Volumes, corev1.Volume{Name: vol, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
			ctr.VolumeMounts = append(ctr.VolumeMounts, corev1.VolumeMount{Name: vol, MountPath: m.Destination})
		case m.Destination == "/workspace":
			// The host's workspace does not exist on a node: the agent gets an empty one.
			spec.Volumes = append(spec.Volumes, corev1.Volume{Name: "workspace", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
			ctr.VolumeMounts = append(ctr.VolumeMounts, corev1.VolumeMount{Name: "workspace", MountPath: m.Destination})
		case m.Type == "tmpfs" && m.Destination == "/tmp":
			spec.Volumes = append(spec.Volumes, corev1.Volume{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}})
			ctr.VolumeMounts = append(ctr.VolumeMounts, corev1.VolumeMount{Name: "tmp", MountPath: m.Destination})
		}
	}
	if port == 0 {
		// A server configured by its command line (pipelock) names its port there.
		if i := slices.Index(s.Process.Args, "--listen"); i >= 0 && i+1 < len(s.Process.Args) {
			p, err := listenPort(s.Process.Args[i+1])
			if err != nil {
				return nil, err
			}
			port = p
		}
	}
	if len(cm.Data) > 0 {
		spec.Volumes = append(spec.Volumes, corev1.Volume{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: cm.Name}}}})
		x.o.ConfigMaps = append(x.o.ConfigMaps, cm)
	}
	if len(secretKeys) > 0 {
		meta := x.meta(c.Name, c.Labels)
		meta.Annotations = map[string]string{AnnotationSecretKeys: strings.Join(secretKeys, ",")}
		x.o.Secrets = append(x.o.Secrets, &corev1.Secret{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
			ObjectMeta: meta,
			Type:       corev1.SecretTypeOpaque,
		})
	}
	// A sidecar that serves the agent (its config names where it listens) gets a
	// Service; one that serves nobody (supervise) is only a Pod.
	if !agent && port != 0 {
		x.ports[c.Role] = port
		x.sidecarRoles = append(x.sidecarRoles, c.Role)
		ctr.Ports = []corev1.ContainerPort{{Name: "serve", ContainerPort: port, Protocol: corev1.ProtocolTCP}}
		ctr.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(port)}}, PeriodSeconds: 1}
		x.o.Services = append(x.o.Services, &corev1.Service{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
			ObjectMeta: x.meta(c.Name, c.Labels),
			Spec: corev1.ServiceSpec{
				Selector: x.selector(c.Role),
				Ports:    []corev1.ServicePort{{Name: "serve", Port: port, TargetPort: intstr.FromInt32(port), Protocol: corev1.ProtocolTCP}},
			},
		})
	}
	spec.Containers = []corev1.Container{ctr}
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: x.meta(c.Name, c.Labels),
		Spec:       spec,
	}, nil
}

// env is the container's env: literals as they are, the plan's secret names as
// secretKeyRefs into the container's own Secret (whose keys it returns).
func (x *exporter) env(c *plan.Container) ([]corev1.EnvVar, []string) {
	var env []corev1.EnvVar
	var keys []string
	for _, kv := range c.Spec.Process.Env {
		k, v, _ := strings.Cut(kv, "=")
		if !slices.Contains(c.SecretEnv, k) {
			env = append(env, corev1.EnvVar{Name: k, Value: v})
			continue
		}
		ref := &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: c.Name}, Key: k}
		if c.Role == names.RoleAgent && slices.Contains(x.opts.OptionalEnv, k) {
			ref.Optional = new(true)
		}
		env = append(env, corev1.EnvVar{Name: k, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: ref}})
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return env, keys
}

// hostAliases are a plan hosts file's entries for a Pod: a sidecar's name resolves to its
// Service (when its cluster IP is known), other entries stay; localhost and the Pod's own
// name are the kubelet's.
func (x *exporter) hostAliases(hosts string) ([]corev1.HostAlias, error) {
	var out []corev1.HostAlias
	sc := bufio.NewScanner(strings.NewReader(hosts))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		addr, err := netip.ParseAddr(fields[0])
		if err != nil {
			return nil, fmt.Errorf("hosts entry %q: %w", sc.Text(), err)
		}
		for _, name := range fields[1:] {
			switch {
			case name == "localhost" || name == x.p.Identity.String():
			case slices.Contains(names.Roles, name):
				if ip, ok := x.opts.ServiceIPs[name]; ok {
					out = append(out, corev1.HostAlias{IP: ip.String(), Hostnames: []string{name}})
				}
			default:
				out = append(out, corev1.HostAlias{IP: addr.String(), Hostnames: []string{name}})
			}
		}
	}
	return out, sc.Err()
}

// podConfig rewrites a sidecar's JSON config for a Pod: it listens on every address of
// the Pod (its address is the cluster's choice) on the plan's port, which it returns.
// Other files are kept as they are.
func podConfig(content string) (string, int32, error) {
	var cfg map[string]json.RawMessage
	if json.Unmarshal([]byte(content), &cfg) != nil {
		return content, 0, nil
	}
	raw, ok := cfg["listen"]
	if !ok {
		return content, 0, nil
	}
	var listen string
	if err := json.Unmarshal(raw, &listen); err != nil {
		return "", 0, fmt.Errorf("listen: %w", err)
	}
	port, err := listenPort(listen)
	if err != nil {
		return "", 0, err
	}
	cfg["listen"], _ = json.Marshal(fmt.Sprintf(":%d", port))
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(cfg); err != nil {
		return "", 0, err
	}
	return buf.String(), port, nil
}

// listenPort is the port of a listen address HOST:PORT.
func listenPort(listen string) (int32, error) {
	_, p, err := net.SplitHostPort(listen)
	if err != nil {
		return 0, fmt.Errorf("listen %q: %w", listen, err)
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 {
		return 0, fmt.Errorf("listen %q: bad port", listen)
	}
	return int32(port), nil
}

// securityContext carries the spec's hardening: no privilege escalation, only the
// capabilities the spec keeps, its user and a read-only root where the spec has one.
func securityContext(s *specs.Spec) *corev1.SecurityContext {
	sc := &corev1.SecurityContext{
		AllowPrivilegeEscalation: new(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		RunAsUser:                new(int64(s.Process.User.UID)),
		RunAsGroup:               new(int64(s.Process.User.GID)),
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
	if caps := s.Process.Capabilities; caps != nil {
		for _, c := range caps.Bounding {
			sc.Capabilities.Add = append(sc.Capabilities.Add, corev1.Capability(strings.TrimPrefix(c, "CAP_")))
		}
	}
	if s.Root != nil && s.Root.Readonly {
		sc.ReadOnlyRootFilesystem = new(true)
	}
	return sc
}

// resources are the spec's memory and CPU limits (requests equal to them).
func resources(s *specs.Spec) corev1.ResourceRequirements {
	r := corev1.ResourceRequirements{}
	if s.Linux == nil || s.Linux.Resources == nil {
		return r
	}
	lim := corev1.ResourceList{}
	if m := s.Linux.Resources.Memory; m != nil && m.Limit != nil {
		lim[corev1.ResourceMemory] = *resource.NewQuantity(*m.Limit, resource.BinarySI)
	}
	if c := s.Linux.Resources.CPU; c != nil && c.Quota != nil && c.Period != nil && *c.Period > 0 {
		lim[corev1.ResourceCPU] = *resource.NewMilliQuantity(*c.Quota*1000/int64(*c.Period), resource.DecimalSI)
	}
	if len(lim) > 0 {
		r.Limits, r.Requests = lim, lim.DeepCopy()
	}
	return r
}

// policies: every Pod of the bottle is denied all traffic, then the agent may reach each
// sidecar's port, each sidecar admits the agent on it, and the sidecars the plan puts on
// the egress network may leave (anywhere: the filter and the egress-proxy decide where).
func (x *exporter) policies() {
	id := x.p.Identity
	// A policy belongs to the bottle, not to one role.
	labels := map[string]string{names.LabelIdentity: id.String(), names.LabelAgent: x.p.Agent}
	policy := func(suffix string, sel map[string]string, spec networkingv1.NetworkPolicySpec) {
		spec.PodSelector = metav1.LabelSelector{MatchLabels: sel}
		x.o.NetworkPolicies = append(x.o.NetworkPolicies, &networkingv1.NetworkPolicy{
			TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
			ObjectMeta: x.meta(names.Prefix+id.String()+"-"+suffix, labels),
			Spec:       spec,
		})
	}
	both := []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	policy("deny", map[string]string{names.LabelIdentity: id.String()}, networkingv1.NetworkPolicySpec{PolicyTypes: both})
	var toSidecars []networkingv1.NetworkPolicyEgressRule
	for _, role := range x.sidecarRoles {
		port := intstr.FromInt32(x.ports[role])
		ports := []networkingv1.NetworkPolicyPort{{Protocol: new(corev1.ProtocolTCP), Port: &port}}
		toSidecars = append(toSidecars, networkingv1.NetworkPolicyEgressRule{
			To: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: x.selector(role)}}}, Ports: ports,
		})
		spec := networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: x.selector(names.RoleAgent)}}}, Ports: ports,
			}},
		}
		if c := x.p.Container(role); c != nil && slices.ContainsFunc(c.Attachments, func(a names.Attachment) bool { return a.Network == names.NetEgress }) {
			spec.PolicyTypes = both
			spec.Egress = []networkingv1.NetworkPolicyEgressRule{{}}
		}
		policy(role, x.selector(role), spec)
	}
	policy(names.RoleAgent, x.selector(names.RoleAgent), networkingv1.NetworkPolicySpec{
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
		Egress:      toSidecars,
	})
}
