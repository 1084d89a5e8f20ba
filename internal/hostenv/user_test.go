package hostenv

import (
	"os"
	"os/user"
	"strconv"
	"testing"
)

func TestHostUser(t *testing.T) {
	sudo := func(k string) (string, bool) { return map[string]string{"SUDO_USER": "alice"}[k], k == "SUDO_USER" }
	if got := HostUser(sudo); got != "alice (sudo)" {
		t.Errorf("through sudo: %q", got)
	}
	want := "uid " + strconv.Itoa(os.Getuid())
	if u, err := user.LookupId(strconv.Itoa(os.Getuid())); err == nil {
		want = u.Username
	}
	for _, lookup := range []func(string) (string, bool){nil, func(string) (string, bool) { return "", false }} {
		if got := HostUser(lookup); got != want {
			t.Errorf("without sudo: %q, want %q", got, want)
		}
	}
}
