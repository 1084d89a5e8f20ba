package selftest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultRoute(t *testing.T) {
	v4 := "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n" +
		"eth0\t000AD50A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
	if _, ok := defaultRoute(v4); ok {
		t.Error("a subnet route reads as a default route")
	}
	if line, ok := defaultRoute(v4 + "eth0\t00000000\t010AD50A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"); !ok || !strings.HasPrefix(line, "eth0 00000000") {
		t.Errorf("the default route is not found: %q", line)
	}
	v6 := "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n" +
		"00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n"
	if _, ok := defaultRoute(v6); ok {
		t.Error("link-local and lo's unreachable route read as a default route")
	}
	if _, ok := defaultRoute(v6 + "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n"); !ok {
		t.Error("the IPv6 default route is not found")
	}
}

func TestNameservers(t *testing.T) {
	got := nameservers("# c\nnameserver 10.0.0.1\nsearch x\nnameserver fe80::1%eth0\nnameserver bad\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n")
	want := "[10.0.0.1:53 [fe80::1]:53 1.1.1.1:53]"
	if fmt.Sprint(got) != want {
		t.Errorf("nameservers %v, want %v (at most 3, as libc)", got, want)
	}
	if got := nameservers("# bottle: no DNS inside the bottle\n"); len(got) != 0 {
		t.Errorf("bottle's resolv.conf has nameservers %v", got)
	}
}

// TestAnswered: a server that answers is found; one that does not answer is not (both
// on loopback).
func TestAnswered(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	q, err := query("selftest-x.bottle.invalid")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if !answered(ctx, pc.LocalAddr().(*net.UDPAddr).AddrPort(), q) {
		t.Error("an answering resolver was not found")
	}
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	if answered(ctx2, silent.LocalAddr().(*net.UDPAddr).AddrPort(), q) {
		t.Error("a silent resolver answered")
	}
}

func TestNoConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	if _, err := noConnection(context.Background(), addr); err == nil {
		t.Error("a listening canary passed")
	}
	ln.Close()
	if _, err := noConnection(context.Background(), addr); err != nil {
		t.Errorf("a closed port failed: %v", err)
	}
}

// fakeFilter answers every request with status.
func fakeFilter(t *testing.T, status string) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 1024)
			_, _ = c.Read(buf)
			fmt.Fprintf(c, "HTTP/1.1 %s\r\nContent-Length: 0\r\n\r\n", status)
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func TestFilterRefuses(t *testing.T) {
	ctx := context.Background()
	if d, err := filterRefuses(ctx, fakeFilter(t, "403 Forbidden"), "x.bottle.invalid"); err != nil {
		t.Errorf("a refusing filter failed: %v", err)
	} else if !strings.Contains(d, "403") {
		t.Errorf("detail %q does not say the status", d)
	}
	if _, err := filterRefuses(ctx, fakeFilter(t, "200 Connection established"), "x.bottle.invalid"); err == nil {
		t.Error("an admitting filter passed")
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	gone := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	if _, err := filterRefuses(ctx, gone, "x.bottle.invalid"); err == nil {
		t.Error("an absent filter passed")
	}
}

// TestReportRoundTrip: a report survives the round trip through the file the host made;
// an empty or half-written file is no report yet; one that lies about itself, has
// unknown fields or trailing data, or is too large is refused (the agent owns the file
// after the exec).
func TestReportRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "selftest.json")
	if err := WriteReport(p, Result{}); err == nil {
		t.Error("a report was written without the host's file")
	}
	if err := ResetReport(p); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadReport(p); !errors.Is(err, ErrNoReport) {
		t.Errorf("the empty file: %v, want ErrNoReport", err)
	}
	r := Result{Passed: false, Failed: CheckRoute, Checks: []Check{{Name: CheckRoute, Detail: "default route"}, {Name: CheckFilter, OK: true}}}
	if err := WriteReport(p, r); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Size() != ReportSize {
		t.Errorf("the report file changed size: %v %v", fi.Size(), err)
	}
	got, err := ReadReport(p)
	if err != nil || got.Failed != CheckRoute || got.Passed || !strings.Contains(got.Failure(), "check route: default route") {
		t.Errorf("read back %+v, %v", got, err)
	}
	for name, tc := range map[string]struct {
		body    string
		pending bool
	}{
		"half written":               {`{"passed":true,"checks":[{"name":"rou`, true},
		"passed with a failed check": {`{"passed":true,"checks":[{"name":"route","ok":false,"detail":""}],"micros":1}`, false},
		"no checks":                  {`{"passed":true,"checks":[],"micros":1}`, false},
		"unknown field":              {`{"passed":true,"checks":[{"name":"route","ok":true,"detail":""}],"micros":1,"extra":1}`, false},
		"trailing data":              {`{"passed":true,"checks":[{"name":"route","ok":true,"detail":""}],"micros":1} {}`, false},
		"too large":                  {`{"passed":true,"checks":[{"name":"route","ok":true,"detail":"` + strings.Repeat("x", ReportSize) + `"}],"micros":1}`, false},
	} {
		if err := os.WriteFile(p, []byte(tc.body+"   "), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := ReadReport(p)
		switch {
		case err == nil:
			t.Errorf("%s: accepted", name)
		case errors.Is(err, ErrNoReport) != tc.pending:
			t.Errorf("%s: %v; pending %v, want %v", name, err, errors.Is(err, ErrNoReport), tc.pending)
		}
	}
}

func TestArgs(t *testing.T) {
	c := Config{Gateway: netip.MustParseAddrPort("10.0.1.1:4444"), Filter: netip.MustParseAddrPort("10.0.0.2:8888"), Report: "/.bottle/report/selftest.json"}
	got := strings.Join(c.Args([]string{"sh", "-c", "echo hi"}), " ")
	want := Binary + " selftest --report /.bottle/report/selftest.json --gateway 10.0.1.1:4444 --filter 10.0.0.2:8888 -- sh -c echo hi"
	if got != want {
		t.Errorf("args %q, want %q", got, want)
	}
}
