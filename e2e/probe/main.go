// Command probe runs inside test agents (static, copied into the test image): it tries
// network paths and scans for secrets, printing one result line per call.
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: probe get|connect|post|mcp|postjson|sse|tcp|udp|dns|scan|setid|userns|portscan|bench ...")
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "get": // get PROXY URL: plain HTTP through a forward proxy
		need(args, 2)
		proxy, _ := url.Parse(args[0])
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(proxy)}}
		resp, err := c.Get(args[1])
		if err != nil {
			fmt.Println("ERROR", err)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		fmt.Println("STATUS", resp.StatusCode, strings.TrimSpace(firstLine(body)))
	case "connect": // connect PROXYHOST:PORT TARGET:PORT SNI: CONNECT, then a TLS handshake
		need(args, 3)
		connect(args[0], args[1], args[2])
	case "post": // post URL: through no proxy, with the placeholder credential the agent has
		need(args, 1)
		req, _ := http.NewRequest("POST", args[0], strings.NewReader(`{"hello":"upstream"}`))
		req.Header.Set("Authorization", "Bearer "+os.Getenv("CLAUDE_CODE_OAUTH_TOKEN"))
		req.Header.Set("x-api-key", "agent-key")
		req.Header.Set("Cookie", "session=agent")
		resp, err := (&http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}).Do(req)
		if err != nil {
			fmt.Println("ERROR", err)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		fmt.Println("STATUS", resp.StatusCode, strings.TrimSpace(firstLine(body)))
	case "sse": // sse URL: prints when the first and the last event arrived
		need(args, 1)
		sse(args[0])
	case "tcp": // tcp ADDR:PORT
		need(args, 1)
		conn, err := net.DialTimeout("tcp", args[0], 2*time.Second)
		if err != nil {
			fmt.Println("BLOCKED", err)
			return
		}
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		line, _ := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		fmt.Println("REACHED", strings.TrimSpace(line))
	case "udp": // udp ADDR:PORT: sends datagrams; the test's server counts what arrives
		need(args, 1)
		conn, err := net.Dial("udp", args[0])
		if err != nil {
			fmt.Println("BLOCKED", err)
			return
		}
		for range 3 {
			if _, err := conn.Write([]byte("probe")); err != nil {
				fmt.Println("BLOCKED", err)
				return
			}
		}
		fmt.Println("SENT")
	case "dns": // dns NAME
		need(args, 1)
		addrs, err := net.LookupHost(args[0])
		if err != nil {
			fmt.Println("NORESOLVE", err)
			return
		}
		fmt.Println("RESOLVED", addrs)
	case "mcp": // mcp URL TOOL JSONARGS: one MCP tool call over Streamable HTTP
		need(args, 3)
		mcpCall(args[0], args[1], args[2])
	case "postjson": // postjson URL BODY: a plain JSON POST, no proxy
		need(args, 2)
		postJSON(args[0], args[1])
	case "scan": // scan: reads the secret from stdin (never argv); scans every other
		// process's environ and cmdline, and every file
		need(args, 0)
		secret, err := io.ReadAll(os.Stdin)
		if err != nil || len(bytes.TrimSpace(secret)) == 0 {
			fail("scan: no secret on stdin")
		}
		scan(string(bytes.TrimSpace(secret)))
	case "setid": // setid DIR: tries to give new files in DIR the set-user-ID or set-group-ID bit
		need(args, 1)
		setID(args[0])
	case "portscan": // portscan HOST FIRST LAST: which TCP ports of HOST accept a connection
		need(args, 3)
		first, err1 := strconv.Atoi(args[1])
		last, err2 := strconv.Atoi(args[2])
		if err1 != nil || err2 != nil || first < 1 || last > 65535 || first > last {
			fail("portscan: want HOST FIRST LAST, ports 1-65535")
		}
		portScan(args[0], first, last)
	case "userns": // userns DIR: in a new user and mount namespace, tries to undo DIR's read-only .git mounts
		need(args, 1)
		userns(args[0])
	case "userns-inner": // (userns, inside the namespaces)
		need(args, 1)
		usernsInner(args[0])
	case "bench": // bench BASE PROXY|- DIAL|-: the data-path measurements of bench-proxy
		need(args, 3)
		bench(args[0], args[1], args[2])
	default:
		fail("unknown probe " + os.Args[1])
	}
}

