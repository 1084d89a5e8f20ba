// Package ociarchive writes OCI image layout tar archives (oci-layout, index.json,
// blobs/sha256/...) holding one single-layer image built from a list of files.
//
// The output is deterministic: entries are sorted, owners and modification times are
// fixed, and gzip headers carry no name or time, so the same input always yields the
// same manifest digest. That keeps bottle's own sidecar image name stable per executable.
package ociarchive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	specsgo "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ContainerdImageNameAnnotation is the index annotation containerd reads first for an
// imported image's name; it holds the full reference.
const ContainerdImageNameAnnotation = "io.containerd.image.name"

// Epoch is the fixed modification time of every entry, so digests do not depend on
// when or where the archive was written.
var Epoch = time.Unix(0, 0).UTC()

// EntryType says what an Entry creates in the layer.
type EntryType int

const (
	// File is a regular file with Content or the contents of the host file Source.
	File EntryType = iota
	// Dir is a directory.
	Dir
	// Symlink is a symbolic link to Target.
	Symlink
)

// Entry is one file system object of the image's single layer.
type Entry struct {
	// Path inside the image, e.g. "/bin/busybox". Leading "/" is optional.
	Path string
	Type EntryType
	// Mode holds the permission bits plus os.ModeSetuid/ModeSetgid/ModeSticky. Zero means
	// 0644 for files, 0755 for directories (symlinks are always 0777).
	Mode os.FileMode
	// Content is the data of a File. Used when Source is empty.
	Content []byte
	// Source is a host file whose contents become the File (read when writing).
	Source string
	// Target is the destination of a Symlink.
	Target   string
	UID, GID int
}

// Config is the part of the OCI image config the caller controls.
type Config struct {
	Env        []string
	Entrypoint []string
	Cmd        []string
	WorkingDir string
	User       string
	Labels     map[string]string
}

// Image describes the image to write.
type Image struct {
	// Ref is the full image reference (e.g. "bottle.local/sidecar:v1-0123abcd"); it is
	// recorded in index.json as org.opencontainers.image.ref.name and io.containerd.image.name.
	Ref     string
	Entries []Entry
	Config  Config
	// OS and Architecture default to linux and the running architecture.
	OS           string
	Architecture string
}

// Result names the blobs that were written.
type Result struct {
	Manifest ocispec.Descriptor
	Config   ocispec.Descriptor
	Layer    ocispec.Descriptor
	// DiffID is the digest of the uncompressed layer tar.
	DiffID digest.Digest
}

// WriteFile writes the archive of img to path (created or truncated, mode 0644).
func WriteFile(path string, img Image) (Result, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return Result{}, fmt.Errorf("create OCI archive %s: %w", path, err)
	}
	res, err := Write(f, img)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close OCI archive %s: %w", path, cerr)
	}
	return res, err
}

// Write writes the OCI image layout tar of img to w.
func Write(w io.Writer, img Image) (Result, error) {
	if img.Ref == "" {
		return Result{}, errors.New("OCI archive: image reference is empty")
	}
	entries, err := normalize(img.Entries)
	if err != nil {
		return Result{}, fmt.Errorf("OCI archive %s: %w", img.Ref, err)
	}

	layer, diffID, err := buildLayer(entries)
	if err != nil {
		return Result{}, fmt.Errorf("OCI archive %s: layer: %w", img.Ref, err)
	}
	layerDesc := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageLayerGzip,
		Digest:    digest.FromBytes(layer),
		Size:      int64(len(layer)),
	}

	layerBytes := func(w io.Writer) error {
		_, err := w.Write(layer)
		return err
	}
	res, err := writeLayout(w, []string{img.Ref}, img.OS, img.Architecture, img.Config, layerDesc, diffID, layerBytes)
	if err != nil {
		return Result{}, fmt.Errorf("OCI archive %s: %w", img.Ref, err)
	}
	return res, nil
}

