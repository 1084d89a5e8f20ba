package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// userns re-executes the probe in a new user and mount namespace (Go cannot unshare a
// user namespace in its multithreaded process, so the clone flags go on the exec), as
// root there, to try undoing the read-only mounts of the workspace dir's .git/hooks and
// .git/config. It prints CLONE REFUSED when the namespaces cannot be made.
func userns(dir string) {
	self, err := os.Executable()
	if err != nil {
		fail(err.Error())
	}
	cmd := exec.Command(self, "userns-inner", dir)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:                 syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
		UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
		GidMappingsEnableSetgroups: false,
	}
	if err := cmd.Run(); err != nil {
		if _, ok := err.(*exec.ExitError); ok {
			fmt.Println("INNER FAILED", err)
			return
		}
		fmt.Println("CLONE REFUSED", err)
	}
}

// usernsInner runs in the new namespaces: each try prints DONE or REFUSED errno. A write
// that works after an unmount or a mount reaches the host's file.
func usernsInner(dir string) {
	hooks, config := filepath.Join(dir, ".git/hooks"), filepath.Join(dir, ".git/config")
	write := func(what, file string) {
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o755)
		if err == nil {
			_, err = f.WriteString("#!/bin/sh\n# userns\n")
			f.Close()
		}
		report(what, err)
	}
	// A private propagation first, as unshare(1) does, so nothing here leaks back.
	report("make-rprivate", unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""))
	report("umount-hooks", unix.Unmount(hooks, 0))
	report("umount-detach-hooks", unix.Unmount(hooks, unix.MNT_DETACH))
	report("umount-config", unix.Unmount(config, 0))
	report("umount-detach-config", unix.Unmount(config, unix.MNT_DETACH))
	report("remount-rw-hooks", unix.Mount("", hooks, "", unix.MS_REMOUNT|unix.MS_BIND, ""))
	write("write-hook", filepath.Join(hooks, "pre-commit"))
	write("write-config", config)
	// A bind of the workspace without its submounts shows the dirs beneath the
	// read-only mounts.
	under, err := os.MkdirTemp("", "userns")
	if err != nil {
		fmt.Println("ERROR", err)
		return
	}
	report("bind-workspace-nonrecursive", unix.Mount(dir, under, "", unix.MS_BIND, ""))
	write("write-hook-via-bind", filepath.Join(under, ".git/hooks/pre-commit"))
	report("bind-git-nonrecursive", unix.Mount(filepath.Join(dir, ".git"), under, "", unix.MS_BIND, ""))
	write("write-hook-via-git-bind", filepath.Join(under, "hooks/pre-commit"))
	report("tmpfs-over-hooks", unix.Mount("tmpfs", hooks, "tmpfs", 0, ""))
	write("write-hook-after-tmpfs", filepath.Join(hooks, "pre-commit"))
}
