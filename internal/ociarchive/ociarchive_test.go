package ociarchive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// readTar returns the regular files of a tar (name -> data) and all headers in order.
func readTar(t *testing.T, r io.Reader) (map[string][]byte, []*tar.Header) {
	t.Helper()
	files := map[string][]byte{}
	var hdrs []*tar.Header
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		hdrs = append(hdrs, h)
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("read %s: %v", h.Name, err)
			}
			files[h.Name] = b
		}
	}
	return files, hdrs
}

func blob(t *testing.T, files map[string][]byte, d digest.Digest) []byte {
	t.Helper()
	b, ok := files["blobs/sha256/"+d.Encoded()]
	if !ok {
		t.Fatalf("blob %s missing", d)
	}
	if got := digest.FromBytes(b); got != d {
		t.Fatalf("blob %s has digest %s", d, got)
	}
	return b
}

func testImage(t *testing.T) Image {
	src := filepath.Join(t.TempDir(), "host-file")
	if err := os.WriteFile(src, []byte("from the host\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return Image{
		Ref: "bottle.test/unit:1",
		Entries: []Entry{
			{Path: "/usr/bin/tool", Type: File, Mode: 0o755, Source: src},
			{Path: "etc/motd", Type: File, Content: []byte("hi\n")},
			{Path: "/bin/sh", Type: Symlink, Target: "/usr/bin/tool"},
			{Path: "/tmp", Type: Dir, Mode: 0o777 | os.ModeSticky},
		},
		Config: Config{Env: []string{"PATH=/usr/bin", "A=b"}, Cmd: []string{"/bin/sh"}},
	}
}

func TestWriteLayout(t *testing.T) {
	var buf bytes.Buffer
	res, err := Write(&buf, testImage(t))
	if err != nil {
		t.Fatal(err)
	}
	files, _ := readTar(t, &buf)

	var layout ocispec.ImageLayout
	if err := json.Unmarshal(files[ocispec.ImageLayoutFile], &layout); err != nil || layout.Version != ocispec.ImageLayoutVersion {
		t.Fatalf("oci-layout = %q (%v)", files[ocispec.ImageLayoutFile], err)
	}
	var index ocispec.Index
	if err := json.Unmarshal(files[ocispec.ImageIndexFile], &index); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if len(index.Manifests) != 1 {
		t.Fatalf("index has %d manifests", len(index.Manifests))
	}
	md := index.Manifests[0]
	if md.Annotations[ocispec.AnnotationRefName] != "bottle.test/unit:1" || md.Annotations[ContainerdImageNameAnnotation] != "bottle.test/unit:1" {
		t.Fatalf("index annotations = %v", md.Annotations)
	}
	if md.Digest != res.Manifest.Digest || md.Platform == nil || md.Platform.OS != "linux" || md.Platform.Architecture != runtime.GOARCH {
		t.Fatalf("index descriptor = %+v, result %+v", md, res.Manifest)
	}

	var manifest ocispec.Manifest
	if err := json.Unmarshal(blob(t, files, md.Digest), &manifest); err != nil {
		t.Fatal(err)
	}
	if manifest.MediaType != ocispec.MediaTypeImageManifest || len(manifest.Layers) != 1 || manifest.Layers[0].MediaType != ocispec.MediaTypeImageLayerGzip {
		t.Fatalf("manifest = %+v", manifest)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(blob(t, files, manifest.Config.Digest), &cfg); err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Config.Env, ",") != "PATH=/usr/bin,A=b" || cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH {
		t.Fatalf("config = %+v", cfg)
	}

	layer := blob(t, files, manifest.Layers[0].Digest)
	zr, err := gzip.NewReader(bytes.NewReader(layer))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != digest.FromBytes(raw) || res.DiffID != cfg.RootFS.DiffIDs[0] {
		t.Fatalf("diff ids %v, uncompressed layer %s", cfg.RootFS.DiffIDs, digest.FromBytes(raw))
	}

	content, hdrs := readTar(t, bytes.NewReader(raw))
	var names []string
	for _, h := range hdrs {
		names = append(names, h.Name)
		if !h.ModTime.Equal(Epoch) || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d", h.Name, h.ModTime, h.Uid, h.Gid)
		}
	}
	want := "bin/,bin/sh,etc/,etc/motd,tmp/,usr/,usr/bin/,usr/bin/tool"
	if got := strings.Join(names, ","); got != want {
		t.Fatalf("layer entries\n got %s\nwant %s", got, want)
	}
	byName := map[string]*tar.Header{}
	for _, h := range hdrs {
		byName[h.Name] = h
	}
	if h := byName["tmp/"]; h.Mode != 0o1777 {
		t.Errorf("tmp mode %o", h.Mode)
	}
	if h := byName["usr/"]; h.Mode != 0o755 || h.Typeflag != tar.TypeDir {
		t.Errorf("implicit parent usr/: mode %o type %c", h.Mode, h.Typeflag)
	}
	if h := byName["bin/sh"]; h.Typeflag != tar.TypeSymlink || h.Linkname != "/usr/bin/tool" {
		t.Errorf("symlink %+v", h)
	}
	if h := byName["usr/bin/tool"]; h.Mode != 0o755 || string(content["usr/bin/tool"]) != "from the host\n" {
		t.Errorf("tool mode %o content %q", h.Mode, content["usr/bin/tool"])
	}
	if h := byName["etc/motd"]; h.Mode != 0o644 || string(content["etc/motd"]) != "hi\n" {
		t.Errorf("motd mode %o content %q", h.Mode, content["etc/motd"])
	}
}

