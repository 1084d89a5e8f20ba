package egress

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bottle-dev/bottle/internal/testutil"
)

// testCA is a throwaway CA that signs leaf certificates for fake upstreams.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "bottle egress test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// leaf returns a server certificate for the DNS names plus 127.0.0.1.
func (ca *testCA) leaf(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// writeFile writes data into the test's temp dir and returns the path.
func (ca *testCA) file(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, ca.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// tlsUpstream is a loopback HTTPS server with a certificate for names, counting the
// ClientHellos it receives.
type tlsUpstream struct {
	*httptest.Server
	hellos atomic.Int64
	port   uint16
}

func newTLSUpstream(t testing.TB, ca *testCA, h http.Handler, names ...string) *tlsUpstream {
	t.Helper()
	u := &tlsUpstream{}
	u.Server = httptest.NewUnstartedServer(h)
	u.Config.ErrorLog = log.New(io.Discard, "", 0) // refused tunnels end handshakes early
	cert := ca.leaf(t, names...)
	u.TLS = &tls.Config{
		Certificates: []tls.Certificate{cert},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			u.hellos.Add(1)
			return nil, nil
		},
	}
	u.StartTLS()
	t.Cleanup(u.Close)
	u.port = portOf(t, u.Listener.Addr())
	return u
}

func portOf(t testing.TB, a net.Addr) uint16 {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return ap.Port()
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer = testutil.SyncBuffer

func jsonLogger(w *syncBuffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// mapResolver answers from a fixed table; unknown names fail like NXDOMAIN.
func mapResolver(m map[string][]string) Resolver {
	return func(_ context.Context, host string) ([]netip.Addr, error) {
		ss, ok := m[host]
		if !ok {
			return nil, fmt.Errorf("no such host %s (test resolver)", host)
		}
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out, nil
	}
}

// loopbackOnlyDial dials loopback addresses only; anything else fails the test and is
// never attempted (tests must not send traffic off the host).
func loopbackOnlyDial(t testing.TB, dials *atomic.Int64) DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		ap, err := netip.ParseAddrPort(addr)
		if err != nil || !ap.Addr().Unmap().IsLoopback() {
			t.Errorf("filter tried to dial non-loopback %q", addr)
			return nil, errors.New("test dialer: non-loopback address refused")
		}
		return (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
	}
}

// startFilter serves f on a loopback port until the test ends and returns its address.
func startFilter(t testing.TB, cfg FilterConfig, logger *slog.Logger) string {
	t.Helper()
	f, err := NewFilter(cfg, logger)
	if err != nil {
		t.Fatalf("NewFilter: %v", err)
	}
	return serveOnLoopback(t, f.Serve)
}

// startProxy serves the egress-proxy on a loopback port until the test ends.
func startProxy(t testing.TB, cfg ProxyConfig, env map[string]string, logger *slog.Logger) string {
	t.Helper()
	p, err := NewEgressProxy(cfg, func(k string) string { return env[k] }, logger)
	if err != nil {
		t.Fatalf("NewEgressProxy: %v", err)
	}
	return serveOnLoopback(t, p.Serve)
}

func serveOnLoopback(t testing.TB, serveFn func(context.Context, net.Listener) error) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveFn(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String()
}

type envMap map[string]string

func (e envMap) get(k string) string { return e[k] }
