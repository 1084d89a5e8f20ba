// Package hostenv gathers the host facts a plan needs (working directory, resolver,
// randomness) so internal/plan can stay pure.
package hostenv

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"syscall"

	"github.com/bottle-dev/bottle/internal/hostfile"
)

// NewSuffix returns 6 random lowercase hex digits for a bottle identity.
func NewSuffix() (string, error) {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("read random bytes: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// SidecarResolvConf returns a resolv.conf for sidecars that leave the bottle: the host's
// own, unless it points at a loopback stub resolver (unreachable from a container's
// netns), then systemd-resolved's upstream list.
func SidecarResolvConf() (string, error) {
	for _, p := range []string{"/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"} {
		data, err := hostfile.Read(p, hostfile.MaxResolvConf)
		if err != nil {
			continue
		}
		if servers := nameservers(data); len(servers) > 0 && !allLoopback(servers) {
			return string(data), nil
		}
	}
	return "", fmt.Errorf("no usable DNS resolver found in /etc/resolv.conf or /run/systemd/resolve/resolv.conf; sidecars that leave the bottle need one")
}

func nameservers(data []byte) []netip.Addr {
	var out []netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil {
				out = append(out, a)
			}
		}
	}
	return out
}

func allLoopback(addrs []netip.Addr) bool {
	for _, a := range addrs {
		if !a.IsLoopback() {
			return false
		}
	}
	return true
}

// Dir returns the owner and permission bits of path (ok false when it cannot be read).
func Dir(path string) (uid, gid, perm uint32, ok bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, 0, 0, false
	}
	return st.Uid, st.Gid, st.Mode & 0o7777, true
}
