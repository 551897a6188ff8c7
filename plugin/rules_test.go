package plugin

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/volume"

	"github.com/drone-gated-prune/drone-gated-prune/internal/engine"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// The listed second settles the cutoff except in the cutoff's own second and at the epoch or
// before, where the exact time is asked for: an object gone meanwhile is dropped, one without a
// creation time is counted and left out, the epoch is old.
func TestCreatedBy(t *testing.T) {
	cutoff := time.Date(2026, 11, 1, 12, 0, 0, 500_000_000, time.UTC)
	listed := []engine.Listed{
		{Object: report.Object{ID: "before"}, Unix: cutoff.Unix() - 1},
		{Object: report.Object{ID: "after"}, Unix: cutoff.Unix() + 1},
		{Object: report.Object{ID: "same-second-earlier"}, Unix: cutoff.Unix()},
		{Object: report.Object{ID: "same-second-later"}, Unix: cutoff.Unix()},
		{Object: report.Object{ID: "epoch"}, Unix: 0},
		{Object: report.Object{ID: "no-time"}, Unix: 0},
		{Object: report.Object{ID: "gone"}, Unix: cutoff.Unix()},
	}
	exact := map[string]string{
		"same-second-earlier": cutoff.Add(-time.Millisecond).Format(time.RFC3339Nano),
		"same-second-later":   cutoff.Add(time.Millisecond).Format(time.RFC3339Nano),
		"epoch":               "1970-01-01T00:00:00Z",
		"no-time":             "0001-01-01T00:00:00Z",
	}
	var asked []string
	out, noTime, err := createdBy(context.Background(), listed, cutoff, func(_ context.Context, id string) (string, error) {
		asked = append(asked, id)
		if s, ok := exact[id]; ok {
			return s, nil
		}
		return "", engine.ErrGone
	})
	var got []string
	for _, o := range out {
		got = append(got, o.ID)
	}
	if err != nil || !slices.Equal(got, []string{"before", "same-second-earlier", "epoch"}) || noTime != 1 {
		t.Fatalf("kept %q, %d without a time, %v; want before, same-second-earlier, epoch and 1", got, noTime, err)
	}
	if want := []string{"same-second-earlier", "same-second-later", "epoch", "no-time", "gone"}; !slices.Equal(asked, want) {
		t.Errorf("asked for %q, want %q", asked, want)
	}
}

func TestWithoutKeepLabel(t *testing.T) {
	in := []engine.Listed{{Object: report.Object{ID: "a"}}, {Object: report.Object{ID: "k"}, Labels: map[string]string{KeepLabel: ""}}, {Object: report.Object{ID: "b"}, Labels: map[string]string{"x": "y"}}}
	var got []string
	for _, l := range withoutKeepLabel(in) {
		got = append(got, l.ID)
	}
	if !slices.Equal(got, []string{"a", "b"}) || len(in) != 3 {
		t.Errorf("kept %q (input now %d long); want a, b and the input untouched", got, len(in))
	}
}

func TestImagesInUse(t *testing.T) {
	used := imagesInUse(map[string]string{"c1": "i1", "c2": "i2", "c3": "i2"}, map[string]bool{"c1": true, "c2": true})
	if !used["i2"] || used["i1"] || len(used) != 1 {
		t.Errorf("in use %v; want only i2 (c1's image is free once c1 is gone)", used)
	}
}

// The build-cache prune without --all removes unused, unshared, non-internal records last used
// before the cutoff; the budget counts the cache less shared records.
func TestBuildCacheRules(t *testing.T) {
	cutoff := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	old, young := cutoff.Add(-time.Hour), cutoff.Add(time.Hour)
	records := []*build.CacheRecord{
		{ID: "old", Size: 1, LastUsedAt: &old},
		{ID: "never", Size: 2},
		{ID: "young", Size: 4, LastUsedAt: &young},
		{ID: "inuse", Size: 8, InUse: true, LastUsedAt: &old},
		{ID: "shared", Size: 16, Shared: true, LastUsedAt: &old},
		{ID: "internal", Size: 32, Type: "internal", LastUsedAt: &old},
		{ID: `bad"id`, Size: 64, LastUsedAt: &old},
	}
	var got []string
	for _, o := range unusedCache(records, cutoff) {
		got = append(got, o.ID)
	}
	if !slices.Equal(got, []string{"old", "never"}) {
		t.Errorf("unused %q, want old and never (an ID that would break the id filter is not sent)", got)
	}
	if total, prunable := cacheUsage(records); total != 1+2+4+8+32+64 || prunable != 1+2+4+64 {
		t.Errorf("total %d prunable %d; want %d and %d", total, prunable, 1+2+4+8+32+64, 1+2+4+64)
	}
}

// The age sent is the cutoff's age less the margin, never below 1 ms.
func TestBuildCacheAge(t *testing.T) {
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	if got := buildCacheAge(now.Add(-24*time.Hour), now); got != 24*time.Hour-buildCacheMargin {
		t.Errorf("age %s", got)
	}
	if got := buildCacheAge(now.Add(-50*time.Millisecond), now); got != time.Millisecond {
		t.Errorf("age %s, want 1ms", got)
	}
}

// The advice names the largest unused tagged images, adds up all of them, the volumes and the
// build cache in use.
func TestSpaceAdvice(t *testing.T) {
	var images []*image.Summary
	for i, size := range []int64{10, 70, 30, 60, 50, 40} {
		images = append(images, &image.Summary{ID: string(rune('a' + i)), RepoTags: []string{"t:" + string(rune('a'+i))}, Size: size})
	}
	images = append(images, &image.Summary{ID: "used", RepoTags: []string{"u:1"}, Size: 1000, Containers: 1},
		&image.Summary{ID: "dangling", RepoTags: []string{"<none>:<none>"}, Size: 1000},
		&image.Summary{ID: "digest", RepoDigests: []string{"r/x@sha256:0"}, Size: 5})
	a := spaceAdvice(types.DiskUsage{Images: images,
		Volumes:    []*volume.Volume{{UsageData: &volume.UsageData{Size: 7}}, {}},
		BuildCache: []*build.CacheRecord{{Size: 3, InUse: true}, {Size: 4, Shared: true}, {Size: 100}}})
	var names []string
	for _, im := range a.UnusedTagged {
		names = append(names, im.Name)
	}
	if !slices.Equal(names, []string{"t:b", "t:d", "t:e", "t:f", "t:c"}) || a.UnusedTaggedBytes != 265 || a.Volumes != 2 || a.VolumesBytes != 7 || a.BuildCacheInUseBytes != 7 {
		t.Errorf("advice %+v (names %q)", a, names)
	}
}