func TestWriteIsDeterministic(t *testing.T) {
	img := testImage(t)
	var a, b bytes.Buffer
	ra, err := Write(&a, img)
	if err != nil {
		t.Fatal(err)
	}
	// Entry order must not matter.
	img.Entries[0], img.Entries[3] = img.Entries[3], img.Entries[0]
	rb, err := Write(&b, img)
	if err != nil {
		t.Fatal(err)
	}
	if ra.Manifest.Digest != rb.Manifest.Digest || !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatalf("two writes differ: %s vs %s", ra.Manifest.Digest, rb.Manifest.Digest)
	}
	img.Entries = append(img.Entries, Entry{Path: "/extra", Content: []byte("x")})
	var c bytes.Buffer
	rc, err := Write(&c, img)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Manifest.Digest == ra.Manifest.Digest {
		t.Fatal("different content gave the same digest")
	}
}

func TestWriteRejectsInvalidEntries(t *testing.T) {
	cases := map[string][]Entry{
		"duplicate":          {{Path: "/a", Content: []byte("1")}, {Path: "a", Content: []byte("2")}},
		"dotdot":             {{Path: "/a/../../etc/passwd", Content: []byte("x")}},
		"root":               {{Path: "/", Type: Dir}},
		"inside a file":      {{Path: "/a", Content: []byte("x")}, {Path: "/a/b", Content: []byte("y")}},
		"content and source": {{Path: "/a", Content: []byte("x"), Source: "/etc/hostname"}},
		"symlink no target":  {{Path: "/a", Type: Symlink}},
		"missing source":     {{Path: "/a", Source: "/nonexistent/file"}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Write(io.Discard, Image{Ref: "bottle.test/bad:1", Entries: entries})
			if err == nil {
				t.Fatal("Write accepted invalid entries")
			}
			if !strings.Contains(err.Error(), "bottle.test/bad:1") {
				t.Errorf("error does not name the image: %v", err)
			}
		})
	}
	if _, err := Write(io.Discard, Image{}); err == nil {
		t.Fatal("Write accepted an empty reference")
	}
}

func TestBusyboxAndSidecarImages(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "exe")
	ca := filepath.Join(dir, "ca.crt")
	for _, f := range []string{exe, ca} {
		if err := os.WriteFile(f, []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, img := range []Image{BusyboxImage("bottle.test/busybox:1", exe), SidecarImage("bottle.local/sidecar:1", exe, ca)} {
		out := filepath.Join(dir, "img.tar")
		if _, err := WriteFile(out, img); err != nil {
			t.Fatalf("%s: %v", img.Ref, err)
		}
		f, err := os.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		files, _ := readTar(t, f)
		f.Close()
		if len(files) != 5 { // oci-layout, index.json, config, manifest, layer
			t.Fatalf("%s: %d files in archive", img.Ref, len(files))
		}
	}
}
