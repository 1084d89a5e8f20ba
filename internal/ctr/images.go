package ctr

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/bottle-dev/bottle/internal/ociarchive"
)

// SidecarRepository is the local name of bottle's own sidecar image.
const SidecarRepository = "bottle.local/sidecar"

// Progress is where an image import stands: the step that runs and, while the archive
// is read, the bytes read so far.
type Progress struct {
	Step string
	// Done and Total are the archive's bytes read so far and in all (Total 0: unknown).
	Done, Total int64
	// Finished marks the last report of an import, sent whether it succeeded or not
	// (Failed).
	Finished, Failed bool
}

// ProgressFunc receives progress reports, often (once per read of the archive); it may be
// nil.
type ProgressFunc func(Progress)

func (p ProgressFunc) report(pr Progress) {
	if p != nil {
		p(pr)
	}
}

// progressReader reports the bytes read through it under one step.
type progressReader struct {
	r        io.Reader
	step     string
	n, total int64
	progress ProgressFunc
}

func (r *progressReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	if n > 0 {
		r.n += int64(n)
		r.progress.report(Progress{Step: r.step, Done: r.n, Total: r.total})
	}
	return n, err
}

// ImageExists reports whether the image ref is known to containerd.
func (c *Client) ImageExists(ctx context.Context, ref string) (bool, error) {
	if _, err := c.c.ImageService().Get(c.ctx(ctx), ref); err != nil {
		if errdefs.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("image %s: %w", ref, err)
	}
	return true, nil
}

// ensureImage checks that the image ref exists and is unpacked for the client's
// snapshotter, unpacking it when needed. A missing image is an error wrapping
// errdefs.ErrNotFound that says how to get it.
func (c *Client) ensureImage(ctx context.Context, ref string) error {
	ctx = c.ctx(ctx)
	img, err := c.c.GetImage(ctx, ref)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return fmt.Errorf("image %s is not in containerd namespace %s: import it (OCI archive) or pull it first: %w", ref, c.namespace, err)
		}
		return fmt.Errorf("image %s: %w", ref, err)
	}
	return c.unpack(ctx, img)
}

func (c *Client) unpack(ctx context.Context, img client.Image) error {
	ok, err := img.IsUnpacked(ctx, c.snapshotter)
	if err != nil {
		return fmt.Errorf("image %s: check unpacked for snapshotter %s: %w", img.Name(), c.snapshotter, err)
	}
	if ok {
		return nil
	}
	if err := img.Unpack(ctx, c.snapshotter); err != nil {
		return fmt.Errorf("image %s: unpack for snapshotter %s: %w", img.Name(), c.snapshotter, err)
	}
	return nil
}

// ImportArchive imports an OCI image layout tar (or docker save tar) of size bytes
// (0: unknown) from r and unpacks every image in it. It returns the names of the
// imported images.
func (c *Client) ImportArchive(ctx context.Context, r io.Reader, size int64, progress ProgressFunc) ([]string, error) {
	return c.importArchive(ctx, r, "reading image archive", size, progress)
}

// importArchive is ImportArchive, with step naming the reading of the archive.
func (c *Client) importArchive(ctx context.Context, r io.Reader, step string, size int64, progress ProgressFunc) (_ []string, err error) {
	ctx = c.ctx(ctx)
	pr := &progressReader{r: r, step: step, total: size, progress: progress}
	defer func() {
		progress.report(Progress{Step: "done", Done: pr.n, Total: pr.total, Finished: true, Failed: err != nil})
	}()
	progress.report(Progress{Step: pr.step, Total: size})
	imgs, err := c.c.Import(ctx, pr)
	if err != nil {
		return nil, fmt.Errorf("import image archive: %w", err)
	}
	if len(imgs) == 0 {
		return nil, errors.New("import image archive: it names no image (index.json needs an org.opencontainers.image.ref.name annotation)")
	}
	var names []string
	for _, i := range imgs {
		progress.report(Progress{Step: "unpacking " + i.Name, Done: pr.n, Total: pr.total})
		if err := c.unpack(ctx, client.NewImage(c.c, i)); err != nil {
			return names, err
		}
		names = append(names, i.Name)
	}
	return names, nil
}

// ImportArchiveFile imports the OCI image layout tar at path; see ImportArchive.
func (c *Client) ImportArchiveFile(ctx context.Context, path string, progress ProgressFunc) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("import image archive %s: %w", path, err)
	}
	defer f.Close()
	var size int64
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
		size = st.Size()
	}
	names, err := c.ImportArchive(ctx, f, size, progress)
	if err != nil {
		return names, fmt.Errorf("%s: %w", path, err)
	}
	return names, nil
}

