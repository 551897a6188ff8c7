package e2e

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// Exact plan and exact report (docs/usage.md, "Dry run and report"): on a random world with
// classic-builder chains, re-tags, created, exited and paused containers and images created (in
// their config, or on the containerd store loaded) in the cutoff's own second, the dry run's plan,
// the set that disappears from the engine's listings and the set the real run reports are the
// same, by ID.

// legacyChain builds FROM the sleeper image with the classic builder, which keeps one untagged
// intermediate image per step as the parent of the next; it returns the built image's ID.
func legacyChain(t *testing.T, tag, chain string, f1, f2 []byte) string {
	t.Helper()
	tar := fixtures.Tar(map[string][]byte{
		"Dockerfile": []byte("FROM " + harness.SleeperImage + "\nLABEL dgp.chain=" + chain + "\nCOPY f1 /f1\nCOPY f2 /f2\n"),
		"f1":         f1, "f2": f2,
	}, 0o644)
	resp, err := harness.API.ImageBuild(harness.Ctx(), bytes.NewReader(tar), build.ImageBuildOptions{Version: build.BuilderV1, Tags: []string{tag}, Remove: true})
	harness.Must(t, err)
	out, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	harness.Must(t, err)
	if strings.Contains(string(out), "errorDetail") {
		t.Fatalf("legacy build: %s", out)
	}
	inspect, err := harness.API.ImageInspect(harness.Ctx(), tag)
	harness.Must(t, err)
	return inspect.ID
}

func gone(before, after map[string]bool) map[string]bool {
	out := map[string]bool{}
	for id := range before {
		if !after[id] {
			out[id] = true
		}
	}
	return out
}

func sameSet(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for id := range a {
		if !b[id] {
			return false
		}
	}
	return true
}

func exactSeeds(t *testing.T) []uint64 {
	if s := os.Getenv("DGP_SEEDS"); s != "" {
		return seeds(t)
	}
	return []uint64{7, uint64(time.Now().UnixNano() % 100000)}
}

// Each seed's world is also built by the real builders (BuildKit builds untagged then under a tag,
// multi-stage BuildKit builds whose cache records an image shares, classic-builder chains with a
// LABEL step) and run once as it is and once under `labels`, which narrows every removal to the
// objects carrying the label. Build-cache records are compared as images and containers are, and
// every tag and digest reference that named an image before the run names it after.
func TestPlanEqualsRemovalEqualsReport(t *testing.T) {
	for _, seed := range exactSeeds(t) {
		for _, labelled := range []bool{false, true} {
			t.Run(fmt.Sprintf("seed-%d/labels-%v", seed, labelled), func(t *testing.T) { exactWorld(t, seed, labelled) })
		}
	}
}

// builtWorld adds what the real builders leave behind: a context BuildKit builds untagged and then
// under a tag, a multi-stage BuildKit build left untagged, and a classic-builder chain built twice
// under one tag whose LABEL step sets tier, which the first build's unlabelled bottom image lacks.
func builtWorld(t *testing.T, rng *rand.Rand, tier string) {
	if rng.IntN(3) > 0 {
		files := dockerfile([]string{"FROM scratch", "COPY f /f", "LABEL tier=" + tier}, "f")
		buildImage(t, build.BuilderBuildKit, files, "")
		buildImage(t, build.BuilderBuildKit, files, "dgp-app:"+fixtures.RandomHex(4))
	}
	if rng.IntN(3) > 0 {
		buildImage(t, build.BuilderBuildKit, dockerfile([]string{"FROM scratch AS a", "COPY f /f", "FROM scratch", "COPY --from=a /f /g", "LABEL tier=" + tier}, "f"), "")
	}
	for range 1 + rng.IntN(2) {
		lines := []string{"FROM scratch", "COPY a /a", "LABEL tier=" + tier, "COPY b /b"}
		tag := "dgp-rl:" + fixtures.RandomHex(4)
		buildImage(t, build.BuilderV1, dockerfile(lines, "a", "b"), tag)
		buildImage(t, build.BuilderV1, dockerfile(lines, "a", "b"), tag)
	}
}

