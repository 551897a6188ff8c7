package plugin

import (
	"slices"
	"testing"

	"github.com/docker/docker/api/types/image"
)

func ids(objs []Object) []string {
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
	heads := []Object{{ID: "a3"}, {ID: "b3"}, {ID: "b2"}, {ID: "c3"}, {ID: "d2"}, {ID: "e2"}, {ID: "f2"}, {ID: "g2"}}
	inUse := map[string]bool{"e1": true, "g2": true}
	want := []string{"a1", "a2", "a3", "b1", "b2", "b3", "c2", "c3", "d2", "e2", "f2"}
	got := ids(imagePrunePlan(heads, all, inUse))
	if !slices.Equal(got, want) {
		t.Fatalf("plan %q, want %q", got, want)
	}
	// The order the heads come in does not change the plan.
	slices.Reverse(heads)
	if got := ids(imagePrunePlan(heads, all, inUse)); !slices.Equal(got, want) {
		t.Fatalf("reversed heads: plan %q, want %q", got, want)
	}
}
