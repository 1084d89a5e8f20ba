// Package selftest proves, from inside the agent's sandbox and before the agent's command
// runs, that the bottle is sealed: no default route, no resolver that answers, no direct
// TCP connection to the egress bridge's gateway (where the host keeps a canary listener),
// and a filter that answers and refuses a name outside the allowlist. The bottle binary is
// mounted read-only into the agent and runs as `bottle selftest --report FILE ... -- CMD`:
// it runs the checks, writes its report, then execs CMD (same env, cwd, uid and open
// files, so a terminal keeps working); a failed check exits with ExitFailed instead, and
// CMD never runs.
package selftest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Paths inside the agent's sandbox.
const (
	// Binary is where the bottle binary is mounted (read-only).
	Binary = "/.bottle/bottle"
	// Report is the report file: made by the host (ResetReport), mounted writable, and
	// overwritten in place, so writing it needs no inode or page of a full disk.
	Report = "/.bottle/selftest.json"
)

// ExitFailed is the exit status of a failed self-test (the agent's command never ran).
const ExitFailed = 121

// ReportSize is the report file's size: the host fills it with spaces, the report
// overwrites the start (JSON ignores the trailing spaces). It bounds what the host reads
// back, too: after the exec the agent owns the file.
const ReportSize = 8 << 10

// maxDetail bounds a check's detail, so that a report always fits ReportSize.
const maxDetail = 512

// ErrNoReport: the report file holds no complete report (yet).
var ErrNoReport = errors.New("no complete self-test report")

// The checks, by the name a failure reports.
const (
	CheckRoute    = "route"    // no default route (IPv4 or IPv6): nothing is routable off the bridge
	CheckResolver = "resolver" // no nameserver of /etc/resolv.conf answers
	CheckGateway  = "gateway"  // a TCP connection to the egress gateway (the host's canary port) fails
	CheckFilter   = "filter"   // the filter answers a CONNECT to a name outside the allowlist with a refusal
	// Host-side halves, checked by the runtime: the canary saw no connection, and the
	// bottle's firewall chain is in force (nothing inside the sandbox can tell it is gone
	// while there is no route).
	CheckCanary   = "canary"
	CheckFirewall = "firewall"
)

// checkTimeout bounds each check; a sealed bottle fails every probe at once (no route),
// so this is only reached when something is wrong or the filter is slow.
const checkTimeout = 2 * time.Second

// Config is what the agent-side checks probe.
type Config struct {
	// Gateway is the egress gateway's address and the port of the host's canary.
	Gateway netip.AddrPort
	// Filter is the filter's address on the internal network.
	Filter netip.AddrPort
	// Report is the report's path inside the sandbox.
	Report string
	// ResolvConf is the resolver config to probe (default /etc/resolv.conf).
	ResolvConf string
	// RouteFiles are the kernel route tables to read (default /proc/net/route and ipv6_route).
	RouteFiles []string
}

// Args is the agent's process args that run the self-test, then argv.
func (c Config) Args(argv []string) []string {
	return append([]string{Binary, "selftest", "--report", c.Report, "--gateway", c.Gateway.String(), "--filter", c.Filter.String(), "--"}, argv...)
}

// Check is the result of one check.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// Result is the self-test's report.
type Result struct {
	Passed bool `json:"passed"`
	// Failed names the first failed check (in the order of Checks).
	Failed string  `json:"failed,omitempty"`
	Checks []Check `json:"checks"`
	// Micros is how long the checks took, in microseconds.
	Micros int64 `json:"micros"`
}

// Failure is the failed check and its detail, for an error message.
func (r Result) Failure() string {
	for _, c := range r.Checks {
		if !c.OK {
			return fmt.Sprintf("check %s: %s", c.Name, c.Detail)
		}
	}
	return ""
}

// Run runs every agent-side check at once.
func Run(ctx context.Context, c Config) Result {
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	probe := fmt.Sprintf("selftest-%s.bottle.invalid", randomHex())
	checks := []struct {
		name string
		fn   func(context.Context) (string, error)
	}{
		{CheckRoute, func(context.Context) (string, error) { return noDefaultRoute(c.RouteFiles) }},
		{CheckResolver, func(ctx context.Context) (string, error) { return noResolver(ctx, c.ResolvConf, probe) }},
		{CheckGateway, func(ctx context.Context) (string, error) { return noConnection(ctx, c.Gateway) }},
		{CheckFilter, func(ctx context.Context) (string, error) { return filterRefuses(ctx, c.Filter, probe) }},
	}
	r := Result{Checks: make([]Check, len(checks))}
	var wg sync.WaitGroup
	for i, ch := range checks {
		wg.Go(func() {
			detail, err := ch.fn(ctx)
			if err != nil {
				detail = err.Error()
			}
			if len(detail) > maxDetail {
				detail = detail[:maxDetail]
			}
			r.Checks[i] = Check{Name: ch.name, OK: err == nil, Detail: detail}
		})
	}
	wg.Wait()
	r.Passed = true
	for _, ch := range r.Checks {
		if !ch.OK && r.Passed {
			r.Passed, r.Failed = false, ch.Name
		}
	}
	r.Micros = time.Since(t0).Microseconds()
	return r
}

