package plugin

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/docker/docker/api/types/image"

	"github.com/drone-gated-prune/drone-gated-prune/internal/engine"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// pruning is what the phases of one run share: the cutoff on the daemon's clock, how far the
// daemon's clock is from this host's, and the containers the container phase removed (in a dry
// run, the ones it would remove): the images only they use are free for the image phase.
type pruning struct {
	cutoff         time.Time
	clockOffset    time.Duration
	containersGone map[string]bool
	// store is the engine's image store, which decides how images are pruned.
	store engine.Store
	// cacheWouldRemove is what a dry run's build-cache phase would remove, for the budget phase.
	cacheWouldRemove int64
	// cachePlan is what the build-cache phase of a real run may remove, listed before the image
	// phase as a dry run lists it; cacheBusy, when not nil, says that listing met another client's.
	cachePlan []report.Object
	cacheBusy error
}

// prunePhase carries out (or, in a dry run, lists) one phase.
func (r *Run) prunePhase(ctx context.Context, p *pruning, ph *report.PhaseReport) error {
	switch ph.Phase {
	case report.PhaseContainers:
		return r.pruneContainers(ctx, p, ph)
	case report.PhaseImages:
		return r.pruneImages(ctx, p, ph)
	case report.PhaseBuildCache:
		return r.pruneBuildCache(ctx, p, ph)
	default:
		return r.pruneBuildCacheToBudget(ctx, p, ph)
	}
}

// pruneContainers removes (or lists) stopped containers created at or before the cutoff.
func (r *Run) pruneContainers(ctx context.Context, p *pruning, ph *report.PhaseReport) error {
	p.containersGone = map[string]bool{}
	ph.Filters = PruneFilterText(p.cutoff, r.Config.Labels)
	if r.Config.DryRun {
		listed, err := r.Engine.StoppedContainers(ctx, stoppedListFilters(r.Config.Labels, p.store))
		if err != nil {
			return err
		}
		objs, _, err := createdBy(ctx, withoutKeepLabel(listed), p.cutoff, r.Engine.ContainerCreated)
		if err != nil {
			return err
		}
		for _, o := range objs {
			p.containersGone[o.ID] = true
		}
		setObjects(ph, report.StatusWouldRemove, objs)
		return nil
	}
	ids, bytes, err := r.Engine.PruneContainers(ctx, pruneFilters(p.cutoff, r.Config.Labels))
	if err != nil {
		return err
	}
	for _, id := range ids {
		p.containersGone[id] = true
	}
	setRemoved(ph, ids, bytes)
	return nil
}

// pruneImages removes (or lists) dangling images created at or before the cutoff, with the
// untagged parents the engine deletes along with them. Every image ID the engine reports deleted
// is counted as an image; the other IDs it reports are layers. The classic store's prune endpoint
// is used where it removes exactly the plan; elsewhere the plan is deleted image by image.
func (r *Run) pruneImages(ctx context.Context, p *pruning, ph *report.PhaseReport) error {
	ph.Filters = append(PruneFilterText(p.cutoff, r.Config.Labels), "dangling=true")
	if !r.Config.DryRun && len(r.Config.Labels) == 0 && p.store.HasBuildCache() {
		// What the build-cache phase may remove, before this phase frees the records an image shared.
		// A listing another client holds skips the build-cache phase, as a prune it holds would.
		var err error
		p.cachePlan, err = r.unusedBuildCache(ctx, p.cutoff)
		if errors.Is(err, engine.ErrPruneRunning) {
			p.cacheBusy = err
		} else if err != nil {
			return err
		}
	}
	all, err := r.Engine.Images(ctx)
	if err != nil {
		return err
	}
	listed, err := r.Engine.DanglingImages(ctx, danglingListFilters(p.cutoff, r.Config.Labels, p.store))
	if err != nil {
		return err
	}
	heads, noTime, err := createdBy(ctx, withoutKeepLabel(listed), p.cutoff, r.Engine.ImageCreated)
	if err != nil {
		return err
	}
	containers, err := r.Engine.ContainerImages(ctx)
	if err != nil {
		return err
	}
	plan := planImagePrune(heads, all, imagesInUse(containers, p.containersGone), r.Config.Labels)
	if r.Config.DryRun {
		setObjects(ph, report.StatusWouldRemove, byID(plan.Images))
		return nil
	}
	if p.store.Containerd || plan.Narrower || noTime > 0 {
		return r.deleteImages(ctx, plan.Images, all, p.store, ph)
	}
	known := map[string]image.Summary{}
	for _, im := range all {
		known[im.ID] = im
	}
	deleted, untagged, bytes, err := r.Engine.PruneImages(ctx, danglingPruneFilters(p.cutoff, r.Config.Labels))
	if err != nil {
		return err
	}
	var objs []report.Object
	for _, id := range deleted {
		if im, ok := known[id]; ok {
			objs = append(objs, imageObject(im))
		} else {
			ph.Layers++
		}
	}
	setObjects(ph, report.StatusRemoved, objs)
	ph.Untagged, ph.Bytes = untagged, bytes
	return nil
}

