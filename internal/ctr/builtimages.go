package ctr

import (
	"context"
	"fmt"
	"strings"
)

// Snapshotter is the snapshotter the client's containers use (an image build unpacks
// its result for it).
func (c *Client) Snapshotter() string { return c.snapshotter }

// ImagesWithPrefix lists the names of the images whose name starts with prefix (a
// bottle's own built images).
func (c *Client) ImagesWithPrefix(ctx context.Context, prefix string) ([]string, error) {
	imgs, err := c.c.ImageService().List(c.ctx(ctx))
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var out []string
	for _, i := range imgs {
		if strings.HasPrefix(i.Name, prefix) {
			out = append(out, i.Name)
		}
	}
	return out, nil
}

// RemoveImage deletes the image ref (missing is fine) and lets containerd collect its
// unused content and snapshots.
func (c *Client) RemoveImage(ctx context.Context, ref string) error {
	return c.removeImage(ctx, ref)
}
