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
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open rtnetlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("bind rtnetlink socket: %w", err)
	}

	const seq = 1
	msg := make([]byte, unix.SizeofNlMsghdr+unix.SizeofIfInfomsg)
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], unix.RTM_DELLINK)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	ne.PutUint32(msg[8:], seq)
	// ifinfomsg: family, pad, type, index, flags, change
	msg[unix.SizeofNlMsghdr] = unix.AF_UNSPEC
	ne.PutUint32(msg[unix.SizeofNlMsghdr+4:], uint32(int32(ifIndex)))
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send RTM_DELLINK for interface %d: %w", ifIndex, err)
	}

	buf := make([]byte, 4096)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read RTM_DELLINK answer for interface %d: %w", ifIndex, err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("parse RTM_DELLINK answer for interface %d: %w", ifIndex, err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			if len(m.Data) < 4 {
				return fmt.Errorf("short RTM_DELLINK answer for interface %d", ifIndex)
			}
			switch errno := -int32(ne.Uint32(m.Data)); {
			case errno == 0, unix.Errno(errno) == unix.ENODEV:
				return nil
			default:
				return fmt.Errorf("delete interface %d: %w", ifIndex, unix.Errno(errno))
			}
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