func exactWorld(t *testing.T, seed uint64, labelled bool) {
	rng := rand.New(rand.NewPCG(seed, seed^0xe4ac7))
	harness.EnsureSleeperImage(t)
	tier := "dgp-tier-" + fixtures.RandomHex(3)
	builtWorld(t, rng, tier)
	// Classic-builder chains, each re-built under its tag so the first build is left dangling with
	// its untagged parents; the second build differs from the first at f1 (its parents go too) or
	// only at f2 (the shared parent stays).
	chains := 1 + rng.IntN(3)
	for i := range chains {
		tag := "dgp-chain:" + fixtures.RandomHex(4)
		chain := fixtures.RandomHex(4)
		f1 := []byte(fixtures.RandomHex(64))
		first := legacyChain(t, tag, chain, f1, []byte(fixtures.RandomHex(64)))
		if rng.IntN(2) == 0 {
			f1 = []byte(fixtures.RandomHex(64))
		}
		second := legacyChain(t, tag, chain, f1, []byte(fixtures.RandomHex(64)))
		t.Cleanup(func() {
			for _, id := range []string{second, first} {
				_, _ = harness.API.ImageRemove(harness.Ctx(), id, image.RemoveOptions{Force: true, PruneChildren: true})
			}
			// The containerd store deletes an image's untagged parents only while every one of them is
			// still there: remove what is left of the chain by its label.
			left, _ := harness.API.ImageList(harness.Ctx(), image.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "dgp.chain="+chain))})
			for _, im := range left {
				_, _ = harness.API.ImageRemove(harness.Ctx(), im.ID, image.RemoveOptions{Force: true, PruneChildren: true})
			}
		})
		if i == 0 && rng.IntN(2) == 0 {
			// A stopped container of the dangling build keeps it and its parents.
			harness.MakeContainer(t, harness.Container{Image: first})
		}
	}
	for range rng.IntN(3) {
		retagToDangling(t, time.Now().Add(-time.Hour))
	}
	// Containers before the cutoff: one created, so that every world has a container to remove (a
	// world without chains may draw only running and paused ones), then created, exited, paused and
	// running ones at random.
	harness.MakeContainer(t, harness.Container{Labels: map[string]string{"tier": tier}})
	for range 2 + rng.IntN(4) {
		switch rng.IntN(4) {
		case 0:
			harness.MakeContainer(t, harness.Container{})
		case 1:
			harness.MakeContainer(t, harness.Container{Start: true, Cmd: []string{"/sleeper", "exit"}})
		case 2:
			id := harness.MakeContainer(t, harness.Container{Start: true})
			harness.Must(t, harness.API.ContainerPause(harness.Ctx(), id))
			t.Cleanup(func() { _ = harness.API.ContainerUnpause(harness.Ctx(), id) })
		default:
			harness.MakeContainer(t, harness.Container{Start: true})
		}
	}
	// At least a second ahead, so that the images below are loaded before it: the containerd store
	// compares when they were loaded too.
	cutoff := time.Now().Truncate(time.Second).Add(2 * time.Second)
	// Images in the cutoff's own second: at the cutoff exactly (the engine removes it), half a
	// second after (it stays); and one well before, one well after.
	harness.DanglingImage(t, cutoff, nil)
	harness.DanglingImage(t, cutoff.Add(500*time.Millisecond), nil)
	harness.DanglingImage(t, cutoff.Add(-time.Hour), nil)
	harness.DanglingImage(t, cutoff.Add(time.Hour), nil)
	// In the cutoff's own second, after it: an image whose config is an hour older. The classic store
	// compares the config (old: it goes), the containerd store also its record, made now (young: it
	// stays).
	time.Sleep(time.Until(cutoff) + 100*time.Millisecond)
	late := harness.DanglingImage(t, cutoff.Add(-time.Hour), nil)
	time.Sleep(time.Until(cutoff) + 1100*time.Millisecond)
	// After the cutoff: a young created container and a young exited one stay.
	harness.MakeContainer(t, harness.Container{})
	harness.MakeContainer(t, harness.Container{Start: true, Cmd: []string{"/sleeper", "exit"}})
	time.Sleep(500 * time.Millisecond) // let the exiting containers exit

	env := map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": cutoff.UTC().Format(time.RFC3339)}
	if labelled {
		env["PLUGIN_LABELS"] = "tier=" + tier
	}
	real, before, after := checkExact(t, env)
	imagesGone, containersGone := gone(before.images, after.images), gone(before.containers, after.containers)
	if imagesGone[late] && (harness.ContainerdStore || labelled) || !imagesGone[late] && !harness.ContainerdStore && !labelled {
		t.Errorf("seed %d: the image loaded after the cutoff with a config an hour before it was removed=%v; on the %s store want %v",
			seed, imagesGone[late], harness.StoreName(), !harness.ContainerdStore && !labelled)
	}
	if len(imagesGone) == 0 || len(containersGone) == 0 {
		t.Errorf("seed %d: the world left nothing to prune (%d images, %d containers): the comparison proves nothing", seed, len(imagesGone), len(containersGone))
	}
	if labelled {
		for id := range imagesGone {
			if im, ok := before.labels[id]; !ok || im["tier"] != tier {
				t.Errorf("seed %d: image %s without tier=%s was removed under labels (its labels %v)", seed, id, tier, im)
			}
		}
	}
	images, _ := real.report.Phase(report.PhaseImages)
	cache, _ := real.report.Phase(report.PhaseBuildCache)
	t.Logf("seed %d, labels %v: %d chains; removed %d containers, %d images (%d layers besides), %d build-cache records", seed, labelled, chains, len(containersGone), len(imagesGone), images.Layers, cache.Count)
}
