package k8s

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	nodev1 "k8s.io/api/node/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"
)

// doctorCluster is a fake cluster whose Pods finish as a node would: the canary gets
// Ready (unless the image is missing), the allowed probe connects, the denied probe
// connects only when policies are not enforced.
func doctorCluster(t *testing.T, runtimeClass bool, imageMissing, enforced bool) *Client {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := errors.Join(corev1.AddToScheme(scheme), networkingv1.AddToScheme(scheme), nodev1.AddToScheme(scheme)); err != nil {
		t.Fatal(err)
	}
	var objs []runtime.Object
	if runtimeClass {
		objs = append(objs, &nodev1.RuntimeClass{ObjectMeta: metav1.ObjectMeta{Name: "gvisor"}, Handler: "runsc"})
	}
	dyn := dynamicfake.NewSimpleDynamicClient(scheme, objs...)
	dyn.PrependReactor("create", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		obj := a.(k8stesting.CreateAction).GetObject().(*unstructured.Unstructured)
		switch a.GetResource().Resource {
		case "services":
			unstructured.SetNestedField(obj.Object, "10.254.0.9", "spec", "clusterIP")
		case "pods":
			name := obj.GetName()
			switch {
			case strings.HasSuffix(name, "-canary") && !imageMissing:
				unstructured.SetNestedSlice(obj.Object, []any{map[string]any{"type": "Ready", "status": "True"}}, "status", "conditions")
			case strings.HasSuffix(name, "-canary"):
				unstructured.SetNestedField(obj.Object, "Pending", "status", "phase")
			case strings.HasSuffix(name, "-allowed"), strings.HasSuffix(name, "-denied") && !enforced:
				unstructured.SetNestedField(obj.Object, "Succeeded", "status", "phase")
			default:
				unstructured.SetNestedField(obj.Object, "Failed", "status", "phase")
			}
		}
		return false, nil, nil
	})
	return &Client{dyn: dyn, ns: "agents"}
}

func TestDoctor(t *testing.T) {
	for _, c := range []struct {
		name                            string
		runtimeClass, missing, enforced bool
		want                            map[string]bool
		detail                          string
	}{
		{"healthy", true, false, true, map[string]bool{"runtimeclass": true, "sidecar-image": true, "networkpolicy": true}, ""},
		{"not enforced", true, false, false, map[string]bool{"runtimeclass": true, "sidecar-image": true, "networkpolicy": false}, "NOT enforced"},
		{"no runtime class", false, false, true, map[string]bool{"runtimeclass": false, "sidecar-image": true, "networkpolicy": true}, ""},
		{"image missing", true, true, true, map[string]bool{"runtimeclass": true, "sidecar-image": false, "networkpolicy": false}, "no canary"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl := doctorCluster(t, c.runtimeClass, c.missing, c.enforced)
			checks, err := cl.Doctor(context.Background(), DoctorOptions{RuntimeClass: "gvisor", SidecarImage: "registry.test/bottle:1", Timeout: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]bool{}
			for _, ch := range checks {
				got[ch.Name] = ch.OK
				if !ch.OK && c.detail != "" && ch.Name == "networkpolicy" && !strings.Contains(ch.Detail, c.detail) {
					t.Errorf("%s: detail %q, want it to say %q", ch.Name, ch.Detail, c.detail)
				}
			}
			for k, v := range c.want {
				if got[k] != v {
					t.Errorf("check %s: ok=%t, want %t (%+v)", k, got[k], v, checks)
				}
			}
			// Everything the run made is gone.
			for _, r := range []schema.GroupVersionResource{pods, services, networkPolicies} {
				items, err := cl.list(context.Background(), r, LabelDoctor)
				if err != nil {
					t.Fatal(err)
				}
				if len(items) != 0 {
					t.Errorf("%d %s left: %v", len(items), r.Resource, itemNames(items))
				}
			}
		})
	}
}
