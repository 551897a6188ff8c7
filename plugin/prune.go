package plugin

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/docker/docker/api/types/image"
)

// pruning is what the phases of one run share: the cutoff on the daemon's clock, how far the
// daemon's clock is from this host's, and the containers the container phase removed (their
// images are free for the image phase).
type pruning struct {
	cutoff            time.Time
	clockOffset       time.Duration
	removedContainers map[string]bool
	// store is the engine's image store, which decides how images are pruned.
	store Store
	// cacheWouldRemove is what a dry run's build-cache phase would remove, for the budget phase.
	cacheWouldRemove int64
}

// prunePhase carries out (or, in a dry run, lists) one phase.
func (r *Run) prunePhase(ctx context.Context, p *pruning, ph *PhaseReport) error {
	switch ph.Phase {
	case PhaseContainers:
		return r.pruneContainers(ctx, p, ph)
	case PhaseImages:
		return r.pruneImages(ctx, p, ph)
	case PhaseBuildCache:
		return r.pruneBuildCache(ctx, p, ph)
	default:
		return r.pruneBuildCacheToBudget(ctx, p, ph)
	}
}

// pruneContainers removes (or lists) stopped containers created at or before the cutoff.
func (r *Run) pruneContainers(ctx context.Context, p *pruning, ph *PhaseReport) error {
	p.removedContainers = map[string]bool{}
	ph.Filters = PruneFilterText(p.cutoff, r.Config.Labels)
	if r.Config.DryRun {
		objs, err := r.Engine.StoppedContainers(ctx, p.cutoff, r.Config.Labels)
		if err != nil {
			return err
		}
		for _, o := range objs {
			p.removedContainers[o.ID] = true
		}
		setObjects(ph, StatusWouldRemove, objs)
		return nil
	}
	ids, bytes, err := r.Engine.PruneContainers(ctx, p.cutoff, r.Config.Labels)
	if err != nil {
		return err
	}
	for _, id := range ids {
		p.removedContainers[id] = true
	}
	setRemoved(ph, ids, bytes)
	return nil
}

// pruneImages removes (or lists) dangling images created at or before the cutoff, with the
// untagged parents the engine deletes along with them. Every image ID the engine reports deleted
// is counted as an image; the other IDs it reports are layers.
func (r *Run) pruneImages(ctx context.Context, p *pruning, ph *PhaseReport) error {
	ph.Filters = append(PruneFilterText(p.cutoff, r.Config.Labels), "dangling=true")
	all, err := r.Engine.Images(ctx)
	if err != nil {
		return err
	}
	if r.Config.DryRun || p.store.Containerd {
		heads, err := r.Engine.DanglingImages(ctx, p.cutoff, r.Config.Labels, p.store)
		if err != nil {
			return err
		}
		inUse, err := r.Engine.ImagesInUse(ctx, p.removedContainers)
		if err != nil {
			return err
		}
		plan := imagePrunePlan(heads, all, inUse)
		if r.Config.DryRun {
			setObjects(ph, StatusWouldRemove, byID(plan))
			return nil
		}
		return r.deleteImages(ctx, plan, all, ph)
	}
	known := map[string]image.Summary{}
	for _, im := range all {
		known[im.ID] = im
	}
	deleted, untagged, bytes, err := r.Engine.PruneDanglingImages(ctx, p.cutoff, r.Config.Labels)
	if err != nil {
		return err
	}
	var objs []Object
	for _, id := range deleted {
		if im, ok := known[id]; ok {
			objs = append(objs, imageObject(im))
		} else {
			ph.Layers++
		}
	}
	setObjects(ph, StatusRemoved, objs)
	ph.Untagged, ph.Bytes = untagged, bytes
	return nil
}

// deleteImages deletes the planned images one by one, each after its planned children (the
// containerd image store's way, see Engine.DeleteImage), and reports what the engine deleted; the
// bytes are the deleted images' listed sizes, as the engine reports none for a delete. A parent
// whose child stayed (it became used meanwhile) stays too, as the plan's rule has it.
func (r *Run) deleteImages(ctx context.Context, plan []Object, all []image.Summary, ph *PhaseReport) error {
	known := map[string]Object{}
	parent := map[string]string{}
	for _, im := range all {
		known[im.ID] = imageObject(im)
		parent[im.ID] = im.ParentID
	}
	childKept := map[string]bool{}
	var objs []Object
	var err error
	for _, o := range plan {
		if ctx.Err() != nil {
			err = ctx.Err()
			break
		}
		if childKept[o.ID] {
			childKept[parent[o.ID]] = true
			continue
		}
		deleted, untagged, kept, derr := r.Engine.DeleteImage(ctx, o.ID)
		if derr != nil {
			err = derr
			break
		}
		if kept {
			childKept[parent[o.ID]] = true
		}
		for _, id := range deleted {
			if im, ok := known[id]; ok {
				objs = append(objs, im)
			} else {
				ph.Layers++
			}
		}
		ph.Untagged = append(ph.Untagged, untagged...)
	}
	setObjects(ph, StatusRemoved, byID(objs))
	for _, o := range objs {
		ph.Bytes += uint64(max(o.Size, 0))
	}
	ph.Reason = "deleted one by one: on the containerd image store the prune endpoint makes pulls in flight fail (moby/moby#53321); bytes are the images' listed sizes"
	return err
}

