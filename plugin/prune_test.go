package plugin

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/docker/docker/api/types/image"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/engine"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

func ids(objs []report.Object) []string {
	var out []string
	for _, o := range objs {
		out = append(out, o.ID)
	}
	return out
}

// The plan follows the engine's PruneChildren walk: a parent goes once all its children go and it
// has no reference and no container; a shared, tagged or used parent stops the walk.
func TestImagePrunePlan(t *testing.T) {
	all := []image.Summary{
		// chain a1 <- a2 <- a3 (head, dangling)
		{ID: "a1", RepoTags: []string{"<none>:<none>"}, RepoDigests: []string{"<none>@<none>"}},
		{ID: "a2", ParentID: "a1", RepoTags: []string{"<none>:<none>"}},
		{ID: "a3", ParentID: "a2"},
		// b1 is shared by two dangling heads: it goes only because both go
		{ID: "b1"}, {ID: "b2", ParentID: "b1"}, {ID: "b3", ParentID: "b1"},
		// c1 is tagged: the walk stops under it
		{ID: "c1", RepoTags: []string{"base:1"}}, {ID: "c2", ParentID: "c1"}, {ID: "c3", ParentID: "c2"},
		// d1 has a digest reference only: it stays
		{ID: "d1", RepoDigests: []string{"reg/x@sha256:0"}}, {ID: "d2", ParentID: "d1"},
		// e1 is used by a container: it stays
		{ID: "e1"}, {ID: "e2", ParentID: "e1"},
		// f1 has another child that is not pruned (too young, not a head candidate)
		{ID: "f1"}, {ID: "f2", ParentID: "f1"}, {ID: "f3", ParentID: "f1"},
		// g2 is a head used by a container: neither it nor its parent goes
		{ID: "g1"}, {ID: "g2", ParentID: "g1"},
	}
	heads := []report.Object{{ID: "a3"}, {ID: "b3"}, {ID: "b2"}, {ID: "c3"}, {ID: "d2"}, {ID: "e2"}, {ID: "f2"}, {ID: "g2"}}
	inUse := map[string]bool{"e1": true, "g2": true}
	want := []string{"a1", "a2", "a3", "b1", "b2", "b3", "c2", "c3", "d2", "e2", "f2"}
	parent := map[string]string{}
	for _, im := range all {
		parent[im.ID] = im.ParentID
	}
	check := func(name string) {
		plan := planImagePrune(heads, all, inUse, nil).Images
		if got := ids(byID(plan)); !slices.Equal(got, want) {
			t.Fatalf("%s: plan %q, want %q", name, got, want)
		}
		// Deletion order: an image comes after every planned image whose parent it is (deleted
		// one by one without pruning parents, a parent still has its child otherwise).
		at := map[string]int{}
		for i, o := range plan {
			at[o.ID] = i
		}
		for _, o := range plan {
			if p, ok := at[parent[o.ID]]; ok && p < at[o.ID] {
				t.Errorf("%s: plan %q deletes %s before its child %s", name, ids(plan), parent[o.ID], o.ID)
			}
		}
	}
	check("heads as listed")
	// The order the heads come in does not change the plan's set.
	slices.Reverse(heads)
	check("reversed heads")
}

// The plan keeps what a tag or digest reference names and what lacks a labels label: a head the
// full listing shows tagged (a containerd store's dangling record beside a tag of the same image)
// is left out, and the walk up a chain stops at an untagged parent without every label or with
// the keep label. Each makes the plan narrower than the classic store's prune endpoint.
func TestImagePrunePlanNarrows(t *testing.T) {
	tier := []gates.LabelSelector{{Key: "tier", Value: "scratch", HasValue: true}}
	labelled := map[string]string{"tier": "scratch"}
	for _, c := range []struct {
		name     string
		all      []image.Summary
		heads    []report.Object
		labels   []gates.LabelSelector
		want     []string
		narrower bool
	}{
		{"dangling record beside a tag", []image.Summary{{ID: "x", RepoTags: []string{"app:1"}}}, []report.Object{{ID: "x"}}, nil, nil, true},
		{"dangling record beside a digest", []image.Summary{{ID: "x", RepoDigests: []string{"app@sha256:0"}}}, []report.Object{{ID: "x"}}, nil, nil, true},
		{"parent without the label", []image.Summary{{ID: "p1"}, {ID: "p2", ParentID: "p1", Labels: labelled}, {ID: "p3", ParentID: "p2", Labels: labelled}},
			[]report.Object{{ID: "p3"}}, tier, []string{"p2", "p3"}, true},
		{"parent with another value", []image.Summary{{ID: "p1", Labels: map[string]string{"tier": "base"}}, {ID: "p2", ParentID: "p1", Labels: labelled}},
			[]report.Object{{ID: "p2"}}, tier, []string{"p2"}, true},
		{"every parent labelled", []image.Summary{{ID: "p1", Labels: labelled}, {ID: "p2", ParentID: "p1", Labels: labelled}},
			[]report.Object{{ID: "p2"}}, tier, []string{"p1", "p2"}, false},
		{"label value holding =", []image.Summary{{ID: "p1", Labels: map[string]string{"k": "a=b"}}, {ID: "p2", ParentID: "p1", Labels: map[string]string{"k": "a=b"}}},
			[]report.Object{{ID: "p2"}}, []gates.LabelSelector{{Key: "k", Value: "a=b", HasValue: true}}, []string{"p1", "p2"}, false},
		{"parent with the keep label", []image.Summary{{ID: "k1", Labels: map[string]string{KeepLabel: ""}}, {ID: "k2", ParentID: "k1"}},
			[]report.Object{{ID: "k2"}}, nil, []string{"k2"}, true},
		{"no labels, plain chain", []image.Summary{{ID: "q1"}, {ID: "q2", ParentID: "q1"}}, []report.Object{{ID: "q2"}}, nil, []string{"q1", "q2"}, false},
	} {
		plan := planImagePrune(c.heads, c.all, nil, c.labels)
		if got := ids(byID(plan.Images)); !slices.Equal(got, c.want) || plan.Narrower != c.narrower {
			t.Errorf("%s: plan %q narrower %v, want %q narrower %v", c.name, got, plan.Narrower, c.want, c.narrower)
		}
	}
}

