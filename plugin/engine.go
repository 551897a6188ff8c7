package plugin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/versions"
	"github.com/docker/docker/client"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
)

// Engine asks the Docker Engine the questions the run needs, one method per question, and turns
// the answers into the gates' snapshots. Every call has its own deadline.
type Engine struct {
	api *client.Client
	// QueryTimeout bounds each read (info, lists); PruneTimeout bounds each prune.
	QueryTimeout time.Duration
	PruneTimeout time.Duration
	// StopGrace is how long a prune already sent may still answer once the run is stopped
	// (signal or timeout), so the summary can say what it removed.
	StopGrace time.Duration
}

// NewEngine connects the way the docker CLI does: DOCKER_HOST, DOCKER_API_VERSION and TLS settings
// from the environment, API version negotiated with the daemon on the first call. httpClient, when
// not nil, is used as it is, and must already dial the daemon (the benchmarks count requests with
// a wrapping transport).
func NewEngine(httpClient *http.Client) (*Engine, error) {
	var opts []client.Opt
	if httpClient != nil {
		opts = append(opts, client.WithHTTPClient(httpClient))
	}
	opts = append(opts, client.FromEnv, client.WithAPIVersionNegotiation())
	api, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, &RuntimeError{What: "connecting to the Docker daemon", Err: err}
	}
	return &Engine{api: api, QueryTimeout: 30 * time.Second, PruneTimeout: 5 * time.Minute, StopGrace: 3 * time.Second}, nil
}

// Close releases the client's connections.
func (e *Engine) Close() error { return e.api.Close() }

// Host is the daemon address in use, for messages.
func (e *Engine) Host() string { return e.api.DaemonHost() }

func (e *Engine) query(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, e.QueryTimeout)
}

// pruneContext outlives ctx by StopGrace: the run stops between calls, and a prune the engine is
// already carrying out gets that long to report what it removed before it is abandoned.
func (e *Engine) pruneContext(ctx context.Context) (context.Context, context.CancelFunc) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.PruneTimeout)
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(e.StopGrace, cancel) })
	return pctx, func() { stop(); cancel() }
}

// Store asks the daemon where and how it keeps its data (GET /info), so the disk gate measures
// the filesystems that fill up.
func (e *Engine) Store(ctx context.Context) (Store, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	info, err := e.api.Info(ctx)
	if err != nil {
		return Store{}, e.failed("asking the daemon for its data root (GET /info)", err)
	}
	return readStore(info), nil
}

// Snapshot is one look at what runs on the engine, with the daemon's clock at that moment.
type Snapshot struct {
	Workload   gates.Workload
	DaemonTime time.Time
	// LocalTime is this host's clock when the daemon's was read.
	LocalTime time.Time
	// APIVersion is the negotiated Engine API version.
	APIVersion string
	// Store is the engine's image store.
	Store Store
}

// Snapshot asks the daemon for its clock and swarm role (GET /info), the swarm services with
// their task counts (GET /services?status=true, managers only) and the containers that can be live
// (GET /containers/json: created, running, paused, restarting; on a worker this includes the
// node's own task containers not yet started). The number of calls does not grow with the number
// of objects.
func (e *Engine) Snapshot(ctx context.Context) (Snapshot, error) {
	var s Snapshot
	qctx, cancel := e.query(ctx)
	defer cancel()
	info, err := e.api.Info(qctx)
	if err != nil {
		return s, e.failed("asking the daemon for its swarm state (GET /info)", err)
	}
	s.APIVersion = e.api.ClientVersion()
	s.LocalTime = time.Now()
	s.DaemonTime, err = time.Parse(time.RFC3339Nano, info.SystemTime)
	if err != nil {
		return s, &RuntimeError{What: "reading the daemon's clock from GET /info", Err: err}
	}
	self, _ := os.Hostname()
	s.Workload.Self = self
	role, ok := swarmRole(info.Swarm)
	if !ok {
		// A swarm that cannot report on itself: the gates cannot be evaluated, so fail closed.
		return s, &RuntimeError{What: "reading the swarm state for the no-run and no-converge gates",
			Err: fmt.Errorf("this node's swarm state is %q %s", info.Swarm.LocalNodeState, info.Swarm.Error)}
	}
	s.Workload.Swarm = role
	s.Store = readStore(info)
	if s.Workload.Swarm == gates.SwarmManager {
		services, err := e.services(ctx)
		switch {
		case cerrdefs.IsUnavailable(err):
			// Demoted between the two calls: judge it as a worker.
			s.Workload.Swarm = gates.SwarmWorker
		case err != nil:
			return s, err
		default:
			s.Workload.Services = services
		}
	}
	s.Workload.Containers, err = e.liveContainers(ctx)
	return s, err
}

