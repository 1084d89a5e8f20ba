// Package canary is what the Kubernetes doctor's Pods run from the sidecar image
// (bottle-sidecar's `canary serve|dial`): a banner server behind a Service, and the
// probes that try to reach it. It imports no Kubernetes client, so the sidecar binary
// stays small.
package canary

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// Port is where the canary Pod listens; Banner what it says.
const (
	Port   = 8080
	Banner = "BOTTLE-CANARY"
)

// Serve is the doctor's canary: it answers each connection on port with
// Banner.
func Serve(port string) error {
	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		return fmt.Errorf("canary: %w", err)
	}
	for {
		conn, err := ln.Accept()
		if err != nil {
			return fmt.Errorf("canary: %w", err)
		}
		conn.Write([]byte(Banner + "\n"))
		conn.Close()
	}
}

// ErrUnreached is Dial's error when no try reached the canary.
var ErrUnreached = errors.New("the canary was not reached")

// Dial tries (tries times, a second apart) to read the canary's banner at addr.
func Dial(addr string, tries int) error {
	for i := 0; i < tries; i++ {
		if i > 0 {
			time.Sleep(time.Second)
		}
		conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			continue
		}
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		line, _ := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if strings.TrimSpace(line) == Banner {
			return nil
		}
	}
	return fmt.Errorf("%w at %s after %d tries", ErrUnreached, addr, tries)
}
