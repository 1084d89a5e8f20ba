package hostenv

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
)

// HostUser names the person behind this bottle command: SUDO_USER when bottle runs
// through sudo (lookup reads the host env snapshot), else the name of the process's
// user, else its uid.
func HostUser(lookup func(string) (string, bool)) string {
	if lookup != nil {
		if u, ok := lookup("SUDO_USER"); ok && u != "" {
			return u + " (sudo)"
		}
	}
	uid := os.Getuid()
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return fmt.Sprintf("uid %d", uid)
}