// deleteWorkers is how many image deletes the image phase keeps in flight: the engine answers
// them concurrently, and a few in flight hide each request's round trip.
const deleteWorkers = 8

// deletion is one image delete's answer.
type deletion struct {
	image             report.Object
	deleted, untagged []string
	kept              bool
	err               error
}

// deleteImages deletes the planned images one by one (engine.Client.DeleteImage), deleteWorkers at a
// time, each once every planned child of it is gone, and reports what the engine deleted; the
// bytes are the deleted images' listed sizes, as the engine reports none for a delete. A parent
// whose child stayed (it became used meanwhile) stays too, as the plan's rule has it. After a
// failure or a stop no further delete is sent; those in flight are awaited.
func (r *Run) deleteImages(ctx context.Context, plan []report.Object, all []image.Summary, store engine.Store, ph *report.PhaseReport) error {
	known := map[string]report.Object{}
	parent := map[string]string{}
	for _, im := range all {
		known[im.ID] = imageObject(im)
		parent[im.ID] = im.ParentID
	}
	planned := map[string]report.Object{}
	children := map[string]int{} // planned children not yet deleted
	for _, o := range plan {
		planned[o.ID] = o
	}
	for _, o := range plan {
		if _, ok := planned[parent[o.ID]]; ok {
			children[parent[o.ID]]++
		}
	}
	var ready []report.Object
	for _, o := range plan {
		if children[o.ID] == 0 {
			ready = append(ready, o)
		}
	}
	childKept := map[string]bool{}
	// done lets a parent go once its last planned child is settled.
	done := func(id string, kept bool) {
		up := parent[id]
		if _, ok := planned[up]; !ok {
			return
		}
		childKept[up] = childKept[up] || kept
		if children[up]--; children[up] == 0 {
			ready = append(ready, planned[up])
		}
	}
	answers := make(chan deletion)
	var objs []report.Object
	var err error
	inFlight := 0
	for {
		for err == nil && len(ready) > 0 && inFlight < deleteWorkers {
			if ctx.Err() != nil {
				err = ctx.Err()
				break
			}
			o := ready[0]
			ready = ready[1:]
			if childKept[o.ID] {
				done(o.ID, true)
				continue
			}
			inFlight++
			go func() {
				ref := o.ID
				if store.Containerd {
					ref = engine.DanglingRecord(o.ID)
				}
				d := deletion{image: o}
				d.deleted, d.untagged, d.kept, d.err = r.Engine.DeleteImage(ctx, ref)
				answers <- d
			}()
		}
		if inFlight == 0 {
			break
		}
		d := <-answers
		inFlight--
		if d.err != nil {
			err = cmp.Or(err, d.err)
			continue
		}
		for _, id := range d.deleted {
			if im, ok := known[id]; ok {
				objs = append(objs, im)
			} else {
				ph.Layers++
			}
		}
		ph.Untagged = append(ph.Untagged, d.untagged...)
		done(d.image.ID, d.kept)
	}
	setObjects(ph, report.StatusRemoved, byID(objs))
	for _, o := range objs {
		ph.Bytes += uint64(max(o.Size, 0))
	}
	if store.Containerd {
		ph.Reason = "deleted one by one by each image's dangling record: on the containerd image store the prune endpoint makes pulls in flight fail (moby/moby#53321), and a delete by ID also removes tags; bytes are the images' listed sizes"
	} else {
		ph.Reason = "deleted one by one: the engine's prune would also delete untagged parents the plan keeps (they lack a labels label, or carry the keep label), images a digest reference names or without a creation time; bytes are the images' listed sizes"
	}
	return err
}

// pruneBuildCache removes (or lists) unused build cache last used before the cutoff; with labels
// set it is skipped, since the engine ignores labels there and would prune outside them.
func (r *Run) pruneBuildCache(ctx context.Context, p *pruning, ph *report.PhaseReport) error {
	if skipForLabels(r.Config, ph) || skipWithoutBuildCache(p.store, ph) {
		return nil
	}
	ph.Filters = []string{"until=" + p.cutoff.UTC().Format(time.RFC3339) + " (sent as its age on the daemon's clock)"}
	if r.Config.DryRun {
		objs, err := r.unusedBuildCache(ctx, p.cutoff)
		if err != nil {
			return err
		}
		setObjects(ph, report.StatusWouldRemove, objs)
		p.cacheWouldRemove = int64(ph.Bytes)
		return nil
	}
	if p.cacheBusy != nil {
		return p.cacheBusy
	}
	ph.Reason = "the records listed before the image phase, by ID: records that phase frees from an image wait for the next run, as a dry run cannot tell which image a record is shared with"
	if len(p.cachePlan) == 0 {
		setRemoved(ph, nil, 0)
		return nil
	}
	ids := make([]string, 0, len(p.cachePlan))
	for _, o := range p.cachePlan {
		ids = append(ids, o.ID)
	}
	// The daemon's clock now, read from this host's, for the age the engine is sent.
	ids, bytes, err := r.Engine.PruneBuildCache(ctx, ids, buildCacheAge(p.cutoff, time.Now().Add(p.clockOffset)))
	setRemoved(ph, ids, bytes)
	return err
}