// swarmRole reads the node's role; false for a swarm it cannot report on (pending, locked, error).
func swarmRole(info swarm.Info) (gates.SwarmRole, bool) {
	switch info.LocalNodeState {
	case swarm.LocalNodeStateInactive, "":
		return gates.SwarmNone, true
	case swarm.LocalNodeStateActive:
		if info.ControlAvailable {
			return gates.SwarmManager, true
		}
		return gates.SwarmWorker, true
	}
	return "", false
}

// services lists swarm services with their running and desired task counts.
func (e *Engine) services(ctx context.Context) ([]gates.Service, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	list, err := e.api.ServiceList(ctx, swarm.ServiceListOptions{Status: true})
	if cerrdefs.IsUnavailable(err) {
		return nil, err
	}
	if err != nil {
		return nil, e.failed("listing swarm services for the no-run and no-converge gates (GET /services)", err)
	}
	out := make([]gates.Service, 0, len(list))
	for _, sv := range list {
		if sv.ServiceStatus == nil {
			// Engines below API 1.41 send no task counts: convergence cannot be judged.
			return nil, &RuntimeError{What: "listing swarm services for the no-converge gate (GET /services?status=true)",
				Err: fmt.Errorf("the daemon reported no task counts for service %s (API %s)", sv.Spec.Name, e.api.ClientVersion())}
		}
		g := gates.Service{ID: sv.ID, Name: sv.Spec.Name, Stack: sv.Spec.Labels[gates.StackNamespaceLabel], Mode: serviceMode(sv.Spec.Mode),
			Running: sv.ServiceStatus.RunningTasks, Desired: sv.ServiceStatus.DesiredTasks}
		if sv.UpdateStatus != nil {
			g.UpdateState = string(sv.UpdateStatus.State)
		}
		out = append(out, g)
	}
	return out, nil
}

func serviceMode(m swarm.ServiceMode) string {
	switch {
	case m.Global != nil:
		return "global"
	case m.ReplicatedJob != nil:
		return "replicated-job"
	case m.GlobalJob != nil:
		return "global-job"
	}
	return "replicated"
}

// liveContainers lists the containers in a state that can be live: created, running, paused or
// restarting (exited and dead ones cannot hold a run).
func (e *Engine) liveContainers(ctx context.Context) ([]gates.Container, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	f := filters.NewArgs()
	for _, state := range []string{"created", "running", "paused", "restarting"} {
		f.Add("status", state)
	}
	list, err := e.api.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return nil, e.failed("listing containers for the no-run and no-converge gates (GET /containers/json)", err)
	}
	out := make([]gates.Container, 0, len(list))
	for _, c := range list {
		gc := gates.Container{ID: c.ID, Name: containerName(c.Names), Labels: c.Labels, State: c.State,
			Health: health(c.Status), Created: time.Unix(c.Created, 0)}
		if c.NetworkSettings != nil {
			gc.Networks = slices.Sorted(maps.Keys(c.NetworkSettings.Networks))
		}
		out = append(out, gc)
	}
	return out, nil
}

func containerName(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return strings.TrimPrefix(names[0], "/")
}

// health reads the health word from the list's Status text ("Up 3 seconds (health: starting)").
func health(status string) string {
	switch {
	case strings.Contains(status, "(health: starting)"):
		return "starting"
	case strings.Contains(status, "(unhealthy)"):
		return "unhealthy"
	case strings.Contains(status, "(healthy)"):
		return "healthy"
	}
	return ""
}

// Object is one thing a phase removes or would remove.
type Object struct {
	ID      string    `json:"id"`
	Name    string    `json:"name,omitempty"`
	Size    int64     `json:"size,omitempty"`
	Created time.Time `json:"created,omitempty"`
}

// withLabels adds one label filter per selector: the engine then requires all of them.
func withLabels(f filters.Args, labels []gates.LabelSelector) filters.Args {
	for _, l := range labels {
		f.Add("label", l.String())
	}
	return f
}

// KeepLabel is the one label that keeps a container or an image from every prune, whatever its
// value: each container and image prune carries a label!= filter for it, and no setting turns
// that off. (Build-cache records carry no labels.)
const KeepLabel = "drone-gated-prune.keep"