// The plan is deleted one image at a time, never pruning parents (noprune=1), each image once its
// planned children are gone, several at a time; on the containerd image store by each image's
// dangling record, so that a tag made since the listing keeps the image (only the record goes). A
// parent whose child the engine refused to delete (it became used meanwhile: 409) or kept under a
// new tag stays, and so does that parent's parent.
func TestDeleteImagesInPlanOrder(t *testing.T) {
	all := []image.Summary{
		{ID: "a1", Size: 1}, {ID: "a2", ParentID: "a1", Size: 2}, {ID: "a3", ParentID: "a2", Size: 4},
		{ID: "b1", Size: 8}, {ID: "b2", ParentID: "b1", Size: 16}, {ID: "b3", ParentID: "b1", Size: 32},
		{ID: "c1", Size: 64}, {ID: "c2", ParentID: "c1", Size: 128},
	}
	for _, store := range []engine.Store{{Containerd: true}, {}} {
		var mu sync.Mutex
		var got []string
		e := &fakeEngine{deleteImage: func(_ context.Context, ref string) ([]string, []string, bool, error) {
			mu.Lock()
			defer mu.Unlock()
			id := strings.TrimPrefix(ref, "moby-dangling@")
			switch id {
			case "a3": // became used meanwhile (409)
				got = append(got, ref+" refused")
				return nil, nil, true, nil
			case "c2": // tagged since the listing: only the dangling record went
				got = append(got, ref+" untagged")
				return nil, nil, true, nil
			}
			got = append(got, ref)
			return []string{id, "layer-of-" + id}, nil, false, nil
		}}
		plan := planImagePrune([]report.Object{{ID: "a3"}, {ID: "b2"}, {ID: "b3"}, {ID: "c2"}}, all, nil, nil).Images
		ph := &report.PhaseReport{}
		r := &Run{Engine: e}
		if err := r.deleteImages(context.Background(), plan, all, store, ph); err != nil {
			t.Fatal(err)
		}
		ref := func(id string) string {
			if store.Containerd {
				return "moby-dangling@" + id
			}
			return id
		}
		want := []string{ref("a3") + " refused", ref("b1"), ref("b2"), ref("b3"), ref("c2") + " untagged"}
		if sorted := slices.Sorted(slices.Values(got)); !slices.Equal(sorted, want) {
			t.Errorf("%s: deletes %q, want %q in any order but b1 last of the b chain", store, got, want)
		}
		if at := slices.Index(got, ref("b1")); at < slices.Index(got, ref("b2")) || at < slices.Index(got, ref("b3")) {
			t.Errorf("%s: deletes %q: b1 before one of its children", store, got)
		}
		if got, want := ids(ph.Objects), []string{"b1", "b2", "b3"}; !slices.Equal(got, want) {
			t.Errorf("%s: reported images %q, want %q", store, got, want)
		}
		if ph.Count != 3 || ph.Layers != 3 || ph.Bytes != 8+16+32 || ph.Status != report.StatusRemoved || len(ph.Untagged) != 0 {
			t.Errorf("%s: count %d, layers %d, bytes %d, status %q, untagged %q; want 3, 3, 56, %q, none", store, ph.Count, ph.Layers, ph.Bytes, ph.Status, ph.Untagged, report.StatusRemoved)
		}
	}
}
