package canary

import (
	"errors"
	"net"
	"strconv"
	"testing"
)

func TestCanary(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	go Serve(strconv.Itoa(port))
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := Dial(addr, 20); err != nil {
		t.Errorf("dial the canary: %v", err)
	}
	// A closed port is not the canary.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()
	if err := Dial(closedAddr, 1); !errors.Is(err, ErrUnreached) {
		t.Errorf("dial a closed port: %v, want ErrUnreached", err)
	}
}