// pruneFilters is what the container and image prunes are sent: the cutoff, the labels setting
// and the keep label.
func pruneFilters(cutoff time.Time, labels []gates.LabelSelector) filters.Args {
	f := withLabels(filters.NewArgs(filters.Arg("until", strconv.FormatInt(cutoff.Unix(), 10))), labels)
	f.Add("label!", KeepLabel)
	return f
}

// PruneFilterText is the filters a container or image prune is sent, as the summary shows them.
func PruneFilterText(cutoff time.Time, labels []gates.LabelSelector) []string {
	f := pruneFilters(cutoff, labels)
	var out []string
	for _, key := range f.Keys() {
		for _, v := range f.Get(key) {
			if key == "until" {
				v = cutoff.UTC().Format(time.RFC3339) + " (sent as Unix time " + v + ")"
			}
			out = append(out, key+"="+v)
		}
	}
	sort.Strings(out)
	return out
}

// StoppedContainers lists what the container prune removes: created, exited and dead containers
// created at or before cutoff and carrying labels, with each writable layer's size (which makes the
// daemon walk every layer; dry runs only). The list gives whole seconds; a container listed in the
// cutoff's own second is inspected for its exact time, as the engine compares that.
func (e *Engine) StoppedContainers(ctx context.Context, cutoff time.Time, labels []gates.LabelSelector) ([]Object, error) {
	qctx, cancel := e.query(ctx)
	defer cancel()
	f := withLabels(filters.NewArgs(filters.Arg("status", "created"), filters.Arg("status", "exited"), filters.Arg("status", "dead")), labels)
	list, err := e.api.ContainerList(qctx, container.ListOptions{All: true, Size: true, Filters: f})
	if err != nil {
		return nil, e.failed("listing stopped containers (GET /containers/json)", err)
	}
	candidates := make([]listed, 0, len(list))
	for _, c := range list {
		if _, keep := c.Labels[KeepLabel]; keep {
			continue // the container list takes no label!= filter
		}
		candidates = append(candidates, listed{Object{ID: c.ID, Name: containerName(c.Names), Size: c.SizeRw}, c.Created,
			func(ctx context.Context) (string, error) {
				inspect, err := e.api.ContainerInspect(ctx, c.ID)
				return inspect.Created, err
			}})
	}
	objs, _, err := e.createdBy(qctx, candidates, cutoff)
	return objs, err
}

// ImagesInUse lists the image IDs used by containers, running or stopped, other than the ones
// in skip: the engine refuses to remove those images.
func (e *Engine) ImagesInUse(ctx context.Context, skip map[string]bool) (map[string]bool, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	list, err := e.api.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return nil, e.failed("listing containers to find images in use (GET /containers/json)", err)
	}
	used := map[string]bool{}
	for _, c := range list {
		if !skip[c.ID] {
			used[c.ImageID] = true
		}
	}
	return used, nil
}

// DanglingImages lists the heads the image prune considers: untagged images without children,
// created at or before cutoff and carrying labels. In-use images are among them; the engine skips
// those. On the containerd image store the list is asked for the records made before the cutoff
// (its until filter compares a dangling record's creation: when the image was loaded, pulled,
// tagged or left dangling), as that store's prune compares that time; the config's created time
// must be at or before the cutoff too, so a record made long after a build stays young. An image
// listed in the cutoff's own second, or at the Unix epoch or before (the list's reading of both a
// config created then and one with no creation time), is inspected for its exact time, as the
// engine compares that. noTime counts the images without a creation time, which are left out: the
// engine's prune keeps them too, except on Engine 20.10's classic store.
func (e *Engine) DanglingImages(ctx context.Context, cutoff time.Time, labels []gates.LabelSelector, store Store) (heads []Object, noTime int, err error) {
	qctx, cancel := e.query(ctx)
	defer cancel()
	f := withLabels(filters.NewArgs(filters.Arg("dangling", "true")), labels)
	if store.Containerd {
		f.Add("until", strconv.FormatInt(cutoff.Unix(), 10))
	}
	list, err := e.api.ImageList(qctx, image.ListOptions{Filters: f})
	if err != nil {
		return nil, 0, e.failed("listing dangling images (GET /images/json)", err)
	}
	candidates := make([]listed, 0, len(list))
	for _, im := range list {
		if _, keep := im.Labels[KeepLabel]; keep {
			continue // the image list takes no label!= filter
		}
		candidates = append(candidates, listed{Object{ID: im.ID, Size: im.Size}, im.Created,
			func(ctx context.Context) (string, error) {
				inspect, err := e.api.ImageInspect(ctx, im.ID)
				return inspect.Created, err
			}})
	}
	return e.createdBy(qctx, candidates, cutoff)
}