// ImportImage writes img with ociarchive and imports it (streamed, no temp file).
func (c *Client) ImportImage(ctx context.Context, img ociarchive.Image, progress ProgressFunc) error {
	pr, pw := io.Pipe()
	go func() {
		_, err := ociarchive.Write(pw, img)
		pw.CloseWithError(err)
	}()
	_, err := c.importArchive(ctx, pr, "writing image "+img.Ref, 0, progress)
	pr.CloseWithError(errors.New("import finished")) // unblocks the writer on early failure
	if err != nil {
		return fmt.Errorf("image %s: %w", img.Ref, err)
	}
	return nil
}

// ImageConfig returns the image's OCI config (env, entrypoint, cmd, user, workdir).
func (c *Client) ImageConfig(ctx context.Context, ref string) (ocispec.ImageConfig, error) {
	cfg, err := c.imageConfig(ctx, ref)
	return cfg.Config, err
}

func (c *Client) imageConfig(ctx context.Context, ref string) (ocispec.Image, error) {
	ctx = c.ctx(ctx)
	img, err := c.c.GetImage(ctx, ref)
	if err != nil {
		return ocispec.Image{}, fmt.Errorf("image %s: %w", ref, err)
	}
	spec, err := img.Spec(ctx)
	if err != nil {
		return ocispec.Image{}, fmt.Errorf("image %s: config: %w", ref, err)
	}
	return spec, nil
}

// removeImage deletes the image ref and lets containerd collect its unused content and
// snapshots. A missing image is not an error.
func (c *Client) removeImage(ctx context.Context, ref string) error {
	ctx, cancel := c.teardownCtx(ctx)
	defer cancel()
	if err := c.c.ImageService().Delete(ctx, ref, images.SynchronousDelete()); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove image %s: %w", ref, err)
	}
	return nil
}

var tagUnsafe = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// sidecarImageRef is the name of the sidecar image for a bottle version and the
// digest of its executable: bottle.local/sidecar:<version>-<12 hex>.
func sidecarImageRef(version string, executableDigest string) string {
	v := strings.TrimLeft(tagUnsafe.ReplaceAllString(version, "_"), ".-")
	if v == "" {
		v = "dev"
	}
	if len(v) > 100 {
		v = v[:100]
	}
	return SidecarRepository + ":" + v + "-" + executableDigest[:12]
}

// EnsureSidecarImage makes sure bottle's own sidecar image exists for the sidecar
// executable next to the running one (ociarchive.SidecarExecutable; it must be static:
// it runs in a rootfs without libc) and returns its name. The image holds the
// executable at /bottle and the host CA bundle.
//
// hashCache, when not empty, is a file remembering the executable's digest by its inode,
// size and modification time, so a start need not hash it again.
func (c *Client) EnsureSidecarImage(ctx context.Context, version, hashCache string) (string, error) {
	exe, err := ociarchive.SidecarExecutable()
	if err != nil {
		return "", err
	}
	return c.ensureSidecarImage(ctx, version, exe, ociarchive.HostCABundle, hashCache)
}

func (c *Client) ensureSidecarImage(ctx context.Context, version, exe, caBundle, hashCache string) (string, error) {
	sum, err := cachedSHA256(exe, hashCache)
	if err != nil {
		return "", fmt.Errorf("sidecar image: hash executable %s: %w", exe, err)
	}
	ref := sidecarImageRef(version, sum)
	exists, err := c.ImageExists(ctx, ref)
	if err != nil {
		return "", fmt.Errorf("sidecar image: %w", err)
	}
	if exists {
		return ref, c.ensureImage(ctx, ref)
	}
	if _, err := os.Stat(caBundle); err != nil {
		return "", fmt.Errorf("sidecar image %s: host CA bundle %s is missing (install the ca-certificates package): %w", ref, caBundle, err)
	}
	if err := c.ImportImage(ctx, ociarchive.SidecarImage(ref, exe, caBundle), c.progress); err != nil {
		return "", fmt.Errorf("sidecar image: %w", err)
	}
	return ref, nil
}

// cachedSHA256 is fileSHA256 remembered in cache (when set) under the file's identity.
func cachedSHA256(p, cache string) (string, error) {
	if cache == "" {
		return fileSHA256(p)
	}
	st, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	sys, _ := st.Sys().(*syscall.Stat_t)
	if sys == nil {
		return fileSHA256(p)
	}
	key := fmt.Sprintf("%s %d %d %d %d", p, sys.Dev, sys.Ino, st.Size(), st.ModTime().UnixNano())
	if data, err := os.ReadFile(cache); err == nil {
		if k, sum, ok := strings.Cut(strings.TrimSpace(string(data)), "\n"); ok && k == key && len(sum) == 64 {
			return sum, nil
		}
	}
	sum, err := fileSHA256(p)
	if err != nil {
		return "", err
	}
	// Best effort: a failed write only costs the next start a hash.
	if err := os.MkdirAll(filepath.Dir(cache), 0o700); err == nil {
		tmp := cache + ".tmp"
		if os.WriteFile(tmp, []byte(key+"\n"+sum+"\n"), 0o600) != nil || os.Rename(tmp, cache) != nil {
			_ = os.Remove(tmp) // a full disk leaves nothing behind
		}
	}
	return sum, nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
