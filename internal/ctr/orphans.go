package ctr

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
)

// OrphanShim is a shim process of this containerd and namespace whose task containerd does
// not know: its create was abandoned when the client died half way (containerd cancels
// the create but the shim and its sandbox were already running).
type OrphanShim struct {
	Pid int
	// ID is the container ID the shim was started for.
	ID string
	// Children are its processes (runsc sandbox and gofer).
	Children []int
}

// OrphanShims lists the orphan shims of container IDs starting with idPrefix.
func (c *Client) OrphanShims(ctx context.Context, idPrefix string) ([]OrphanShim, error) {
	resp, err := c.c.TaskService().List(c.ctx(ctx), &tasksapi.ListTasksRequest{})
	if err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	known := map[string]bool{}
	for _, t := range resp.Tasks {
		known[t.ID] = true
	}
	procs, err := listProcs()
	if err != nil {
		return nil, err
	}
	var out []OrphanShim
	for _, p := range procs {
		if !strings.HasPrefix(filepath.Base(p.argv[0]), "containerd-shim") {
			continue
		}
		ns, id, addr := flagValue(p.argv, "-namespace"), flagValue(p.argv, "-id"), flagValue(p.argv, "-address")
		if ns != c.namespace || addr != strings.TrimPrefix(c.address, "unix://") || !strings.HasPrefix(id, idPrefix) || known[id] {
			continue
		}
		s := OrphanShim{Pid: p.pid, ID: id}
		for _, q := range procs {
			if q.ppid == p.pid {
				s.Children = append(s.Children, q.pid)
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// KillOrphanShim ends an orphan shim: runsc deletes its sandbox (state included), then the
// remaining processes are killed, by PID.
func (c *Client) KillOrphanShim(ctx context.Context, s OrphanShim) error {
	var errs []error
	for _, pid := range s.Children {
		argv, _ := readArgv(pid)
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if root := flagValue(argv, "--root"); root != "" && filepath.Base(exe) == "runsc" {
			// Best effort: the kill below ends the processes either way.
			_ = exec.CommandContext(ctx, exe, "--root", root, "delete", "--force", s.ID).Run()
			break
		}
	}
	for _, pid := range append(s.Children, s.Pid) {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("kill orphan shim process %d of %s: %w", pid, s.ID, err))
		}
	}
	return errors.Join(errs...)
}

type proc struct {
	pid, ppid int
	argv      []string
}

func listProcs() ([]proc, error) {
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		return nil, err
	}
	var out []proc
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		argv, err := readArgv(pid)
		if err != nil || len(argv) == 0 {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(d, "stat"))
		if err != nil {
			continue
		}
		// Fields after the last ')': state, ppid, ...
		s := string(stat)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		out = append(out, proc{pid: pid, ppid: ppid, argv: argv})
	}
	return out, nil
}

func readArgv(pid int) ([]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00"), nil
}

// flagValue returns the value of a flag written "-name value" or "-name=value".
func flagValue(argv []string, name string) string {
	for i, a := range argv {
		if a == name && i+1 < len(argv) {
			return argv[i+1]
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}