// parseCreated reads an inspected creation time; ok is false when the object has none (engines
// give "" or the zero time for an image config without "created"). The Unix epoch is a time.
func parseCreated(s string) (t time.Time, ok bool, err error) {
	if s == "" {
		return time.Time{}, false, nil
	}
	t, err = time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, false, &RuntimeError{What: "reading a creation time the daemon reported", Err: err}
	}
	return t, !t.IsZero(), nil
}

// DanglingRecord is the containerd image store's own name for an image's dangling record.
func DanglingRecord(id string) string { return "moby-dangling@" + id }

// DeleteImage deletes one image by ref (DELETE /images/{ref}?noprune=1, never forced), as the
// image phase does on the containerd image store, where its prune endpoint drops the leases of
// pulls in flight and makes them fail (moby/moby#53321) and a single delete does not, and where
// the plan is narrower than the classic store's prune. There ref is the image's dangling record
// (DanglingRecord): a delete by that name removes that record only, so a tag or digest reference
// that names the same image, even one made since the listing, keeps it; a delete by ID would
// remove every record of the image, its tags included. On the classic store ref is the ID. With
// noprune the engine deletes that image only, whose untagged parents the plan lists apart. kept
// is true when the image became used or was deleted meanwhile: the prune would skip it too.
func (e *Engine) DeleteImage(ctx context.Context, ref string) (deleted, untagged []string, kept bool, err error) {
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
			deleted = append(deleted, d.Deleted)
		}
		if d.Untagged != "" && d.Untagged != ref {
			untagged = append(untagged, d.Untagged)
		}
	}
	if len(deleted) == 0 {
		// Only the dangling record went: a reference made since the listing names the image.
		kept = true
	}
	return deleted, untagged, kept, nil
}

// listed is an object as a list gives it: its creation time in whole seconds, and how to ask for
// the exact time.
type listed struct {
	Object
	created int64
	inspect func(context.Context) (string, error)
}

// createdBy keeps the objects created at or before cutoff, as the engine decides: it compares the
// exact time, so an object listed in the cutoff's own second, or at the Unix epoch or before, is
// inspected. noTime counts the objects without a creation time, which are left out.
func (e *Engine) createdBy(ctx context.Context, candidates []listed, cutoff time.Time) (out []Object, noTime int, err error) {
	for _, c := range candidates {
		c.Created = time.Unix(c.created, 0)
		if c.created == cutoff.Unix() || c.created <= 0 {
			exact, err := c.inspect(ctx)
			if cerrdefs.IsNotFound(err) {
				continue // removed since it was listed
			}
			if err != nil {
				return nil, 0, e.failed("reading the exact creation time of "+c.ID, err)
			}
			created, ok, err := parseCreated(exact)
			if err != nil {
				return nil, 0, err
			}
			if !ok {
				noTime++
				continue
			}
			c.Created = created
		}
		if !c.Created.After(cutoff) {
			out = append(out, c.Object)
		}
	}
	return out, noTime, nil
}

// Images lists every image, intermediate ones included (GET /images/json?all=1): the image prune
// also deletes the untagged parents it leaves childless, and its answer mixes their IDs with
// layer IDs.
func (e *Engine) Images(ctx context.Context) ([]image.Summary, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	list, err := e.api.ImageList(ctx, image.ListOptions{All: true})
	if err != nil {
		return nil, e.failed("listing images (GET /images/json?all=1)", err)
	}
	return list, nil
}

// BuildCache lists every build-cache record (GET /system/df, asking for build cache only where
// the API version lets it: older engines ignore the type and compute everything).
func (e *Engine) BuildCache(ctx context.Context) ([]*build.CacheRecord, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	var opts types.DiskUsageOptions
	if versions.GreaterThanOrEqualTo(e.api.ClientVersion(), "1.42") {
		opts.Types = []types.DiskUsageObject{types.BuildCacheObject}
	}
	du, err := e.api.DiskUsage(ctx, opts)
	if cerrdefs.IsConflict(err) || err != nil && strings.Contains(err.Error(), "a disk usage operation is already running") {
		// Another client (another run of this plugin, say) is listing disk usage: Engine 20.10
		// answers a second listing with this error (HTTP 500), later engines share the first's answer.
		return nil, fmt.Errorf("%w: %v", ErrPruneRunning, err)
	}
	if err != nil {
		return nil, e.failed("listing build cache (GET /system/df)", err)
	}
	return du.BuildCache, nil
}

