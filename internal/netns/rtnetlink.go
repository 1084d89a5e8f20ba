package netns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// deleteLink deletes the interface with index ifIndex through rtnetlink (RTM_DELLINK), which
// saves an `ip` process per interface. A missing interface is fine.
func deleteLink(ifIndex int) error {
	err := rtnl(unix.RTM_DELLINK, 0, ifInfoMsg(ifIndex))
	if err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete interface %d: %w", ifIndex, err)
	}
	return nil
}

// addBridge creates the bridge name, down (RTM_NEWLINK); the error wraps EEXIST if an
// interface of that name exists.
func addBridge(name string) error {
	body := ifInfoMsg(0)
	body = append(body, rtAttr(unix.IFLA_IFNAME, append([]byte(name), 0))...)
	body = append(body, rtAttr(unix.IFLA_LINKINFO, rtAttr(unix.IFLA_INFO_KIND, []byte("bridge")))...)
	if err := rtnl(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body); err != nil {
		return fmt.Errorf("create bridge %s: %w", name, err)
	}
	return nil
}

// ifInfoMsg is a struct ifinfomsg: family, pad, type, index, flags, change.
func ifInfoMsg(ifIndex int) []byte {
	b := make([]byte, unix.SizeofIfInfomsg)
	b[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(b[4:], uint32(int32(ifIndex)))
	return b
}

// rtAttr encodes one netlink attribute, padded to 4 bytes.
func rtAttr(typ uint16, data []byte) []byte {
	n := unix.SizeofRtAttr + len(data)
	b := make([]byte, (n+unix.NLA_ALIGNTO-1) & ^(unix.NLA_ALIGNTO-1))
	binary.NativeEndian.PutUint16(b[0:], uint16(n))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[unix.SizeofRtAttr:], data)
	return b
}

// rtnl sends one rtnetlink request and returns the kernel's answer to it as an error
// (nil when it succeeded).
func rtnl(typ, flags uint16, body []byte) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open rtnetlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("bind rtnetlink socket: %w", err)
	}

	const seq = 1
	ne := binary.NativeEndian
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	msg = append(msg, body...)
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], typ)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|flags)
	ne.PutUint32(msg[8:], seq)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send rtnetlink request: %w", err)
	}

	buf := make([]byte, 4096)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read rtnetlink answer: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("parse rtnetlink answer: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			if len(m.Data) < 4 {
				return errors.New("short rtnetlink answer")
			}
			if errno := -int32(ne.Uint32(m.Data)); errno != 0 {
				return unix.Errno(errno)
			}
			return nil
		}
	}
}

// sysLink is an interface as seen in /sys/class/net.
type sysLink struct {
	name  string
	index int
}

// readIfIndex returns the index of interface name, or 0 when it does not exist or is being
// deleted (sysfs then answers EINVAL).
func readIfIndex(name string) (int, error) {
	b, err := os.ReadFile(filepath.Join("/sys/class/net", name, "ifindex"))
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENODEV) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read index of interface %s: %w", name, err)
	}
	i, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("read index of interface %s: %w", name, err)
	}
	return i, nil
}

// bridgePorts lists the ports of bridge (none when the bridge does not exist).
func bridgePorts(bridge string) ([]sysLink, error) {
	entries, err := os.ReadDir(filepath.Join("/sys/class/net", bridge, "brif"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list ports of bridge %s: %w", bridge, err)
	}
	var out []sysLink
	for _, e := range entries {
		i, err := readIfIndex(e.Name())
		if err != nil {
			return nil, err
		}
		if i != 0 {
			out = append(out, sysLink{name: e.Name(), index: i})
		}
	}
	return out, nil
}
