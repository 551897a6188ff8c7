package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// Worlds made by the builders users run: BuildKit (the engine's own, POST /build?version=2 without
// a session, which is what `docker buildx build --builder default` drives) and the classic builder.
// Docs: docs/engine.md, "What the builders leave behind".

// buildImage builds a context of files (a Dockerfile among them) with the given builder, tagged
// tag unless tag is empty, and returns the ID the engine gives the result. Every image it leaves
// carries no fixture label unless the Dockerfile sets one, so cleanup goes by ID and by chain: the
// image and what the build left of its untagged parents are removed at the end of the test.
func buildImage(t testing.TB, builder build.BuilderVersion, files map[string][]byte, tag string) string {
	t.Helper()
	opts := build.ImageBuildOptions{Version: builder, Remove: true, ForceRemove: true}
	if tag != "" {
		opts.Tags = []string{tag}
	}
	resp, err := harness.API.ImageBuild(harness.Ctx(), bytes.NewReader(fixtures.Tar(files, 0o644)), opts)
	harness.Must(t, err)
	defer resp.Body.Close()
	var id string
	lines := bufio.NewScanner(resp.Body)
	lines.Buffer(make([]byte, 1<<20), 1<<20)
	for lines.Scan() {
		var msg struct {
			ID          string          `json:"id"`
			Aux         json.RawMessage `json:"aux"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if json.Unmarshal(lines.Bytes(), &msg) != nil {
			continue
		}
		if msg.ErrorDetail != nil {
			t.Fatalf("build failed: %s", msg.ErrorDetail.Message)
		}
		var aux struct{ ID string }
		// The classic builder's aux carries the ID plainly; BuildKit's carries it under
		// "moby.image.id" (its other aux messages are trace protobufs).
		if len(msg.Aux) > 0 && (builder == build.BuilderV1 || msg.ID == "moby.image.id") && json.Unmarshal(msg.Aux, &aux) == nil && aux.ID != "" {
			id = aux.ID
		}
	}
	harness.Must(t, lines.Err())
	if id == "" {
		t.Fatal("the build reported no image ID")
	}
	t.Cleanup(func() { removeChain(id) })
	if builder == build.BuilderBuildKit {
		waitCacheReleased(t)
	}
	return id
}

// removeChain removes an image and then each of its untagged ancestors that no longer has a child.
func removeChain(id string) {
	list, _ := harness.API.ImageList(harness.Ctx(), image.ListOptions{All: true})
	parent := map[string]string{}
	for _, im := range list {
		parent[im.ID] = im.ParentID
	}
	for id != "" {
		_, _ = harness.API.ImageRemove(harness.Ctx(), id, image.RemoveOptions{Force: true, PruneChildren: true})
		id = parent[id]
	}
}

// waitCacheReleased returns once no build-cache record is in use: Docker 29 answers a build
// while some of its records are still held for some tens of milliseconds, and a record in use is
// not prunable.
func waitCacheReleased(t testing.TB) {
	t.Helper()
	if !harness.WaitFor(t, 10*time.Second, "no build-cache record is in use after the build", func() (bool, error) {
		du, err := harness.API.DiskUsage(harness.Ctx(), types.DiskUsageOptions{Types: []types.DiskUsageObject{types.BuildCacheObject}})
		if err != nil {
			return false, err
		}
		for _, r := range du.BuildCache {
			if r.InUse {
				return false, nil
			}
		}
		return true, nil
	}) {
		t.FailNow()
	}
}

// dockerfile is a build context: the Dockerfile's lines and a file of random content for each
// other name given.
func dockerfile(lines []string, names ...string) map[string][]byte {
	files := map[string][]byte{"Dockerfile": []byte(strings.Join(lines, "\n") + "\n")}
	for _, n := range names {
		files[n] = []byte(fixtures.RandomHex(64))
	}
	return files
}

// references is every tag and digest reference the engine lists, with the image each names.
func references(t testing.TB) map[string]string {
	t.Helper()
	list, err := harness.API.ImageList(harness.Ctx(), image.ListOptions{All: true})
	harness.Must(t, err)
	refs := map[string]string{}
	for _, im := range list {
		for _, ref := range append(slices.Clone(im.RepoTags), im.RepoDigests...) {
			if ref != "<none>:<none>" && ref != "<none>@<none>" {
				refs[ref] = im.ID
			}
		}
	}
	return refs
}

// checkReferencesKept fails the test for every tag or digest reference of before that no longer
// names the same image.
func checkReferencesKept(t testing.TB, before map[string]string) {
	t.Helper()
	after := references(t)
	for _, ref := range slices.Sorted(maps.Keys(before)) {
		if after[ref] != before[ref] {
			t.Errorf("%s named %s before the run and names %q after it: the plugin removed a referenced image", ref, before[ref], after[ref])
		}
	}
}

// checkExact runs the plugin's dry run and then its real run with env (force and until set by
// the caller), and fails the test unless, for images and for build-cache records, the plan, what
// vanished from the engine and what the real run reported are the same set, by ID, and unless
// every tag and digest reference still names its image. It returns the real run and the engine's
// objects before and after it.
func checkExact(t testing.TB, env map[string]string) (real result, before, after inventory) {
	t.Helper()
	dry := maps.Clone(env)
	dry["PLUGIN_DRY_RUN"] = "true"
	plan := runPlugin(t, dry)
	if plan.code != 0 || plan.report.Decision != report.DecisionDryRun {
		t.Fatalf("dry run: exit %d decision %q", plan.code, plan.report.Decision)
	}
	refs := references(t)
	before = takeInventory(t)
	real = runPlugin(t, env)
	if real.code != 0 || real.report.Decision != report.DecisionPruned {
		t.Fatalf("run: exit %d decision %q", real.code, real.report.Decision)
	}
	after = takeInventory(t)
	for _, c := range []struct {
		phase string
		gone  map[string]bool
	}{
		{report.PhaseContainers, gone(before.containers, after.containers)},
		{report.PhaseImages, gone(before.images, after.images)},
		{report.PhaseBuildCache, gone(before.cache, after.cache)},
	} {
		planned, reported := harness.PhaseIDs(plan.report, c.phase), harness.PhaseIDs(real.report, c.phase)
		if !sameSet(planned, c.gone) || !sameSet(reported, c.gone) {
			t.Errorf("%s store, %s: planned %d %v\nremoved %d %v\nreported %d %v", harness.StoreName(), c.phase,
				len(planned), harness.FmtSet(planned), len(c.gone), harness.FmtSet(c.gone), len(reported), harness.FmtSet(reported))
		}
	}
	checkReferencesKept(t, refs)
	return real, before, after
}

// Shape 1: BuildKit builds a context untagged, then the same context under a tag. On the containerd
// store the image keeps its dangling record beside the tag, so the dangling listing shows it
// untagged; the plugin must keep the tagged image (a delete by ID would remove both records) and
// report nothing of it. On the classic store the second build gives the first build's image the tag.
func TestBuildKitRebuildUnderTagKeepsTag(t *testing.T) {
	files := dockerfile([]string{"FROM scratch", "COPY f /f", "LABEL " + fixtures.Label + "=true"}, "f")
	untagged := buildImage(t, build.BuilderBuildKit, files, "")
	tag := "dgp-app:" + fixtures.RandomHex(4)
	tagged := buildImage(t, build.BuilderBuildKit, files, tag)
	if untagged != tagged {
		t.Fatalf("the same context built twice gave %s and %s: the world is not the one under test", untagged, tagged)
	}
	dangling, err := harness.API.ImageList(harness.Ctx(), image.ListOptions{Filters: filters.NewArgs(filters.Arg("dangling", "true"))})
	harness.Must(t, err)
	listed := slices.ContainsFunc(dangling, func(im image.Summary) bool { return im.ID == tagged })
	if listed != harness.ContainerdStore {
		t.Fatalf("%s store: the dangling listing shows the tagged image: %v, want %v", harness.StoreName(), listed, harness.ContainerdStore)
	}
	cutoff := harness.WaitPastCutoff()
	real, _, _ := checkExact(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": harness.RFC3339(cutoff)})
	if !harness.Exists(t, "image", tag) {
		t.Fatalf("%s is gone", tag)
	}
	images, _ := real.report.Phase(report.PhaseImages)
	if slices.ContainsFunc(images.Objects, func(o report.Object) bool { return o.ID == tagged }) || slices.Contains(images.Untagged, tag) {
		t.Errorf("the report lists the tagged image %s under the removed images: %+v", tag, images)
	}
}

// Shape 2: with labels set, a classic-builder chain built twice under one tag leaves the first
// build dangling: its head and middle image carry the label, the parent below the LABEL step does
// not. The plugin removes the labelled images only; the engine's own prune on the classic store
// walks into the unlabelled parent as well (docs/engine.md), so the plugin does not use it here.
func TestLabelsNarrowUntaggedParents(t *testing.T) {
	tier := "dgp-tier-" + fixtures.RandomHex(3)
	lines := []string{"FROM scratch", "COPY a /a", "LABEL tier=" + tier, "COPY b /b"}
	tag := "dgp-rl:" + fixtures.RandomHex(4)
	first := buildImage(t, build.BuilderV1, dockerfile(lines, "a", "b"), tag)
	buildImage(t, build.BuilderV1, dockerfile(lines, "a", "b"), tag)
	list, err := harness.API.ImageList(harness.Ctx(), image.ListOptions{All: true})
	harness.Must(t, err)
	byID := map[string]image.Summary{}
	for _, im := range list {
		byID[im.ID] = im
	}
	var chain []image.Summary // the first build, head first
	for id := first; id != ""; id = byID[id].ParentID {
		chain = append(chain, byID[id])
	}
	if len(chain) != 3 || chain[2].Labels["tier"] != "" || chain[1].Labels["tier"] != tier || chain[0].Labels["tier"] != tier {
		t.Fatalf("the first build's chain is not head and middle labelled over an unlabelled parent: %+v", chain)
	}
	cutoff := harness.WaitPastCutoff()
	real, _, _ := checkExact(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": harness.RFC3339(cutoff), "PLUGIN_LABELS": "tier=" + tier})
	if !harness.Exists(t, "image", chain[2].ID) {
		t.Errorf("the unlabelled parent %s was removed under labels tier=%s", chain[2].ID, tier)
	}
	for _, im := range chain[:2] {
		if harness.Exists(t, "image", im.ID) {
			t.Errorf("the labelled dangling image %s was kept", im.ID)
		}
	}
	if !harness.Exists(t, "image", tag) {
		t.Errorf("%s is gone", tag)
	}
	images, _ := real.report.Phase(report.PhaseImages)
	t.Logf("%s store: removed %d images, %d layers; %s", harness.StoreName(), images.Count, images.Layers, images.Reason)
}

// Shape 3: an untagged multi-stage BuildKit build leaves a cache record shared with the dangling
// image it made. The real run's image phase deletes that image, which frees the record; the
// build-cache phase removes the records listed before the image phase, as its dry run does, so
// plan, removal and report agree, and the freed record waits for the next run.
func TestBuildCachePlanAcrossImagePhase(t *testing.T) {
	files := dockerfile([]string{"FROM scratch AS a", "COPY f /f", "FROM scratch", "COPY --from=a /f /g"}, "f")
	built := buildImage(t, build.BuilderBuildKit, files, "")
	du, err := harness.API.DiskUsage(harness.Ctx(), types.DiskUsageOptions{Types: []types.DiskUsageObject{types.BuildCacheObject}})
	harness.Must(t, err)
	shared := 0
	for _, r := range du.BuildCache {
		if r.Shared && !r.InUse {
			shared++
		}
	}
	if shared == 0 {
		t.Fatal("no build-cache record is shared with an image: the world is not the one under test")
	}
	cutoff := harness.WaitPastCutoff()
	_, _, after := checkExact(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": harness.RFC3339(cutoff)})
	if harness.Exists(t, "image", built) {
		t.Errorf("the dangling image %s the build made was kept", built)
	}
	// The next run removes what the image phase freed, and its plan says so first.
	next, _, last := checkExact(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": harness.RFC3339(cutoff)})
	removed := harness.PhaseIDs(next.report, report.PhaseBuildCache)
	if len(removed) == 0 || !sameSet(gone(after.cache, last.cache), removed) {
		t.Errorf("the next run removed %v of the records the image phase freed", harness.FmtSet(removed))
	}
}

// A dangling image whose config says it was created at the Unix epoch (a reproducible build's
// SOURCE_DATE_EPOCH=0) is old: the engine's prune removes it on both stores, and so does the plan.
func TestEpochCreatedImageIsOld(t *testing.T) {
	id := harness.DanglingImage(t, time.Unix(0, 0), nil)
	cutoff := harness.WaitPastCutoff()
	real, _, _ := checkExact(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": harness.RFC3339(cutoff)})
	if !harness.PhaseIDs(real.report, report.PhaseImages)[id] || harness.Exists(t, "image", id) {
		t.Errorf("%s store: the image created at the epoch was kept", harness.StoreName())
	}
}