// pruneBuildCacheToBudget lets BuildKit remove least-recently-used prunable build cache, whatever
// its age, until the prunable part fits build_cache_budget; the records in use stay, so the limit
// BuildKit is sent is the budget plus their size. A dry run says how much is over the
// budget: BuildKit picks the records only when it prunes.
func (r *Run) pruneBuildCacheToBudget(ctx context.Context, p *pruning, ph *report.PhaseReport) error {
	if skipForLabels(r.Config, ph) || skipWithoutBuildCache(p.store, ph) {
		return nil
	}
	records, err := r.Engine.BuildCache(ctx)
	if err != nil {
		return err
	}
	total, prunable := cacheUsage(records)
	budget := int64(r.Config.BuildCacheBudget)
	limit := total - prunable + budget
	prunable -= p.cacheWouldRemove
	ph.Filters = []string{fmt.Sprintf("limit=%s (build_cache_budget %s + %s in use)",
		report.Human(uint64(limit)), report.Human(uint64(budget)), report.Human(uint64(limit-budget)))}
	switch {
	case prunable <= budget:
		ph.Status = report.StatusSkipped
		ph.Reason = fmt.Sprintf("unused build cache (%s) is within build_cache_budget %s", report.Human(uint64(max(prunable, 0))), report.Human(uint64(budget)))
		return nil
	case r.Config.DryRun:
		setObjects(ph, report.StatusWouldRemove, nil)
		ph.Bytes = uint64(prunable - budget)
		ph.Reason = fmt.Sprintf("unused build cache (%s) is over build_cache_budget %s; BuildKit picks the least recently used records when it prunes", report.Human(uint64(prunable)), report.Human(uint64(budget)))
		return nil
	}
	ids, bytes, err := r.Engine.PruneBuildCacheTo(ctx, limit)
	if err != nil {
		return err
	}
	setRemoved(ph, ids, bytes)
	return nil
}

// skipWithoutBuildCache skips a build-cache phase, in a dry run as in a real one, on an engine
// that has no build cache to prune.
func skipWithoutBuildCache(store engine.Store, ph *report.PhaseReport) bool {
	if store.HasBuildCache() {
		return false
	}
	ph.Status = report.StatusSkipped
	ph.Reason = store.Engine + " has no build-cache prune (POST /build/prune answers 404): nothing of this phase runs"
	return true
}

// skipForLabels skips a build-cache phase when labels is set: the engine ignores labels there and
// would prune beyond them.
func skipForLabels(cfg Config, ph *report.PhaseReport) bool {
	if len(cfg.Labels) == 0 {
		return false
	}
	ph.Status = report.StatusSkipped
	ph.Reason = "labels is set and the engine ignores labels when pruning build cache, so this phase would reach beyond them"
	return true
}

// createdBy keeps the listed objects created at or before cutoff, as the engine decides: where
// the listed second cannot settle it (needsExactTime) it asks exact, one request each. noTime
// counts the objects without a creation time, which are left out: the engine's prune keeps them
// too, except on Engine 20.10's classic store.
func createdBy(ctx context.Context, listed []engine.Listed, cutoff time.Time, exact func(context.Context, string) (string, error)) (out []report.Object, noTime int, err error) {
	for _, l := range listed {
		o := l.Object
		o.Created = time.Unix(l.Unix, 0)
		if needsExactTime(l.Unix, cutoff) {
			s, err := exact(ctx, l.ID)
			if errors.Is(err, engine.ErrGone) {
				continue
			}
			if err != nil {
				return nil, 0, err
			}
			created, ok, err := parseCreated(s)
			if err != nil {
				return nil, 0, err
			}
			if !ok {
				noTime++
				continue
			}
			o.Created = created
		}
		if !o.Created.After(cutoff) {
			out = append(out, o)
		}
	}
	return out, noTime, nil
}

// unusedBuildCache lists the build-cache records the build-cache prune removes (unusedCache).
func (r *Run) unusedBuildCache(ctx context.Context, cutoff time.Time) ([]report.Object, error) {
	records, err := r.Engine.BuildCache(ctx)
	if err != nil {
		return nil, err
	}
	return unusedCache(records, cutoff), nil
}

// setRemoved records what a prune call reported: the IDs it removed and the bytes it reclaimed.
func setRemoved(ph *report.PhaseReport, ids []string, bytes uint64) {
	objs := make([]report.Object, 0, len(ids))
	for _, id := range ids {
		objs = append(objs, report.Object{ID: id})
	}
	setObjects(ph, report.StatusRemoved, objs)
	ph.Bytes = bytes
}

func setObjects(ph *report.PhaseReport, status string, objs []report.Object) {
	ph.Status, ph.Objects, ph.Count = status, objs, len(objs)
	if status == report.StatusWouldRemove {
		for _, o := range objs {
			if o.Size > 0 {
				ph.Bytes += uint64(o.Size)
			}
		}
	}
}