// prunableCache reports whether the build-cache prune without --all may remove a record: not in
// use, not shared with images, not internal or frontend.
func prunableCache(r *build.CacheRecord) bool {
	return !r.InUse && !r.Shared && r.Type != "internal" && r.Type != "frontend"
}

// UnusedBuildCache lists what the build-cache prune removes without --all: prunable records last
// used before cutoff (or never).
func (e *Engine) UnusedBuildCache(ctx context.Context, cutoff time.Time) ([]Object, error) {
	records, err := e.BuildCache(ctx)
	if err != nil {
		return nil, err
	}
	var out []Object
	for _, r := range records {
		if prunableCache(r) && (r.LastUsedAt == nil || r.LastUsedAt.Before(cutoff)) && cacheIDForm.MatchString(r.ID) {
			out = append(out, Object{ID: r.ID, Name: r.Description, Size: r.Size, Created: r.CreatedAt})
		}
	}
	return out, nil
}

// CacheUsage is the build cache's size as BuildKit counts it against a size limit, and the part a
// prune may remove. Records shared with images are not counted: with them in the limit, BuildKit
// stopped that much short of it (observed on Engine 20.10, docs/engine.md).
type CacheUsage struct {
	Total, Prunable int64
}

// BuildCacheUsage adds up the build cache's records.
func (e *Engine) BuildCacheUsage(ctx context.Context) (CacheUsage, error) {
	records, err := e.BuildCache(ctx)
	var u CacheUsage
	for _, r := range records {
		if !r.Shared {
			u.Total += max(r.Size, 0)
		}
		if prunableCache(r) {
			u.Prunable += max(r.Size, 0)
		}
	}
	return u, err
}

