package ociarchive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// testTree makes a small root file system with every kind of entry WriteDirLayer keeps.
func testTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "rootfs")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755))
	must(os.Mkdir(filepath.Join(root, "tmp"), 0o755))
	must(os.Chmod(filepath.Join(root, "tmp"), 0o777|os.ModeSticky))
	must(os.Mkdir(filepath.Join(root, "private"), 0o700))
	must(os.Chmod(filepath.Join(root, "private"), 0o700))
	must(os.WriteFile(filepath.Join(root, "usr/bin/tool"), []byte("#!/bin/sh\necho tool\n"), 0o755))
	must(os.Chmod(filepath.Join(root, "usr/bin/tool"), 0o755|os.ModeSetuid))
	must(os.Link(filepath.Join(root, "usr/bin/tool"), filepath.Join(root, "usr/bin/tool-alias")))
	must(os.WriteFile(filepath.Join(root, "private/secret"), nil, 0o600))
	// Mode 0 is readable only by root; without root the test keeps the owner's read bit.
	must(os.Chmod(filepath.Join(root, "private/secret"), secretMode()))
	must(os.Symlink("usr/bin", filepath.Join(root, "bin")))
	must(syscall.Mkfifo(filepath.Join(root, "tmp/fifo"), 0o600))
	if os.Geteuid() == 0 {
		must(os.Lchown(filepath.Join(root, "private"), 1000, 1001))
		must(os.Lchown(filepath.Join(root, "bin"), 7, 8))
	}
	return root
}

func secretMode() os.FileMode {
	if os.Geteuid() == 0 {
		return 0
	}
	return 0o400
}

