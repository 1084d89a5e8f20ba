package ociarchive

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// DirImage describes a single-layer image whose layer is a whole directory tree, such as
// a root file system made by mmdebstrap.
type DirImage struct {
	// Refs are the image's full references; the archive names the image once per ref.
	Refs []string
	// Root is the directory that becomes the image's "/". Everything below it is taken as
	// it is on disk: modes (with setuid, setgid, sticky), owners (numeric uid/gid),
	// symlinks, hard links (as tar links), device nodes and fifos. Sockets are skipped.
	// Every entry gets the modification time Epoch. Extended attributes are not kept.
	Root   string
	Config Config
	// OS and Architecture default to linux and the running architecture.
	OS           string
	Architecture string
}

// WriteDirFile writes the archive of img to path (created or truncated, mode 0644). The
// compressed layer is staged in a temporary file next to path, so memory use does not
// grow with the tree.
func WriteDirFile(path string, img DirImage) (Result, error) {
	name := "<no ref>"
	if len(img.Refs) > 0 {
		name = img.Refs[0]
	}
	fail := func(err error) (Result, error) {
		return Result{}, fmt.Errorf("OCI archive %s from %s: %w", name, img.Root, err)
	}
	if len(img.Refs) == 0 {
		return fail(errors.New("no image reference"))
	}
	for _, r := range img.Refs {
		if r == "" {
			return fail(errors.New("an image reference is empty"))
		}
	}

	layer, err := os.CreateTemp(filepath.Dir(path), ".layer-*.tar.gz")
	if err != nil {
		return fail(fmt.Errorf("layer temp file: %w", err))
	}
	defer os.Remove(layer.Name())
	defer layer.Close()
	layerDesc, diffID, err := WriteDirLayer(layer, img.Root)
	if err != nil {
		return fail(fmt.Errorf("layer: %w", err))
	}

	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fail(err)
	}
	copyLayer := func(w io.Writer) error {
		if _, err := layer.Seek(0, io.SeekStart); err != nil {
			return err
		}
		n, err := io.Copy(w, layer)
		if err == nil && n != layerDesc.Size {
			err = fmt.Errorf("layer temp file has %d bytes, want %d", n, layerDesc.Size)
		}
		return err
	}
	res, err := writeLayout(out, img.Refs, img.OS, img.Architecture, img.Config, layerDesc, diffID, copyLayer)
	if cerr := out.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fail(err)
	}
	return res, nil
}

// WriteDirLayer writes the gzip-compressed tar of the tree at root to w and returns the
// layer's descriptor and the digest of the uncompressed tar (its diff ID). The output
// depends only on the tree's names, contents, modes, owners and link structure.
func WriteDirLayer(w io.Writer, root string) (ocispec.Descriptor, digest.Digest, error) {
	rootInfo, err := os.Lstat(root)
	if err != nil {
		return ocispec.Descriptor{}, "", err
	}
	if !rootInfo.IsDir() {
		return ocispec.Descriptor{}, "", fmt.Errorf("%s is not a directory", root)
	}
	rootDev := statOf(rootInfo).Dev

	compressedHash := sha256.New()
	counter := &countingWriter{w: io.MultiWriter(w, compressedHash)}
	// gzip.NewWriter leaves Name and ModTime empty: the compressed bytes depend only on input.
	gz, err := gzip.NewWriterLevel(counter, gzip.BestSpeed)
	if err != nil {
		return ocispec.Descriptor{}, "", err
	}
	diffHash := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(gz, diffHash))

	// firstPath maps an inode with more than one link to the first name written for it.
	firstPath := map[uint64]string{}
	// WalkDir visits names in lexical order, so the layer is the same for the same tree.
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, walkErr error) error {
		if walkErr != nil {
			return walkErr
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		name := filepath.ToSlash(rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := statOf(fi)
		if uint64(st.Dev) != uint64(rootDev) {
			// Something is mounted there (a leftover /proc, a bind mount): its contents
			// are not part of the tree, and walking them could take the host's files.
			return fmt.Errorf("%s is on another file system than %s (a mount point?): unmount it first", p, root)
		}
		hdr := &tar.Header{
			Name:    name,
			Mode:    tarPermissions(fi.Mode()),
			Uid:     int(st.Uid),
			Gid:     int(st.Gid),
			ModTime: Epoch,
			Format:  tar.FormatPAX,
		}
		mode := fi.Mode()
		switch {
		case mode.IsDir():
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case mode&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = target
		case mode.IsRegular():
			if st.Nlink > 1 {
				ino := uint64(st.Ino)
				if first, ok := firstPath[ino]; ok {
					hdr.Typeflag = tar.TypeLink
					hdr.Linkname = first
					break
				}
				firstPath[ino] = name
			}
			hdr.Typeflag = tar.TypeReg
			hdr.Size = fi.Size()
		case mode&fs.ModeCharDevice != 0:
			hdr.Typeflag = tar.TypeChar
			hdr.Devmajor, hdr.Devminor = devNumbers(uint64(st.Rdev))
		case mode&fs.ModeDevice != 0:
			hdr.Typeflag = tar.TypeBlock
			hdr.Devmajor, hdr.Devminor = devNumbers(uint64(st.Rdev))
		case mode&fs.ModeNamedPipe != 0:
			hdr.Typeflag = tar.TypeFifo
		case mode&fs.ModeSocket != 0:
			return nil // a socket cannot be archived; it belongs to a process, not an image
		default:
			return fmt.Errorf("%s: unsupported file type %s", p, mode.Type())
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			return copyFile(tw, p, hdr.Size)
		}
		return nil
	})
	if err != nil {
		return ocispec.Descriptor{}, "", err
	}
	if err := tw.Close(); err != nil {
		return ocispec.Descriptor{}, "", err
	}
	if err := gz.Close(); err != nil {
		return ocispec.Descriptor{}, "", err
	}
	desc := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageLayerGzip,
		Digest:    digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(compressedHash.Sum(nil))),
		Size:      counter.n,
	}
	return desc, digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(diffHash.Sum(nil))), nil
}

func copyFile(w io.Writer, p string, size int64) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, io.LimitReader(f, size))
	if err != nil {
		return fmt.Errorf("copy %s: %w", p, err)
	}
	if n != size {
		return fmt.Errorf("%s changed size while being read", p)
	}
	return nil
}

// statOf returns the raw stat of fi, which came from os.Lstat on Linux.
func statOf(fi fs.FileInfo) *syscall.Stat_t {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st
	}
	return &syscall.Stat_t{}
}

// tarPermissions is the tar mode of m: the permission bits plus setuid, setgid, sticky.
func tarPermissions(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

// devNumbers splits a Linux dev_t into major and minor numbers (glibc's encoding).
func devNumbers(dev uint64) (major, minor int64) {
	major = int64((dev>>8)&0xfff | (dev>>32)&^uint64(0xfff))
	minor = int64(dev&0xff | (dev>>12)&^uint64(0xff))
	return major, minor
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
