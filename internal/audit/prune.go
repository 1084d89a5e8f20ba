package audit

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/bottle-dev/bottle/internal/names"
)

// Trails lists the bottles that have a trail under stateDir.
func Trails(stateDir string) ([]names.Identity, error) {
	entries, err := os.ReadDir(Root(stateDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit trails in %s: %w", Root(stateDir), err)
	}
	var ids []names.Identity
	for _, e := range entries {
		if id, err := names.ParseIdentity(e.Name()); err == nil && e.IsDir() {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// LastWrite is when the trail in dir was last written (its newest file).
func LastWrite(dir string) (time.Time, error) {
	var last time.Time
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.ModTime().After(last) {
			last = info.ModTime()
		}
		return nil
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("audit trail %s: %w", dir, err)
	}
	return last, nil
}

// Remove deletes the trail of id.
func Remove(stateDir string, id names.Identity) error {
	if err := os.RemoveAll(Dir(stateDir, id)); err != nil {
		return fmt.Errorf("remove audit trail of %s: %w", id, err)
	}
	return nil
}

// Prepare creates the trail of a bottle before its sidecars start: the dir, and one
// dir per sidecar role owned by uid, which the runtime mounts into that sidecar only.
func Prepare(dir string, roles []string, uid int) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("audit trail %s: %w", dir, err)
	}
	for _, role := range roles {
		d := SidecarDir(dir, role)
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("audit trail %s: %w", d, err)
		}
		if err := os.Chown(d, uid, uid); err != nil {
			return fmt.Errorf("audit trail %s: %w", d, err)
		}
	}
	return nil
}