// documentation addresses (RFC 5737, RFC 3849): a UDP "connect" to them only looks up a
// route; nothing is sent.
var (
	unroutable4 = netip.MustParseAddrPort("192.0.2.1:9")
	unroutable6 = netip.MustParseAddrPort("[2001:db8::1]:9")
)

// noDefaultRoute fails when a route table lists a default route, or when an address
// off the bridge is routable at all.
func noDefaultRoute(files []string) (string, error) {
	if files == nil {
		files = []string{"/proc/net/route", "/proc/net/ipv6_route"}
	}
	var read []string
	for _, f := range files {
		data, err := readBounded(f, 1<<20)
		if err != nil {
			continue // a kernel without that table (no IPv6) routes nothing by it
		}
		read = append(read, filepath.Base(f))
		if line, ok := defaultRoute(string(data)); ok {
			return "", fmt.Errorf("default route in %s: %s", f, line)
		}
	}
	for _, a := range []netip.AddrPort{unroutable4, unroutable6} {
		conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(a))
		if err == nil {
			conn.Close()
			return "", fmt.Errorf("%s is routable", a.Addr())
		}
	}
	return fmt.Sprintf("no default route (read %s); %s and %s unroutable", strings.Join(read, ", "), unroutable4.Addr(), unroutable6.Addr()), nil
}

// defaultRoute finds a default route in /proc/net/route (destination and mask 0) or
// /proc/net/ipv6_route (destination ::/0) text.
func defaultRoute(table string) (string, bool) {
	for line := range strings.Lines(table) {
		f := strings.Fields(line)
		switch {
		case len(f) >= 8 && f[1] == "00000000" && f[7] == "00000000": // Iface Destination ... Mask
			return strings.Join(f, " "), true
		case len(f) >= 10 && f[0] == strings.Repeat("0", 32) && f[1] == "00" && f[9] != "lo":
			return strings.Join(f, " "), true
		}
	}
	return "", false
}

// noResolver fails when a nameserver of the resolver config answers a query (for a
// name under .invalid, which no resolver forwards anywhere).
func noResolver(ctx context.Context, resolvConf, name string) (string, error) {
	if resolvConf == "" {
		resolvConf = "/etc/resolv.conf"
	}
	data, err := readBounded(resolvConf, 64<<10)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read %s: %w", resolvConf, err)
	}
	servers := nameservers(string(data))
	if len(servers) == 0 {
		return "no nameserver in " + resolvConf, nil
	}
	q, err := query(name)
	if err != nil {
		return "", err
	}
	for _, s := range servers {
		if answered(ctx, s, q) {
			return "", fmt.Errorf("nameserver %s answered", s)
		}
	}
	return fmt.Sprintf("nameservers %v do not answer", servers), nil
}

// nameservers lists the nameserver addresses of resolv.conf text (at most 3, as libc).
func nameservers(conf string) []netip.AddrPort {
	var out []netip.AddrPort
	for line := range strings.Lines(conf) {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" || len(out) == 3 {
			continue
		}
		if a, err := netip.ParseAddr(f[1]); err == nil {
			out = append(out, netip.AddrPortFrom(a.WithZone(""), 53))
		}
	}
	return out
}

func query(name string) ([]byte, error) {
	n, err := dnsmessage.NewName(name + ".")
	if err != nil {
		return nil, err
	}
	msg := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: 0xb077, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: n, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
	}
	return msg.Pack()
}

// answered sends q over UDP and reports whether anything came back in time.
func answered(ctx context.Context, server netip.AddrPort, q []byte) bool {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", server.String())
	if err != nil {
		return false
	}
	defer conn.Close()
	dl, _ := ctx.Deadline()
	_ = conn.SetDeadline(dl)
	if _, err := conn.Write(q); err != nil {
		return false
	}
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	return err == nil && n > 0
}

// noConnection fails when a TCP connection to a reaches a listener.
func noConnection(ctx context.Context, a netip.AddrPort) (string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", a.String())
	if err == nil {
		conn.Close()
		return "", fmt.Errorf("connected to %s", a)
	}
	return fmt.Sprintf("%s unreachable: %v", a, unwrapped(err)), nil
}