// PruneBuildCacheTo lets BuildKit remove least-recently-used prunable records until the whole
// build cache fits limit bytes (POST /build/prune, never --all, no age filter): keep-storage below
// API 1.48, max-used-space from 1.48, where keep-storage counts only when no reserved space is
// sent.
func (e *Engine) PruneBuildCacheTo(ctx context.Context, limit int64) ([]string, uint64, error) {
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

// SpaceHolders asks the engine what holds the space beyond the conservative tier (GET /system/df,
// every type): tagged images no container uses, volumes, build cache in use. Advice only.
func (e *Engine) SpaceHolders(ctx context.Context) (*SpaceAdvice, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	du, err := e.api.DiskUsage(ctx, types.DiskUsageOptions{})
	if err != nil {
		return nil, e.failed("asking what holds the space (GET /system/df)", err)
	}
	a := &SpaceAdvice{Volumes: len(du.Volumes)}
	for _, im := range du.Images {
		if im.Containers == 0 && referenced(*im) {
			tags := slices.DeleteFunc(slices.Clone(im.RepoTags), func(t string) bool { return t == "<none>:<none>" })
			name := strings.Join(tags, " ")
			if name == "" {
				name = strings.Join(im.RepoDigests, " ")
			}
			a.UnusedTagged = append(a.UnusedTagged, Object{ID: im.ID, Name: name, Size: im.Size, Created: time.Unix(im.Created, 0)})
		}
	}
	sort.Slice(a.UnusedTagged, func(i, j int) bool { return a.UnusedTagged[i].Size > a.UnusedTagged[j].Size })
	for _, im := range a.UnusedTagged {
		a.UnusedTaggedBytes += max(im.Size, 0)
	}
	a.UnusedTagged = a.UnusedTagged[:min(len(a.UnusedTagged), adviceImages)]
	for _, v := range du.Volumes {
		if v.UsageData != nil {
			a.VolumesBytes += max(v.UsageData.Size, 0)
		}
	}
	for _, r := range du.BuildCache {
		if r.InUse || r.Shared {
			a.BuildCacheInUseBytes += max(r.Size, 0)
		}
	}
	return a, nil
}

// adviceImages is how many of the largest unused tagged images the advice names.
const adviceImages = 5

// buildCacheMargin is taken off the build-cache age sent with the record IDs: more than the error
// of the daemon's clock as read from GET /info, far less than any `until` worth setting.
const buildCacheMargin = 100 * time.Millisecond

// ErrPruneRunning marks a phase skipped because another prune of the same kind was running on
// the daemon (HTTP 409 "a prune operation is already running").
var ErrPruneRunning = errors.New("another prune is already running on the daemon")

func (e *Engine) pruneErr(what string, err error) error {
	if cerrdefs.IsConflict(err) {
		return fmt.Errorf("%w (%v)", ErrPruneRunning, err)
	}
	return e.failed(what, err)
}

// PruneContainers removes stopped containers created before cutoff (POST /containers/prune).
func (e *Engine) PruneContainers(ctx context.Context, cutoff time.Time, labels []gates.LabelSelector) ([]string, uint64, error) {
	ctx, cancel := e.pruneContext(ctx)
	defer cancel()
	r, err := e.api.ContainersPrune(ctx, pruneFilters(cutoff, labels))
	if err != nil {
		return nil, 0, e.pruneErr("pruning stopped containers (POST /containers/prune)", err)
	}
	return r.ContainersDeleted, r.SpaceReclaimed, nil
}

// PruneDanglingImages removes dangling images created before cutoff (POST /images/prune with
// dangling=true, never false). It returns the image and layer IDs deleted and the tags removed.
func (e *Engine) PruneDanglingImages(ctx context.Context, cutoff time.Time, labels []gates.LabelSelector) (deleted, untagged []string, reclaimed uint64, err error) {
	ctx, cancel := e.pruneContext(ctx)
	defer cancel()
	f := pruneFilters(cutoff, labels)
	f.Add("dangling", "true")
	r, err := e.api.ImagesPrune(ctx, f)
	if err != nil {
		return nil, nil, 0, e.pruneErr("pruning dangling images (POST /images/prune)", err)
	}
	for _, d := range r.ImagesDeleted {
		if d.Deleted != "" {
			deleted = append(deleted, d.Deleted)
		}
		if d.Untagged != "" {
			untagged = append(untagged, d.Untagged)
		}
	}
	return deleted, untagged, r.SpaceReclaimed, nil
}

// PruneBuildCache removes the given unused build-cache records unless a build used them since
// they were listed (POST /build/prune, never --all). The records go by an id filter, which the
// engine reads as a regular expression and accepts once per call, so they are sent cacheBatch at
// a time; the run lists them before the image phase, which can free records it shared with an
// image, so a real run removes what its dry run lists and no more. Engines before 23.0 accept only
// a duration as `until` here (observed on 20.10), so the cutoff is sent as its age on the daemon's
// clock less a margin: BuildKit's own cut then falls at or after the cutoff whatever the request's
// latency, so every listed record passes it, and the IDs keep out what is younger. The engine
// ignores label filters here, so none are sent.
func (e *Engine) PruneBuildCache(ctx context.Context, ids []string, cutoff, daemonNow time.Time) ([]string, uint64, error) {
	age := max(daemonNow.Sub(cutoff).Round(time.Millisecond)-buildCacheMargin, time.Millisecond)
	var removed []string
	var reclaimed uint64
	for batch := range slices.Chunk(ids, cacheBatch) {
		pctx, cancel := e.pruneContext(ctx)
		f := filters.NewArgs(filters.Arg("until", age.String()), filters.Arg("id", cacheIDPattern(batch)))
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
// as `id~=VALUE`, a regular expression, which a quoted operand keeps whole.
func cacheIDPattern(ids []string) string {
	return `"^(` + strings.Join(ids, "|") + `)$"`
}

// cacheIDForm is what a build-cache record ID looks like; a record named otherwise is not sent.
var cacheIDForm = regexp.MustCompile(`^[a-z0-9]+$`)

// failed wraps an Engine API error as a runtime error that names the call and the daemon.
func (e *Engine) failed(what string, err error) error {
	var stop *StopCause
	if errors.As(err, &stop) {
		// The run's timeout or a signal cut the call short: the daemon may well have answered.
		return &RuntimeError{What: "stopped while " + what, Err: stop}
	}
	if client.IsErrConnectionFailed(err) {
		return &RuntimeError{What: what, Err: fmt.Errorf("daemon unreachable at %s: %w", e.api.DaemonHost(), err)}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &RuntimeError{What: what, Err: fmt.Errorf("no answer from %s in time: %w", e.api.DaemonHost(), err)}
	}
	return &RuntimeError{What: what, Err: err}
}