func TestWriteDirFile(t *testing.T) {
	root := testTree(t)
	out := filepath.Join(t.TempDir(), "image.tar")
	refs := []string{"bottle.test/dir:latest", "bottle.test/dir:1.2.3"}
	img := DirImage{Refs: refs, Root: root, Config: Config{Env: []string{"HOME=/home/agent"}, Cmd: []string{"claude"}, WorkingDir: "/workspace", User: "1000:1000"}}
	res, err := WriteDirFile(out, img)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	files, _ := readTar(t, bytes.NewReader(data))
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 1 {
		t.Errorf("temporary files left next to the archive: %v", entries)
	}

	var index ocispec.Index
	if err := json.Unmarshal(files[ocispec.ImageIndexFile], &index); err != nil {
		t.Fatal(err)
	}
	if len(index.Manifests) != len(refs) {
		t.Fatalf("index has %d manifests, want one per ref (%d)", len(index.Manifests), len(refs))
	}
	for i, m := range index.Manifests {
		if m.Digest != res.Manifest.Digest {
			t.Errorf("index entry %d names %s, want %s", i, m.Digest, res.Manifest.Digest)
		}
		if m.Annotations[ocispec.AnnotationRefName] != refs[i] || m.Annotations[ContainerdImageNameAnnotation] != refs[i] {
			t.Errorf("index entry %d annotations %v, want ref %s", i, m.Annotations, refs[i])
		}
	}
	var manifest ocispec.Manifest
	if err := json.Unmarshal(blob(t, files, res.Manifest.Digest), &manifest); err != nil {
		t.Fatal(err)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(blob(t, files, manifest.Config.Digest), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Config.User != "1000:1000" || cfg.Config.WorkingDir != "/workspace" || strings.Join(cfg.Config.Cmd, " ") != "claude" || strings.Join(cfg.Config.Env, " ") != "HOME=/home/agent" {
		t.Errorf("config %+v does not carry the DirImage config", cfg.Config)
	}
	layer := blob(t, files, manifest.Layers[0].Digest)
	if int64(len(layer)) != res.Layer.Size {
		t.Errorf("layer has %d bytes, descriptor says %d", len(layer), res.Layer.Size)
	}
	gz, err := gzip.NewReader(bytes.NewReader(layer))
	if err != nil {
		t.Fatal(err)
	}
	var raw bytes.Buffer
	if _, err := raw.ReadFrom(gz); err != nil {
		t.Fatal(err)
	}
	if got := digest.FromBytes(raw.Bytes()); len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != got || res.DiffID != got {
		t.Errorf("diff IDs %v / %s, want %s", cfg.RootFS.DiffIDs, res.DiffID, got)
	}

	layerFiles, hdrs := readTar(t, bytes.NewReader(raw.Bytes()))
	byName := map[string]*tar.Header{}
	var names []string
	for _, h := range hdrs {
		byName[h.Name] = h
		names = append(names, h.Name)
		if !h.ModTime.Equal(Epoch) {
			t.Errorf("%s has mtime %s, want %s", h.Name, h.ModTime, Epoch)
		}
	}
	wantOrder := "bin private/ private/secret tmp/ tmp/fifo usr/ usr/bin/ usr/bin/tool usr/bin/tool-alias"
	if got := strings.Join(names, " "); got != wantOrder {
		t.Errorf("layer entries %q, want %q", got, wantOrder)
	}
	check := func(name string, typ byte, mode int64) *tar.Header {
		t.Helper()
		h := byName[name]
		if h == nil {
			t.Fatalf("layer has no %s", name)
		}
		if h.Typeflag != typ || h.Mode != mode {
			t.Errorf("%s: type %q mode %o, want type %q mode %o", name, h.Typeflag, h.Mode, typ, mode)
		}
		return h
	}
	check("tmp/", tar.TypeDir, 0o1777)
	check("private/", tar.TypeDir, 0o700)
	check("private/secret", tar.TypeReg, int64(secretMode()))
	check("tmp/fifo", tar.TypeFifo, 0o600)
	check("usr/bin/tool", tar.TypeReg, 0o4755)
	if string(layerFiles["usr/bin/tool"]) != "#!/bin/sh\necho tool\n" {
		t.Errorf("usr/bin/tool content %q", layerFiles["usr/bin/tool"])
	}
	if h := check("usr/bin/tool-alias", tar.TypeLink, 0o4755); h.Linkname != "usr/bin/tool" {
		t.Errorf("hard link points at %q, want usr/bin/tool", h.Linkname)
	}
	if h := check("bin", tar.TypeSymlink, 0o777); h.Linkname != "usr/bin" {
		t.Errorf("symlink target %q, want usr/bin", h.Linkname)
	}
	if os.Geteuid() == 0 {
		if h := byName["private/"]; h.Uid != 1000 || h.Gid != 1001 {
			t.Errorf("private/ owner %d:%d, want 1000:1001", h.Uid, h.Gid)
		}
		if h := byName["bin"]; h.Uid != 7 || h.Gid != 8 {
			t.Errorf("bin owner %d:%d, want 7:8", h.Uid, h.Gid)
		}
	}
	for _, h := range hdrs {
		if h.Uname != "" || h.Gname != "" {
			t.Errorf("%s carries owner names %q:%q; only numeric ids belong in the layer", h.Name, h.Uname, h.Gname)
		}
	}
}

func TestWriteDirLayerIgnoresModificationTimes(t *testing.T) {
	root := testTree(t)
	var first bytes.Buffer
	desc1, diff1, err := WriteDirLayer(&first, root)
	if err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(filepath.Join(root, "usr/bin/tool"), later, later); err != nil {
		t.Fatal(err)
	}
	var second bytes.Buffer
	desc2, diff2, err := WriteDirLayer(&second, root)
	if err != nil {
		t.Fatal(err)
	}
	if desc1.Digest != desc2.Digest || diff1 != diff2 || !bytes.Equal(first.Bytes(), second.Bytes()) {
		t.Errorf("layers differ after an mtime change: %s/%s vs %s/%s", desc1.Digest, diff1, desc2.Digest, diff2)
	}
	if desc1.Digest != digest.FromBytes(first.Bytes()) || desc1.Size != int64(first.Len()) {
		t.Errorf("descriptor %+v does not match the %d bytes written", desc1, first.Len())
	}
}

func TestWriteDirFileRejects(t *testing.T) {
	out := filepath.Join(t.TempDir(), "image.tar")
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, img := range map[string]DirImage{
		"no ref":      {Root: t.TempDir()},
		"empty ref":   {Refs: []string{""}, Root: t.TempDir()},
		"missing dir": {Refs: []string{"bottle.test/x:1"}, Root: filepath.Join(t.TempDir(), "missing")},
		"not a dir":   {Refs: []string{"bottle.test/x:1"}, Root: file},
	} {
		if _, err := WriteDirFile(out, img); err == nil {
			t.Errorf("%s: WriteDirFile succeeded, want an error", name)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("%s: archive %s written despite the error", name, out)
		}
	}
}