// filterRefuses fails unless the filter answers a CONNECT to name (outside any
// allowlist: .invalid) with a refusal. The filter refuses by name, before resolving.
func filterRefuses(ctx context.Context, filter netip.AddrPort, name string) (string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", filter.String())
	if err != nil {
		return "", fmt.Errorf("filter %s: %w", filter, unwrapped(err))
	}
	defer conn.Close()
	dl, _ := ctx.Deadline()
	_ = conn.SetDeadline(dl)
	target := name + ":443"
	if _, err := fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target); err != nil {
		return "", fmt.Errorf("filter %s: %w", filter, err)
	}
	req := &http.Request{Method: http.MethodConnect}
	resp, err := http.ReadResponse(bufio.NewReader(io.LimitReader(conn, 64<<10)), req)
	if err != nil {
		return "", fmt.Errorf("filter %s did not answer: %w", filter, unwrapped(err))
	}
	resp.Body.Close()
	if resp.StatusCode < 300 {
		return "", fmt.Errorf("filter %s admitted CONNECT %s: %s", filter, target, resp.Status)
	}
	return fmt.Sprintf("filter %s refused %s: %s", filter, target, resp.Status), nil
}

// unwrapped is the innermost error: "connect: network is unreachable" rather than the
// whole dial chain.
func unwrapped(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}

func randomHex() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ResetReport makes (or empties) the report file at path on the host: ReportSize spaces.
func ResetReport(path string) error {
	if err := os.WriteFile(path, bytes.Repeat([]byte(" "), ReportSize), 0o600); err != nil {
		return fmt.Errorf("self-test report %s: %w", path, err)
	}
	return nil
}

// WriteReport writes r over the start of the report file the host made, in place.
func WriteReport(path string, r Result) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if len(data) > ReportSize {
		return fmt.Errorf("self-test report %s: %d bytes, more than %d", path, len(data), ReportSize)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("self-test report %s: %w", path, err)
	}
	_, err = f.WriteAt(data, 0)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("self-test report %s: %w", path, err)
	}
	return nil
}

// ReadReport reads the report the agent side wrote (ErrNoReport while the file holds
// none, or only part of one). After the exec the agent owns the file, so it is
// untrusted: bounded, strict, and consistent with itself.
func ReadReport(path string) (Result, error) {
	var r Result
	data, err := readBounded(path, ReportSize+1)
	if err != nil {
		return r, err
	}
	if len(data) > ReportSize {
		return r, fmt.Errorf("self-test report %s: larger than %d bytes", path, ReportSize)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return r, ErrNoReport
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		var syntax *json.SyntaxError
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &syntax) {
			return r, fmt.Errorf("%w: %v", ErrNoReport, err) // being written, or garbage
		}
		return r, fmt.Errorf("self-test report %s: %w", path, err)
	}
	if len(bytes.TrimSpace(data[dec.InputOffset():])) > 0 {
		return r, fmt.Errorf("self-test report %s: data after the report", path)
	}
	failed := ""
	for _, c := range r.Checks {
		if !c.OK && failed == "" {
			failed = c.Name
		}
	}
	if len(r.Checks) == 0 || r.Passed != (failed == "") || r.Failed != failed {
		return r, fmt.Errorf("self-test report %s: inconsistent", path)
	}
	return r, nil
}

// Main is `bottle selftest --report FILE --gateway ADDR:PORT --filter ADDR:PORT -- CMD
// ARGS...`: it runs the checks, writes the report, and execs CMD when all passed. It
// returns only on failure: ExitFailed when a check failed, 127 when CMD cannot run.
func Main(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("selftest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c Config
	var gateway, filter string
	fs.StringVar(&c.Report, "report", "", "where to write the report")
	fs.StringVar(&gateway, "gateway", "", "egress gateway address:port (the host's canary)")
	fs.StringVar(&filter, "filter", "", "filter address:port")
	if err := fs.Parse(args); err != nil {
		return ExitFailed
	}
	argv := fs.Args()
	var err error
	if c.Gateway, err = netip.ParseAddrPort(gateway); err == nil {
		c.Filter, err = netip.ParseAddrPort(filter)
	}
	if err != nil || c.Report == "" || len(argv) == 0 {
		fmt.Fprintf(stderr, "bottle selftest: want --report FILE --gateway ADDR:PORT --filter ADDR:PORT -- CMD [ARGS] (%v)\n", err)
		return ExitFailed
	}
	r := Run(context.Background(), c)
	if err := WriteReport(c.Report, r); err != nil {
		fmt.Fprintf(stderr, "bottle self-test: %v\n", err)
		return ExitFailed
	}
	if !r.Passed {
		fmt.Fprintf(stderr, "bottle self-test failed, so the agent's command does not run: %s\n", r.Failure())
		return ExitFailed
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		fmt.Fprintf(stderr, "bottle: cannot run the agent's command: %v\n", err)
		return 127
	}
	err = syscall.Exec(path, argv, os.Environ())
	fmt.Fprintf(stderr, "bottle: exec %s: %v\n", path, err)
	return 127
}