func connect(proxy, target, sni string) {
	conn, err := net.DialTimeout("tcp", proxy, 5*time.Second)
	if err != nil {
		fmt.Println("ERROR", err)
		return
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		fmt.Println("ERROR", err)
		return
	}
	if resp.StatusCode != 200 {
		fmt.Println("REFUSED", resp.StatusCode)
		return
	}
	// The test's upstream uses a test CA the agent does not hold: only the filter's
	// decision on the SNI is under test here.
	tc := tls.Client(conn, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		fmt.Println("TLSFAIL", err)
		return
	}
	fmt.Println("TLSOK")
}

func sse(u string) {
	req, _ := http.NewRequest("GET", u, nil)
	req.Header.Set("Authorization", "Bearer "+os.Getenv("CLAUDE_CODE_OAUTH_TOKEN"))
	start := time.Now()
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}}).Do(req)
	if err != nil {
		fmt.Println("ERROR", err)
		return
	}
	defer resp.Body.Close()
	var first, last time.Duration
	n := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data:") {
			if n == 0 {
				first = time.Since(start)
			}
			last = time.Since(start)
			n++
		}
	}
	fmt.Printf("SSE events=%d first_ms=%d last_ms=%d\n", n, first.Milliseconds(), last.Milliseconds())
}

func scan(secret string) {
	needle := []byte(secret)
	found := 0
	report := func(where string) {
		found++
		fmt.Println("FOUND", where)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	self := fmt.Sprintf("/proc/%d", os.Getpid())
	for _, p := range procs {
		if p == self {
			continue
		}
		for _, f := range []string{"environ", "cmdline"} {
			if data, err := os.ReadFile(filepath.Join(p, f)); err == nil && bytes.Contains(data, needle) {
				report(filepath.Join(p, f))
			}
		}
	}
	filepath.WalkDir("/", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && (path == "/proc" || path == "/sys" || path == "/dev") {
			return filepath.SkipDir
		}
		if d.Type().IsRegular() {
			if data, err := os.ReadFile(path); err == nil && bytes.Contains(data, needle) {
				report(path)
			}
		}
		return nil
	})
	if found == 0 {
		fmt.Println("CLEAN")
	}
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}

func need(args []string, n int) {
	if len(args) != n {
		fail(fmt.Sprintf("want %d arguments, got %d", n, len(args)))
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "probe:", msg)
	os.Exit(2)
}

// report prints one try's result: DONE, or REFUSED and the error.
func report(what string, err error) {
	if err != nil {
		fmt.Println(what, "REFUSED", err)
	} else {
		fmt.Println(what, "DONE")
	}
}

// setID tries every way a program gives a file the set-ID bits (chmod, fchmod, creating
// a file or directory with them) and prints one line per try: DONE or REFUSED errno. The
// first try, a plain chmod, is the control that must work.
func setID(dir string) {
	file := filepath.Join(dir, "setid-chmod")
	if err := os.WriteFile(file, []byte("#!/bin/sh\n"), 0o644); err != nil {
		fmt.Println("ERROR", err)
		return
	}
	report("chmod-0755", syscall.Chmod(file, 0o755))
	report("chmod-4755", syscall.Chmod(file, 0o4755))
	report("chmod-2755", syscall.Chmod(file, 0o2755))
	fd, err := syscall.Open(filepath.Join(dir, "setid-fchmod"), syscall.O_CREAT|syscall.O_WRONLY, 0o755)
	if err == nil {
		report("fchmod-6755", syscall.Fchmod(fd, 0o6755))
		syscall.Close(fd)
	} else {
		fmt.Println("ERROR", err)
	}
	fd, err = syscall.Open(filepath.Join(dir, "setid-open"), syscall.O_CREAT|syscall.O_WRONLY, 0o4755)
	if err == nil {
		syscall.Close(fd)
	}
	report("open-4755", err)
	report("mkdir-2755", syscall.Mkdir(filepath.Join(dir, "setid-dir"), 0o2755))
}
