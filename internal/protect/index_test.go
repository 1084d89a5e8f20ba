package protect

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// gitIndex makes a repository with git (object format format), two files and the
// gitlinks links, at index version v, and returns its index file's bytes.
func gitIndex(t testing.TB, format string, v int, links ...string) []byte {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatal("git is needed (scripts/setup-host.sh installs it)")
	}
	dir := t.TempDir()
	run := func(args ...string) string {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	run("init", "-q", "--object-format="+format)
	for _, f := range []string{"a.go", "dir/deeper/b.go", "dir/deeper/c.go"} {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run("add", ".")
	blob := run("hash-object", "-w", "a.go")
	for _, l := range links {
		run("update-index", "--add", "--cacheinfo", "160000,"+blob+","+l)
	}
	run("update-index", "--index-version", string(rune('0'+v)))
	data, err := os.ReadFile(filepath.Join(dir, ".git/index"))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestGitlinks: the gitlinks git itself wrote are found at every index version and with
// both hash lengths.
func TestGitlinks(t *testing.T) {
	for _, format := range []string{"sha1", "sha256"} {
		for _, v := range []int{2, 3, 4} {
			data := gitIndex(t, format, v, "dir/deeper/sub", "vendor/lib")
			got, err := Gitlinks(data)
			if err != nil {
				t.Fatalf("%s v%d: %v", format, v, err)
			}
			if want := []string{"dir/deeper/sub", "vendor/lib"}; !reflect.DeepEqual(got, want) {
				t.Errorf("%s v%d: gitlinks %q, want %q", format, v, got, want)
			}
		}
	}
	if got, err := Gitlinks(gitIndex(t, "sha1", 4)); err != nil || len(got) != 0 {
		t.Errorf("no gitlinks: %q, %v", got, err)
	}
}

// TestGitlinksHostile: a truncated, lying or looping index is an error, never a panic
// or a long loop.
func TestGitlinksHostile(t *testing.T) {
	good := gitIndex(t, "sha1", 4, "sub")
	huge := append([]byte(nil), good...)
	binary.BigEndian.PutUint32(huge[8:12], 0xffffffff)
	badStrip := append([]byte(nil), good[:12]...)
	badStrip = append(badStrip, make([]byte, 62)...)
	badStrip = append(badStrip, 0x7f, 'x', 0) // strips 127 bytes of an empty path
	for name, data := range map[string][]byte{
		"empty":         nil,
		"not an index":  []byte("hello world, not an index"),
		"truncated":     good[:len(good)/2],
		"no checksum":   good[:len(good)-21],
		"huge count":    huge,
		"strip too far": badStrip,
		"version 9":     append([]byte("DIRC\x00\x00\x00\x09\x00\x00\x00\x00"), make([]byte, 40)...),
	} {
		if got, err := Gitlinks(data); err == nil {
			t.Errorf("%s: parsed as %q", name, got)
		}
	}
}

func FuzzGitlinks(f *testing.F) {
	f.Add([]byte("DIRC\x00\x00\x00\x02\x00\x00\x00\x01"))
	for _, v := range []int{2, 3, 4} {
		f.Add(gitIndex(f, "sha1", v, "a/sub", "b"))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		links, err := Gitlinks(data)
		if err == nil && len(links) > maxGitlinks {
			t.Fatalf("%d gitlinks, more than the bound", len(links))
		}
		for _, l := range links {
			if len(l) > maxIndexPath {
				t.Fatalf("path of %d bytes", len(l))
			}
		}
	})
}
