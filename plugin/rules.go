package plugin

import (
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/engine"
	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// The prune rules: which filters each phase sends, which listed objects it keeps, and what the
// engine's answers add up to. Pure functions over values; the run (prune.go) asks the engine and
// applies them.

// KeepLabel is the one label that keeps a container or an image from every prune, whatever its
// value: each container and image prune carries a label!= filter for it, and no setting turns
// that off. (Build-cache records carry no labels.)
const KeepLabel = "drone-gated-prune.keep"

// withLabels adds one label filter per selector: the engine then requires all of them.
func withLabels(f filters.Args, labels []gates.LabelSelector) filters.Args {
	for _, l := range labels {
		f.Add("label", l.String())
	}
	return f
}

// pruneFilters is what the container and image prunes are sent: the cutoff, the labels setting
// and the keep label.
func pruneFilters(cutoff time.Time, labels []gates.LabelSelector) filters.Args {
	f := withLabels(filters.NewArgs(filters.Arg("until", strconv.FormatInt(cutoff.Unix(), 10))), labels)
	f.Add("label!", KeepLabel)
	return f
}

// danglingPruneFilters is what the classic store's image prune is sent: pruneFilters, dangling
// only (never dangling=false).
func danglingPruneFilters(cutoff time.Time, labels []gates.LabelSelector) filters.Args {
	f := pruneFilters(cutoff, labels)
	f.Add("dangling", "true")
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

// stoppedListFilters lists what the container prune considers: created, exited and dead
// containers carrying labels (on Podman, which has no "dead" state and refuses a filter naming
// one: created, exited and stopped). The list takes no label!= filter (withoutKeepLabel).
func stoppedListFilters(labels []gates.LabelSelector, store engine.Store) filters.Args {
	last := "dead"
	if store.Podman {
		last = "stopped"
	}
	return withLabels(filters.NewArgs(filters.Arg("status", "created"), filters.Arg("status", "exited"), filters.Arg("status", last)), labels)
}

// danglingListFilters lists the heads the image prune considers: untagged images without children
// carrying labels. On the containerd image store only records made before the cutoff: the list's
// until filter there compares a dangling record's creation (when the image was loaded, pulled,
// tagged or left dangling), as that store's prune does; the config's created time must be at or
// before the cutoff too (createdBy), so a record made long after a build stays young.
func danglingListFilters(cutoff time.Time, labels []gates.LabelSelector, store engine.Store) filters.Args {
	f := withLabels(filters.NewArgs(filters.Arg("dangling", "true")), labels)
	if store.Containerd {
		f.Add("until", strconv.FormatInt(cutoff.Unix(), 10))
	}
	return f
}

// withoutKeepLabel leaves out the listed objects that carry the keep label.
func withoutKeepLabel(listed []engine.Listed) []engine.Listed {
	return slices.DeleteFunc(slices.Clone(listed), func(l engine.Listed) bool {
		_, keep := l.Labels[KeepLabel]
		return keep
	})
}

// needsExactTime reports whether a listed creation time cannot settle the cutoff: the list gives
// whole seconds, and the engine compares the exact time, so an object listed in the cutoff's own
// second must be inspected; so must one listed at the Unix epoch or before, which the list gives
// alike for a config created then and one with no creation time.
func needsExactTime(listedUnix int64, cutoff time.Time) bool {
	return listedUnix == cutoff.Unix() || listedUnix <= 0
}

// parseCreated reads an inspected creation time; ok is false when the object has none (engines
// give "" or the zero time for an image config without "created"). The Unix epoch is a time.
func parseCreated(s string) (t time.Time, ok bool, err error) {
	if s == "" {
		return time.Time{}, false, nil
	}
	t, err = time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, false, &outcome.RuntimeError{What: "reading a creation time the daemon reported", Err: err}
	}
	return t, !t.IsZero(), nil
}

// imagesInUse is the set of image IDs that containers use (container ID → image ID), leaving out
// the containers in skip (those the container phase removed): the engine refuses to remove an image
// a container uses.
func imagesInUse(containers map[string]string, skip map[string]bool) map[string]bool {
	used := map[string]bool{}
	for id, imageID := range containers {
		if !skip[id] {
			used[imageID] = true
		}
	}
	return used
}

// prunableCache reports whether the build-cache prune without --all may remove a record: not in
// use, not shared with images, not internal or frontend.
func prunableCache(r *build.CacheRecord) bool {
	return !r.InUse && !r.Shared && r.Type != "internal" && r.Type != "frontend"
}

// cacheIDForm is what a build-cache record ID looks like; a record named otherwise is not sent
// (the id filter is a regular expression, engine.PruneBuildCache).
var cacheIDForm = regexp.MustCompile(`^[a-z0-9]+$`)

// unusedCache is what the build-cache prune removes without --all: prunable records last used
// before cutoff (or never).
func unusedCache(records []*build.CacheRecord, cutoff time.Time) []report.Object {
	var out []report.Object
	for _, r := range records {
		if prunableCache(r) && (r.LastUsedAt == nil || r.LastUsedAt.Before(cutoff)) && cacheIDForm.MatchString(r.ID) {
			out = append(out, report.Object{ID: r.ID, Name: r.Description, Size: r.Size, Created: r.CreatedAt})
		}
	}
	return out
}

// cacheUsage is the build cache's size as BuildKit counts it against a size limit, and the part a
// prune may remove. Records shared with images are not counted: with them in the limit, BuildKit
// stopped that much short of it (observed on Engine 20.10, docs/engine.md).
func cacheUsage(records []*build.CacheRecord) (total, prunable int64) {
	for _, r := range records {
		if !r.Shared {
			total += max(r.Size, 0)
		}
		if prunableCache(r) {
			prunable += max(r.Size, 0)
		}
	}
	return total, prunable
}

// buildCacheMargin is taken off the build-cache age sent with the record IDs (buildCacheAge).
const buildCacheMargin = 100 * time.Millisecond

// buildCacheAge is the `until` age the build-cache prune is sent with the record IDs: the cutoff's
// age on the daemon's clock as this host reads it (daemonNow), less buildCacheMargin, at least
// 1 ms. BuildKit cuts at its own clock less that age; its clock when the request arrives is
// daemonNow plus the request's latency plus the error of reading the daemon's clock from GET
// /info, so its cut falls at or after the cutoff whenever that error is under the margin,
// whatever the latency. Every listed record, last used before the cutoff, then passes the cut;
// the IDs keep out the records used later.
func buildCacheAge(cutoff, daemonNow time.Time) time.Duration {
	return max(daemonNow.Sub(cutoff).Round(time.Millisecond)-buildCacheMargin, time.Millisecond)
}

// spaceAdvice is what holds the space beyond the conservative tier in the engine's disk-usage
// account: tagged images no container uses (the largest AdviceImages named), volumes, build cache
// in use or shared. Advice only.
func spaceAdvice(du types.DiskUsage) *report.SpaceAdvice {
	a := &report.SpaceAdvice{Volumes: len(du.Volumes)}
	for _, im := range du.Images {
		if im.Containers == 0 && referenced(*im) {
			tags := slices.DeleteFunc(slices.Clone(im.RepoTags), func(t string) bool { return t == "<none>:<none>" })
			name := strings.Join(tags, " ")
			if name == "" {
				name = strings.Join(im.RepoDigests, " ")
			}
			a.UnusedTagged = append(a.UnusedTagged, report.Object{ID: im.ID, Name: name, Size: im.Size, Created: time.Unix(im.Created, 0)})
		}
	}
	sort.SliceStable(a.UnusedTagged, func(i, j int) bool { return a.UnusedTagged[i].Size > a.UnusedTagged[j].Size })
	for _, im := range a.UnusedTagged {
		a.UnusedTaggedBytes += max(im.Size, 0)
	}
	a.UnusedTagged = a.UnusedTagged[:min(len(a.UnusedTagged), report.AdviceImages)]
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
	return a
}

func imageObject(im image.Summary) report.Object {
	return report.Object{ID: im.ID, Size: im.Size, Created: time.Unix(im.Created, 0)}
}

// imagePlan is what the image phase removes, in deletion order: an image after every planned
// image that is its child.
type imagePlan struct {
	Images []report.Object
	// Narrower is true when the classic store's prune endpoint would delete more than Images: a
	// head a digest reference names, or an untagged parent the plan keeps for its labels.
	Narrower bool
}

// planImagePrune is what the engine's dangling-image prune deletes, kept to the images no tag or
// digest reference names and that carry every label in labels: every head (a dangling image
// without children, already filtered by age and labels) that no container uses and that the full
// listing shows unreferenced (on the containerd store a dangling record can sit beside a tag of
// the same image), and then, walking up from each, every parent left without children that has no
// tag or digest, that no container uses and that carries labels — the classic store deletes with
// PruneChildren and stops at the first parent it may not delete, though it does not look at the
// parents' labels. The set does not depend on the order the heads are taken in.
func planImagePrune(heads []report.Object, all []image.Summary, inUse map[string]bool, labels []gates.LabelSelector) imagePlan {
	byID := map[string]image.Summary{}
	children := map[string]int{}
	for _, im := range all {
		byID[im.ID] = im
		if im.ParentID != "" {
			children[im.ParentID]++
		}
	}
	var plan imagePlan
	for _, h := range heads {
		if inUse[h.ID] {
			continue
		}
		if im, ok := byID[h.ID]; ok && referenced(im) {
			plan.Narrower = true
			continue
		}
		plan.Images = append(plan.Images, h)
		for parent := byID[h.ID].ParentID; parent != ""; parent = byID[parent].ParentID {
			children[parent]--
			im, ok := byID[parent]
			if !ok || children[parent] > 0 || referenced(im) || inUse[parent] {
				break
			}
			if _, keep := im.Labels[KeepLabel]; keep || !matchesAll(labels, im.Labels) {
				plan.Narrower = true
				break
			}
			plan.Images = append(plan.Images, imageObject(im))
		}
	}
	return plan
}

// matchesAll reports whether labels carry every selector, as the engine's label filters match.
func matchesAll(selectors []gates.LabelSelector, labels map[string]string) bool {
	for _, sel := range selectors {
		if !sel.Matches(labels) {
			return false
		}
	}
	return true
}

// byID is objs sorted by ID, as the report lists them.
func byID(objs []report.Object) []report.Object {
	out := slices.Clone(objs)
	slices.SortFunc(out, func(a, b report.Object) int { return strings.Compare(a.ID, b.ID) })
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