// pruneBuildCache removes (or lists) unused build cache last used before the cutoff; with labels
// set it is skipped, since the engine ignores labels there and would prune outside them.
func (r *Run) pruneBuildCache(ctx context.Context, p *pruning, ph *PhaseReport) error {
	if skipForLabels(r.Config, ph) {
		return nil
	}
	ph.Filters = []string{"until=" + p.cutoff.UTC().Format(time.RFC3339) + " (sent as its age on the daemon's clock)"}
	if r.Config.DryRun {
		objs, err := r.Engine.UnusedBuildCache(ctx, p.cutoff)
		if err != nil {
			return err
		}
		setObjects(ph, StatusWouldRemove, objs)
		p.cacheWouldRemove = int64(ph.Bytes)
		return nil
	}
	// The daemon's clock now, read from this host's, for the age the engine is sent.
	ids, bytes, err := r.Engine.PruneBuildCache(ctx, p.cutoff, time.Now().Add(p.clockOffset))
	if err != nil {
		return err
	}
	setRemoved(ph, ids, bytes)
	return nil
}

// pruneBuildCacheToBudget lets BuildKit remove least-recently-used prunable build cache, whatever
// its age, until the prunable part fits build_cache_budget; the records in use stay, so the limit
// BuildKit is sent is the budget plus their size. A dry run says how much is over the
// budget: BuildKit picks the records only when it prunes.
func (r *Run) pruneBuildCacheToBudget(ctx context.Context, p *pruning, ph *PhaseReport) error {
	if skipForLabels(r.Config, ph) {
		return nil
	}
	usage, err := r.Engine.BuildCacheUsage(ctx)
	if err != nil {
		return err
	}
	budget := int64(r.Config.BuildCacheBudget)
	prunable := usage.Prunable - p.cacheWouldRemove
	limit := usage.Total - usage.Prunable + budget
	ph.Filters = []string{fmt.Sprintf("limit=%s (build_cache_budget %s + %s in use)",
		human(uint64(limit)), human(uint64(budget)), human(uint64(usage.Total-usage.Prunable)))}
	switch {
	case prunable <= budget:
		ph.Status = StatusSkipped
		ph.Reason = fmt.Sprintf("unused build cache (%s) is within build_cache_budget %s", human(uint64(max(prunable, 0))), human(uint64(budget)))
		return nil
	case r.Config.DryRun:
		setObjects(ph, StatusWouldRemove, nil)
		ph.Bytes = uint64(prunable - budget)
		ph.Reason = fmt.Sprintf("unused build cache (%s) is over build_cache_budget %s; BuildKit picks the least recently used records when it prunes", human(uint64(prunable)), human(uint64(budget)))
		return nil
	}
	ids, bytes, err := r.Engine.PruneBuildCacheTo(ctx, limit)
	if err != nil {
		return err
	}
	setRemoved(ph, ids, bytes)
	return nil
}

// skipForLabels skips a build-cache phase when labels is set: the engine ignores labels there and
// would prune beyond them.
func skipForLabels(cfg Config, ph *PhaseReport) bool {
	if len(cfg.Labels) == 0 {
		return false
	}
	ph.Status = StatusSkipped
	ph.Reason = "labels is set and the engine ignores labels when pruning build cache, so this phase would reach beyond them"
	return true
}

func imageObject(im image.Summary) Object {
	return Object{ID: im.ID, Size: im.Size, Created: time.Unix(im.Created, 0)}
}

// imagePrunePlan is what the engine's dangling-image prune deletes: every head (a dangling image
// without children, already filtered by age and labels) that no container uses, and then, walking
// up from each, every parent left without children that has no tag or digest and that no
// container uses — the classic store deletes with PruneChildren and stops at the first parent it
// may not delete. The plan comes in deletion order: an image after every planned image that is its
// child. The set does not depend on the order the heads are taken in.
func imagePrunePlan(heads []Object, all []image.Summary, inUse map[string]bool) []Object {
	byID := map[string]image.Summary{}
	children := map[string]int{}
	for _, im := range all {
		byID[im.ID] = im
		if im.ParentID != "" {
			children[im.ParentID]++
		}
	}
	var plan []Object
	for _, h := range heads {
		if inUse[h.ID] {
			continue
		}
		plan = append(plan, h)
		for parent := byID[h.ID].ParentID; parent != ""; parent = byID[parent].ParentID {
			children[parent]--
			im, ok := byID[parent]
			if !ok || children[parent] > 0 || referenced(im) || inUse[parent] {
				break
			}
			plan = append(plan, imageObject(im))
		}
	}
	return plan
}

// byID is objs sorted by ID, as the report lists them.
func byID(objs []Object) []Object {
	out := slices.Clone(objs)
	slices.SortFunc(out, func(a, b Object) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// referenced reports whether an image has a tag or a digest reference (older engines list an
// untagged image as "<none>:<none>" and "<none>@<none>").
func referenced(im image.Summary) bool {
	for _, ref := range append(im.RepoTags, im.RepoDigests...) {
		if ref != "<none>:<none>" && ref != "<none>@<none>" {
			return true
		}
	}
	return false
}

// setRemoved records what a prune call reported: the IDs it removed and the bytes it reclaimed.
func setRemoved(ph *PhaseReport, ids []string, bytes uint64) {
	objs := make([]Object, 0, len(ids))
	for _, id := range ids {
		objs = append(objs, Object{ID: id})
	}
	setObjects(ph, StatusRemoved, objs)
	ph.Bytes = bytes
}

func setObjects(ph *PhaseReport, status string, objs []Object) {
	ph.Status, ph.Objects, ph.Count = status, objs, len(objs)
	if status == StatusWouldRemove {
		for _, o := range objs {
			if o.Size > 0 {
				ph.Bytes += uint64(o.Size)
			}
		}
	}
}
