package e2e

import (
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// The reason the plugin exists: after a forced prune the base images are still cached, so pulling
// them again downloads no layer. A registry on 127.0.0.1 serves them and counts the layer blobs it
// serves. Proves SPEC's opening (the local image store is the cache; tagged images are never
// pruned) and "The run" 6; README.md.
func TestPruneKeepsCacheWarm(t *testing.T) {
	reg, err := fixtures.StartRegistry()
	harness.Must(t, err)
	defer reg.Close()
	var bases []string
	for _, repo := range []string{"base/alpine-ish", "base/builder", "base/runtime"} {
		ref, err := reg.PushBase(repo, "1", 3, 256<<10)
		harness.Must(t, err)
		bases = append(bases, ref)
		t.Cleanup(func() {
			_, _ = harness.API.ImageRemove(harness.Ctx(), ref, image.RemoveOptions{Force: true, PruneChildren: true})
		})
	}
	for _, ref := range bases {
		harness.Must(t, fixtures.Pull(harness.Ctx(), harness.API, ref))
	}
	cold := reg.LayersServed()
	if cold != 9 {
		t.Fatalf("cold pull downloaded %d layers, want all 9", cold)
	}
	// Old by every clock a store compares: made, then a cutoff passed (the containerd store compares
	// the time the image was loaded, not its config's).
	old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	cutoff := harness.WaitPastCutoff()
	r := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": cutoff.UTC().Format(time.RFC3339)})
	if r.code != 0 || r.report.Decision != report.DecisionPruned || harness.Exists(t, "image", old) {
		t.Fatalf("exit %d decision %q; the prune did not run (old dangling image kept: %v)", r.code, r.report.Decision, harness.Exists(t, "image", old))
	}
	for _, ref := range bases {
		if !harness.Exists(t, "image", ref) {
			t.Errorf("base image %s was removed", ref)
		}
		harness.Must(t, fixtures.Pull(harness.Ctx(), harness.API, ref))
	}
	if warm := reg.LayersServed() - cold; warm != 0 {
		t.Errorf("pulling again after the prune downloaded %d layers, want 0", warm)
	}
}
