package plugin

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path"
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
	parent := map[string]string{}
	for _, im := range all {
		parent[im.ID] = im.ParentID
	}
	check := func(name string) {
		plan := imagePrunePlan(heads, all, inUse)
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

// On the containerd image store the plan is deleted one image at a time, never pruning parents
// (noprune=1), each image after its children; a parent whose child the engine refused to delete
// (it became used meanwhile: 409) stays, and so does that parent's parent.
func TestDeleteImagesInPlanOrder(t *testing.T) {
	var deletes []string
	refuse := map[string]bool{"a3": true}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := path.Base(r.URL.Path)
		switch {
		case r.Method != http.MethodDelete:
			w.WriteHeader(http.StatusNotImplemented)
		case r.URL.Query().Get("noprune") != "1":
			t.Errorf("DELETE %s without noprune=1: the engine would also take the image's untagged parents", r.URL)
			w.WriteHeader(http.StatusBadRequest)
		case refuse[id]:
			deletes = append(deletes, id+" refused")
			w.WriteHeader(http.StatusConflict)
			_, _ = io.WriteString(w, `{"message":"image is being used by a stopped container"}`)
		default:
			deletes = append(deletes, id)
			_ = json.NewEncoder(w).Encode([]image.DeleteResponse{{Deleted: id}, {Deleted: "layer-of-" + id}})
		}
	}))
	defer srv.Close()
	t.Setenv("DOCKER_HOST", "tcp://"+srv.Listener.Addr().String())
	t.Setenv("DOCKER_API_VERSION", "1.52")
	e, err := NewEngine(nil)
	if err != nil {
		t.Fatal(err)
	}
	all := []image.Summary{
		{ID: "a1", Size: 1}, {ID: "a2", ParentID: "a1", Size: 2}, {ID: "a3", ParentID: "a2", Size: 4},
		{ID: "b1", Size: 8}, {ID: "b2", ParentID: "b1", Size: 16}, {ID: "b3", ParentID: "b1", Size: 32},
	}
	heads := []Object{{ID: "a3"}, {ID: "b2"}, {ID: "b3"}}
	plan := imagePrunePlan(heads, all, nil)
	ph := &PhaseReport{}
	r := &Run{Engine: e}
	if err := r.deleteImages(context.Background(), plan, all, ph); err != nil {
		t.Fatal(err)
	}
	if want := []string{"a3 refused", "b2", "b3", "b1"}; !slices.Equal(deletes, want) {
		t.Errorf("deletes %q, want %q", deletes, want)
	}
	if got, want := ids(ph.Objects), []string{"b1", "b2", "b3"}; !slices.Equal(got, want) {
		t.Errorf("reported images %q, want %q", got, want)
	}
	if ph.Count != 3 || ph.Layers != 3 || ph.Bytes != 8+16+32 || ph.Status != StatusRemoved {
		t.Errorf("count %d, layers %d, bytes %d, status %q; want 3, 3, 56, %q", ph.Count, ph.Layers, ph.Bytes, ph.Status, StatusRemoved)
	}
}