// writeLayout writes the OCI image layout tar of a single-layer image to w: the config
// and manifest made from the arguments, an index naming the manifest once per ref, and
// the layer blob, whose bytes writeLayer copies.
func writeLayout(w io.Writer, refs []string, osName, arch string, c Config, layerDesc ocispec.Descriptor, diffID digest.Digest, writeLayer func(io.Writer) error) (Result, error) {
	if osName == "" {
		osName = "linux"
	}
	if arch == "" {
		arch = runtime.GOARCH
	}
	platform := ocispec.Platform{OS: osName, Architecture: arch}
	created := Epoch
	cfg := ocispec.Image{
		Created:  &created,
		Platform: platform,
		Config: ocispec.ImageConfig{
			Env:        c.Env,
			Entrypoint: c.Entrypoint,
			Cmd:        c.Cmd,
			WorkingDir: c.WorkingDir,
			User:       c.User,
			Labels:     c.Labels,
		},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{diffID}},
	}
	cfgBlob, err := json.Marshal(cfg)
	if err != nil {
		return Result{}, fmt.Errorf("config: %w", err)
	}
	cfgDesc := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageConfig,
		Digest:    digest.FromBytes(cfgBlob),
		Size:      int64(len(cfgBlob)),
	}

	manifest := ocispec.Manifest{
		Versioned: specsgo.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    cfgDesc,
		Layers:    []ocispec.Descriptor{layerDesc},
	}
	manifestBlob, err := json.Marshal(manifest)
	if err != nil {
		return Result{}, fmt.Errorf("manifest: %w", err)
	}
	manifestDesc := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageManifest,
		Digest:    digest.FromBytes(manifestBlob),
		Size:      int64(len(manifestBlob)),
		Platform:  &platform,
	}

	index := ocispec.Index{
		Versioned: specsgo.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
	}
	// One index entry per name: containerd's import creates one image record for each.
	for _, ref := range refs {
		d := manifestDesc
		d.Annotations = map[string]string{
			ocispec.AnnotationRefName:     ref,
			ContainerdImageNameAnnotation: ref,
		}
		index.Manifests = append(index.Manifests, d)
	}
	indexBlob, err := json.Marshal(index)
	if err != nil {
		return Result{}, fmt.Errorf("index: %w", err)
	}
	layoutBlob, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return Result{}, fmt.Errorf("oci-layout: %w", err)
	}

	tw := tar.NewWriter(w)
	writeDir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: Epoch, Format: tar.FormatPAX})
	}
	writeHeader := func(name string, size int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size, ModTime: Epoch, Format: tar.FormatPAX})
	}
	writeBlob := func(name string, data []byte) error {
		if err := writeHeader(name, int64(len(data))); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	blobName := func(d digest.Digest) string { return "blobs/sha256/" + d.Encoded() }
	steps := []func() error{
		func() error { return writeBlob(ocispec.ImageLayoutFile, layoutBlob) },
		func() error { return writeBlob(ocispec.ImageIndexFile, indexBlob) },
		func() error { return writeDir("blobs/") },
		func() error { return writeDir("blobs/sha256/") },
		func() error { return writeBlob(blobName(cfgDesc.Digest), cfgBlob) },
		func() error { return writeBlob(blobName(manifestDesc.Digest), manifestBlob) },
		func() error {
			if err := writeHeader(blobName(layerDesc.Digest), layerDesc.Size); err != nil {
				return err
			}
			return writeLayer(tw)
		},
		tw.Close,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return Result{}, fmt.Errorf("write: %w", err)
		}
	}
	return Result{Manifest: manifestDesc, Config: cfgDesc, Layer: layerDesc, DiffID: diffID}, nil
}

