package main

import (
	"os/exec"
	"strings"
	"testing"
)

// client-go's typed clientset (every Kubernetes API group) was about half of bottle's
// binary (issue 13), which every start hashes and mounts into the agent as its self-test
// wrapper: `bottle k8s` uses the dynamic client instead.
func TestBinaryLinksNoTypedClientset(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "k8s.io/client-go/kubernetes" || strings.HasPrefix(pkg, "k8s.io/client-go/kubernetes/") {
			t.Errorf("bottle links %s", pkg)
		}
	}
}
