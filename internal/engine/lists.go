package engine

import (
	"context"
	"fmt"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/versions"

	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// Listed is a container or image as a list gives it.
type Listed struct {
	report.Object
	// Unix is its creation time as the list gives it, in whole seconds (the list reads a config
	// created at the Unix epoch and one with no creation time alike, as 0 or less).
	Unix   int64
	Labels map[string]string
}

// StoppedContainers lists the containers the filters select (GET /containers/json?all=1 with
// sizes, which makes the daemon walk every writable layer: dry runs only).
func (e *Client) StoppedContainers(ctx context.Context, f filters.Args) ([]Listed, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	list, err := e.api.ContainerList(ctx, container.ListOptions{All: true, Size: true, Filters: f})
	if err != nil {
		return nil, e.failed("listing stopped containers (GET /containers/json)", err)
	}
	out := make([]Listed, 0, len(list))
	for _, c := range list {
		out = append(out, Listed{Object: report.Object{ID: c.ID, Name: containerName(c.Names), Size: c.SizeRw}, Unix: c.Created, Labels: c.Labels})
	}
	return out, nil
}

// ContainerCreated is a container's exact creation time as the daemon reports it (GET
// /containers/{id}/json); ErrGone when it was removed since it was listed.
func (e *Client) ContainerCreated(ctx context.Context, id string) (string, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	c, err := e.api.ContainerInspect(ctx, id)
	if cerrdefs.IsNotFound(err) {
		return "", ErrGone
	}
	if err != nil {
		return "", e.failed("reading the exact creation time of "+id+" (GET /containers/{id}/json)", err)
	}
	return c.Created, nil
}

// DanglingImages lists the images the filters select (GET /images/json, without intermediate
// images: the heads the image prune starts from).
func (e *Client) DanglingImages(ctx context.Context, f filters.Args) ([]Listed, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	list, err := e.api.ImageList(ctx, image.ListOptions{Filters: f})
	if err != nil {
		return nil, e.failed("listing dangling images (GET /images/json)", err)
	}
	out := make([]Listed, 0, len(list))
	for _, im := range list {
		out = append(out, Listed{Object: report.Object{ID: im.ID, Size: im.Size}, Unix: im.Created, Labels: im.Labels})
	}
	return out, nil
}

// ImageCreated is an image's exact creation time as the daemon reports it (GET
// /images/{id}/json): "" or the zero time when its config has none; ErrGone when it was removed
// since it was listed.
func (e *Client) ImageCreated(ctx context.Context, id string) (string, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	im, err := e.api.ImageInspect(ctx, id)
	if cerrdefs.IsNotFound(err) {
		return "", ErrGone
	}
	if err != nil {
		return "", e.failed("reading the exact creation time of "+id+" (GET /images/{id}/json)", err)
	}
	return im.Created, nil
}

// Images lists every image, intermediate ones included (GET /images/json?all=1).
func (e *Client) Images(ctx context.Context) ([]image.Summary, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	list, err := e.api.ImageList(ctx, image.ListOptions{All: true})
	if err != nil {
		return nil, e.failed("listing images (GET /images/json?all=1)", err)
	}
	return list, nil
}

// ContainerImages maps every container, running or stopped, to the ID of its image (GET
// /containers/json?all=1).
func (e *Client) ContainerImages(ctx context.Context) (map[string]string, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	list, err := e.api.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return nil, e.failed("listing containers to find images in use (GET /containers/json)", err)
	}
	out := make(map[string]string, len(list))
	for _, c := range list {
		out[c.ID] = c.ImageID
	}
	return out, nil
}

// BuildCache lists every build-cache record (GET /system/df, asking for build cache only where
// the API version lets it: older engines ignore the type and compute everything). A listing that
// meets another client's work is ErrPruneRunning (busyListing).
func (e *Client) BuildCache(ctx context.Context) ([]*build.CacheRecord, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	var opts types.DiskUsageOptions
	if versions.GreaterThanOrEqualTo(e.api.ClientVersion(), "1.42") {
		opts.Types = []types.DiskUsageObject{types.BuildCacheObject}
	}
	du, err := e.api.DiskUsage(ctx, opts)
	if busyListing(err) {
		return nil, fmt.Errorf("%w: %v", ErrPruneRunning, err)
	}
	if err != nil {
		return nil, e.failed("listing build cache (GET /system/df)", err)
	}
	return du.BuildCache, nil
}

// busyListing reports whether a disk-usage listing failed for another client's work: Engine 20.10
// answers a second listing with "a disk usage operation is already running" (HTTP 500; later
// engines share the first one's answer), and one that lists images while another client deletes
// them with "failed to retrieve image list: layer sha256:… was not found (corruption?)" (seen in
// TestConcurrentRuns).
func busyListing(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return cerrdefs.IsConflict(err) || strings.Contains(msg, "a disk usage operation is already running") ||
		strings.Contains(msg, "failed to retrieve image list") && strings.Contains(msg, "was not found")
}

// DiskUsage is the engine's whole disk-usage account (GET /system/df, every type).
func (e *Client) DiskUsage(ctx context.Context) (types.DiskUsage, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	du, err := e.api.DiskUsage(ctx, types.DiskUsageOptions{})
	if err != nil {
		return du, e.failed("asking what holds the space (GET /system/df)", err)
	}
	return du, nil
}