// normalize cleans paths, rejects invalid or duplicate entries, adds missing parent
// directories and sorts the entries so parents come first.
func normalize(in []Entry) ([]Entry, error) {
	byPath := make(map[string]Entry, len(in))
	for _, e := range in {
		p, err := cleanPath(e.Path)
		if err != nil {
			return nil, err
		}
		if _, dup := byPath[p]; dup {
			return nil, fmt.Errorf("entry %q appears twice", e.Path)
		}
		switch e.Type {
		case File:
			if e.Content != nil && e.Source != "" {
				return nil, fmt.Errorf("file %q has both Content and Source", e.Path)
			}
		case Dir:
		case Symlink:
			if e.Target == "" {
				return nil, fmt.Errorf("symlink %q has no target", e.Path)
			}
		default:
			return nil, fmt.Errorf("entry %q has unknown type %d", e.Path, e.Type)
		}
		e.Path = p
		byPath[p] = e
	}
	for p := range byPath {
		for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
			if parent, ok := byPath[dir]; ok {
				if parent.Type != Dir {
					return nil, fmt.Errorf("entry %q is inside %q, which is not a directory", p, dir)
				}
				continue
			}
			byPath[dir] = Entry{Path: dir, Type: Dir}
		}
	}
	out := make([]Entry, 0, len(byPath))
	for _, e := range byPath {
		out = append(out, e)
	}
	// Sorting by path puts every directory before its contents.
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

func cleanPath(p string) (string, error) {
	if p == "" {
		return "", errors.New("entry with empty path")
	}
	if strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("entry path %q contains NUL", p)
	}
	for _, part := range strings.Split(strings.Trim(p, "/"), "/") {
		if part == ".." {
			return "", fmt.Errorf("entry path %q has a .. element", p)
		}
	}
	c := strings.TrimPrefix(path.Clean("/"+p), "/")
	if c == "" {
		return "", fmt.Errorf("entry path %q names the root directory", p)
	}
	return c, nil
}

// buildLayer returns the gzip-compressed layer and the digest of the uncompressed tar.
func buildLayer(entries []Entry) ([]byte, digest.Digest, error) {
	var compressed bytes.Buffer
	// gzip.NewWriter leaves Name and ModTime empty: the compressed bytes depend only on input.
	gz, err := gzip.NewWriterLevel(&compressed, gzip.BestSpeed)
	if err != nil {
		return nil, "", err
	}
	diffHash := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(gz, diffHash))
	for _, e := range entries {
		if err := writeEntry(tw, e); err != nil {
			return nil, "", fmt.Errorf("entry %s: %w", e.Path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	if err := gz.Close(); err != nil {
		return nil, "", err
	}
	return compressed.Bytes(), digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(diffHash.Sum(nil))), nil
}

// tarMode is tarPermissions(m), or def when m has no permission bits at all.
func tarMode(m os.FileMode, def int64) int64 {
	if m&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky) == 0 {
		return def
	}
	return tarPermissions(m)
}

func writeEntry(tw *tar.Writer, e Entry) error {
	hdr := &tar.Header{
		Name:    e.Path,
		Uid:     e.UID,
		Gid:     e.GID,
		ModTime: Epoch,
		Format:  tar.FormatPAX,
	}
	switch e.Type {
	case Dir:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
		hdr.Mode = tarMode(e.Mode, 0o755)
		return tw.WriteHeader(hdr)
	case Symlink:
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = e.Target
		hdr.Mode = 0o777
		return tw.WriteHeader(hdr)
	}
	hdr.Typeflag = tar.TypeReg
	hdr.Mode = tarMode(e.Mode, 0o644)
	if e.Source == "" {
		hdr.Size = int64(len(e.Content))
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err := tw.Write(e.Content)
		return err
	}
	f, err := os.Open(e.Source)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("source %s is not a regular file", e.Source)
	}
	hdr.Size = st.Size()
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	n, err := io.Copy(tw, f)
	if err != nil {
		return fmt.Errorf("copy %s: %w", e.Source, err)
	}
	if n != hdr.Size {
		return fmt.Errorf("source %s changed size while being read", e.Source)
	}
	return nil
}
