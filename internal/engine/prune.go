package engine

import (
	"context"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/versions"
)

// PruneContainers removes the stopped containers the filters select (POST /containers/prune) and
// returns their IDs and the space the engine reports reclaimed.
func (e *Client) PruneContainers(ctx context.Context, f filters.Args) ([]string, uint64, error) {
	ctx, cancel := e.pruneContext(ctx)
	defer cancel()
	r, err := e.api.ContainersPrune(ctx, f)
	if err != nil {
		return nil, 0, e.pruneErr("pruning stopped containers (POST /containers/prune)", err)
	}
	return r.ContainersDeleted, r.SpaceReclaimed, nil
}

// PruneImages removes the images the filters select (POST /images/prune). It returns the image
// and layer IDs deleted and the tags removed.
func (e *Client) PruneImages(ctx context.Context, f filters.Args) (deleted, untagged []string, reclaimed uint64, err error) {
	ctx, cancel := e.pruneContext(ctx)
	defer cancel()
	r, err := e.api.ImagesPrune(ctx, f)
	if err != nil {
		return nil, nil, 0, e.pruneErr("pruning dangling images (POST /images/prune)", err)
	}
	for _, d := range r.ImagesDeleted {
		if d.Deleted != "" {
			deleted = append(deleted, imageID(d.Deleted))
		}
		if d.Untagged != "" {
			untagged = append(untagged, d.Untagged)
		}
	}
	return deleted, untagged, r.SpaceReclaimed, nil
}

// DanglingRecord is the containerd image store's own name for an image's dangling record: a
// delete by that name removes that record only, so a tag or digest reference naming the same
// image keeps it, where a delete by ID removes every record of the image, its tags included.
func DanglingRecord(id string) string { return "moby-dangling@" + id }

// DeleteImage deletes one image by ref (DELETE /images/{ref}?noprune=1, never forced): that
// image only, not its untagged parents. kept is true when the engine kept the image: it became
// used (409) or was deleted meanwhile (404), or only ref itself went (the answer untags ref and
// deletes nothing: another reference names the image).
func (e *Client) DeleteImage(ctx context.Context, ref string) (deleted, untagged []string, kept bool, err error) {
	dctx, cancel := e.pruneContext(ctx)
	items, err := e.api.ImageRemove(dctx, ref, image.RemoveOptions{PruneChildren: false})
	cancel()
	switch {
	case cerrdefs.IsConflict(err) || cerrdefs.IsNotFound(err):
		return nil, nil, true, nil
	case err != nil:
		return nil, nil, false, e.failed("deleting dangling image "+ref+" (DELETE /images/{name})", err)
	}
	for _, d := range items {
		if d.Deleted != "" {
			deleted = append(deleted, imageID(d.Deleted))
		}
		if d.Untagged != "" && d.Untagged != ref {
			untagged = append(untagged, d.Untagged)
		}
	}
	return deleted, untagged, len(deleted) == 0, nil
}

// imageID is an ID a prune or delete answered with, as the image list gives IDs: Podman 4.3.1
// answers with the bare hex, Docker with "sha256:" before it.
func imageID(id string) string {
	if len(id) == 64 && !strings.Contains(id, ":") {
		return "sha256:" + id
	}
	return id
}

// PruneBuildCache removes the given build-cache records if they are unused and last used longer
// than until ago on the daemon's clock (POST /build/prune, never --all, no label filter: the
// engine ignores those there). The records go by an id filter, which the engine reads as a
// regular expression and accepts once per call, so they are sent cacheBatch at a time. until is
// sent as a duration, the only form engines before 23.0 accept here (observed on 20.10). Each
// batch has its own deadline; once ctx ends no further batch is sent.
func (e *Client) PruneBuildCache(ctx context.Context, ids []string, until time.Duration) ([]string, uint64, error) {
	var removed []string
	var reclaimed uint64
	for batch := range slices.Chunk(ids, cacheBatch) {
		pctx, cancel := e.pruneContext(ctx)
		f := filters.NewArgs(filters.Arg("until", until.String()), filters.Arg("id", cacheIDPattern(batch)))
		r, err := e.api.BuildCachePrune(pctx, build.CachePruneOptions{Filters: f})
		cancel()
		if err != nil {
			return removed, reclaimed, e.pruneErr("pruning build cache (POST /build/prune)", err)
		}
		removed = append(removed, r.CachesDeleted...)
		reclaimed += r.SpaceReclaimed
		if ctx.Err() != nil {
			break
		}
	}
	return removed, reclaimed, nil
}

// cacheBatch is how many build-cache records one prune call names.
const cacheBatch = 100

// cacheIDPattern is the id filter naming exactly these records: the engine hands it to BuildKit
// as `id~=VALUE`, a regular expression, which a quoted operand keeps whole. The IDs must not hold
// a quote or a bar (CacheIDForm).
func cacheIDPattern(ids []string) string {
	return `"^(` + strings.Join(ids, "|") + `)$"`
}

// PruneBuildCacheTo lets BuildKit remove least-recently-used prunable records until the whole
// build cache fits limit bytes (POST /build/prune, never --all, no age filter): keep-storage below
// API 1.48, max-used-space from 1.48, where keep-storage counts only when no reserved space is
// sent.
func (e *Client) PruneBuildCacheTo(ctx context.Context, limit int64) ([]string, uint64, error) {
	ctx, cancel := e.pruneContext(ctx)
	defer cancel()
	var opts build.CachePruneOptions
	if versions.GreaterThanOrEqualTo(e.api.ClientVersion(), "1.48") {
		opts.MaxUsedSpace = limit
	} else {
		opts.KeepStorage = limit
	}
	r, err := e.api.BuildCachePrune(ctx, opts)
	if err != nil {
		return nil, 0, e.pruneErr("pruning build cache to its budget (POST /build/prune)", err)
	}
	return r.CachesDeleted, r.SpaceReclaimed, nil
}
