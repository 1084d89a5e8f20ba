package e2e

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// k8sUpstream is the Kubernetes tests' fake internet: HTTP (80) and HTTPS (443) servers
// of this test process listening inside a network namespace the test made, at
// upstreamAddr, behind a veth whose host end routes to it. Unlike an address on a host
// bridge (delivered locally), traffic from the cluster's Pods to it is forwarded, so it
// passes the hooks where the node enforces NetworkPolicy.
type k8sUpstream struct {
	caFile string
	mu     sync.Mutex
	seen   []http.Header
}

func (u *k8sUpstream) headers() []http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]http.Header(nil), u.seen...)
}

// newK8sUpstream makes the namespace (netns bk8s-up, veth bk8s-uph/bk8s-upn) and its
// servers for names (the certificate's), all removed when the test ends.
func newK8sUpstream(t *testing.T, names ...string) *k8sUpstream {
	t.Helper()
	const ns, hostIf, nsIf = "bk8s-up", "bk8s-uph", "bk8s-upn"
	exec.Command("ip", "netns", "del", ns).Run() // an earlier run's
	exec.Command("ip", "link", "del", hostIf).Run()
	refuseShadowing(t, upstreamAddr.Masked())
	hostAddr := netip.PrefixFrom(upstreamAddr.Masked().Addr().Next().Next(), upstreamAddr.Bits()) // .2: the namespace's gateway
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", hostIf).Run()
		exec.Command("ip", "netns", "del", ns).Run()
	})
	for _, args := range [][]string{
		{"netns", "add", ns},
		{"link", "add", hostIf, "type", "veth", "peer", "name", nsIf},
		{"link", "set", nsIf, "netns", ns},
		{"addr", "add", hostAddr.String(), "dev", hostIf},
		{"link", "set", hostIf, "up"},
		{"-n", ns, "addr", "add", upstreamAddr.String(), "dev", nsIf},
		{"-n", ns, "link", "set", nsIf, "up"},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "route", "add", "default", "via", hostAddr.Addr().String()},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	u := &k8sUpstream{}
	caPEM, cert := testCA(t, names...)
	u.caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(u.caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen = append(u.seen, r.Header.Clone())
		u.mu.Unlock()
		fmt.Fprintf(w, "UPSTREAM-OK host=%s\n", r.Host)
	})
	for _, port := range []int{80, 443} {
		ln := listenInNetns(t, "/var/run/netns/"+ns, netip.AddrPortFrom(upstreamAddr.Addr(), uint16(port)).String())
		if port == 443 {
			ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
		}
		srv := &http.Server{Handler: mux, ErrorLog: log.New(io.Discard, "", 0)}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	return u
}

// listenInNetns opens a TCP listener in the network namespace at nsPath: the socket
// belongs to the namespace it was made in, whichever thread accepts on it later.
func listenInNetns(t *testing.T, nsPath, addr string) net.Listener {
	t.Helper()
	type result struct {
		ln  net.Listener
		err error
	}
	done := make(chan result)
	go func() {
		// The thread is left locked (and so discarded) if it cannot return to its own
		// namespace.
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			done <- result{err: err}
			return
		}
		defer self.Close()
		target, err := os.Open(nsPath)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- result{err: fmt.Errorf("setns %s: %w", nsPath, err)}
			return
		}
		ln, err := net.Listen("tcp", addr)
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		done <- result{ln, err}
	}()
	r := <-done
	if r.err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, nsPath, r.err)
	}
	t.Cleanup(func() { r.ln.Close() })
	return r.ln
}

// lineOf returns the rest of the first line of log that starts with label.
func lineOf(log, label string) string {
	for _, l := range strings.Split(log, "\n") {
		if rest, ok := strings.CutPrefix(l, label); ok {
			return strings.TrimSpace(rest)
		}
	}
	return ""
}
