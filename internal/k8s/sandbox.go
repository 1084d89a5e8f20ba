package k8s

import (
	"maps"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// The agent's formats: a Pod of its own, or a kubernetes-sigs/agent-sandbox Sandbox whose
// controller makes that Pod.
const (
	FormatPod          = "pod"
	FormatAgentSandbox = "agent-sandbox"
)

// AgentFormats are the values of Options.AgentFormat.
var AgentFormats = []string{FormatPod, FormatAgentSandbox}

// sandboxes is agent-sandbox's resource (its CRD is the cluster admin's to install).
var sandboxes = schema.GroupVersionResource{Group: "agents.x-k8s.io", Version: "v1alpha1", Resource: "sandboxes"}

// Sandbox is the part of agent-sandbox's Sandbox (agents.x-k8s.io/v1alpha1) an export
// fills: the Pod template. Its Go module is not a dependency: these few fields are
// written here from the API reference (docs/api.md of kubernetes-sigs/agent-sandbox).
// Replicas, lifecycle and volumeClaimTemplates are left to their defaults (one Pod, no
// expiry, no claims: the workspace is an emptyDir as in the Pod format).
type Sandbox struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              SandboxSpec `json:"spec"`
}

// SandboxSpec is a Sandbox's spec.
type SandboxSpec struct {
	PodTemplate SandboxPodTemplate `json:"podTemplate"`
}

// SandboxPodTemplate is the Pod the Sandbox's controller makes: of its metadata only
// labels and annotations are used.
type SandboxPodTemplate struct {
	Metadata SandboxPodMetadata `json:"metadata"`
	Spec     corev1.PodSpec     `json:"spec"`
}

// SandboxPodMetadata is a Sandbox Pod template's metadata.
type SandboxPodMetadata struct {
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// sandboxOf wraps the agent Pod in a Sandbox of the same name and labels: the controller
// names its Pod after the Sandbox, and the Pod keeps the labels the NetworkPolicies and
// `bottle k8s ps|rm` select it by.
func sandboxOf(pod *corev1.Pod) *Sandbox {
	return &Sandbox{
		TypeMeta:   metav1.TypeMeta{APIVersion: sandboxes.GroupVersion().String(), Kind: "Sandbox"},
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, Labels: maps.Clone(pod.Labels)},
		Spec: SandboxSpec{PodTemplate: SandboxPodTemplate{
			Metadata: SandboxPodMetadata{Labels: maps.Clone(pod.Labels), Annotations: maps.Clone(pod.Annotations)},
			Spec:     *pod.Spec.DeepCopy(),
		}},
	}
}
