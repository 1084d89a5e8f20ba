package main

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// portScan dials every TCP port of host from first to last and prints
// "PORTS open=P,Q refused=N other=M": a refused port answered with a reset, other covers
// timeouts and any other error. Many dials run at once: a refusal on a bridge is instant.
func portScan(host string, first, last int) {
	var (
		mu             sync.Mutex
		open           []int
		refused, other int
		wg             sync.WaitGroup
	)
	ports := make(chan int)
	for range 256 {
		wg.Go(func() {
			for p := range ports {
				conn, err := net.DialTimeout("tcp", net.JoinHostPort(host, strconv.Itoa(p)), 2*time.Second)
				mu.Lock()
				switch {
				case err == nil:
					open = append(open, p)
					conn.Close()
				case errors.Is(err, syscall.ECONNREFUSED):
					refused++
				default:
					other++
				}
				mu.Unlock()
			}
		})
	}
	for p := first; p <= last; p++ {
		ports <- p
	}
	close(ports)
	wg.Wait()
	slices.Sort(open)
	s := make([]string, len(open))
	for i, p := range open {
		s[i] = strconv.Itoa(p)
	}
	fmt.Printf("PORTS open=%s refused=%d other=%d\n", strings.Join(s, ","), refused, other)
}
