package e2e

import (
	"crypto/rand"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types"

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
	"github.com/drone-gated-prune/drone-gated-prune/plugin"
)

// The operator's levers on space (docs/usage.md "Keeping specific objects", "When the tier is not
// enough", setting build_cache_budget): the keep label, the build-cache budget and the advice.

// Containers and images carrying the keep label are never pruned: left out of the plan, sent as
// label!= to the engine, and still there after a real run; their unlabelled twins go.
func TestKeepLabel(t *testing.T) {
	keep := map[string]string{plugin.KeepLabel: "true"}
	keptImage := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), keep)
	goneImage := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	keptContainer := harness.MakeContainer(t, harness.Container{Labels: keep})
	goneContainer := harness.MakeContainer(t, harness.Container{})
	time.Sleep(1100 * time.Millisecond)
	env := map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": time.Now().Add(-100 * time.Millisecond).UTC().Format(time.RFC3339Nano)}

	env["PLUGIN_DRY_RUN"] = "true"
	plan := runPlugin(t, env)
	images, containers := harness.PhaseIDs(plan.report, report.PhaseImages), harness.PhaseIDs(plan.report, report.PhaseContainers)
	if images[keptImage] || containers[keptContainer] || !images[goneImage] || !containers[goneContainer] {
		t.Fatalf("plan: images %v containers %v; want the unlabelled image and container only", harness.FmtSet(images), harness.FmtSet(containers))
	}
	for _, phase := range []string{report.PhaseContainers, report.PhaseImages} {
		p, _ := plan.report.Phase(phase)
		if !slices.Contains(p.Filters, "label!="+plugin.KeepLabel) || !strings.Contains(plan.stdout, "label!="+plugin.KeepLabel) {
			t.Errorf("%s phase does not show the keep filter: %v", phase, p.Filters)
		}
	}

	delete(env, "PLUGIN_DRY_RUN")
	r := runPlugin(t, env)
	if r.code != 0 || !harness.Exists(t, "image", keptImage) || !harness.Exists(t, "container", keptContainer) || harness.Exists(t, "image", goneImage) || harness.Exists(t, "container", goneContainer) {
		t.Fatalf("exit %d; kept image %v, kept container %v, unlabelled image gone %v, unlabelled container gone %v",
			r.code, harness.Exists(t, "image", keptImage), harness.Exists(t, "container", keptContainer), !harness.Exists(t, "image", goneImage), !harness.Exists(t, "container", goneContainer))
	}
}

// prunableCacheBytes adds up the build cache a prune without --all may remove.
func prunableCacheBytes(t *testing.T) (int64, int) {
	du, err := harness.API.DiskUsage(harness.Ctx(), types.DiskUsageOptions{Types: []types.DiskUsageObject{types.BuildCacheObject}})
	harness.Must(t, err)
	var bytes int64
	n := 0
	for _, r := range du.BuildCache {
		if !r.InUse && !r.Shared && r.Type != "internal" && r.Type != "frontend" {
			bytes += r.Size
			n++
		}
	}
	return bytes, n
}

// With build_cache_budget, young unused build cache that until keeps is removed by BuildKit down to
// the budget, reported as its own phase; within the budget the phase is skipped.
func TestBuildCacheBudget(t *testing.T) {
	for range 3 {
		buildCache(t)
	}
	before, records := prunableCacheBytes(t)
	if records == 0 {
		t.Fatal("the builds left no unused build cache to budget")
	}
	env := map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": "1000h"}

	env["PLUGIN_BUILD_CACHE_BUDGET"] = "1000GB"
	r := runPlugin(t, env)
	if p, _ := r.report.Phase(report.PhaseBuildCacheBudget); p.Status != report.StatusSkipped || !strings.Contains(p.Reason, "within build_cache_budget") {
		t.Fatalf("a budget larger than the cache: phase %+v", p)
	}

	env["PLUGIN_BUILD_CACHE_BUDGET"] = "1"
	env["PLUGIN_DRY_RUN"] = "true"
	r = runPlugin(t, env)
	if p, _ := r.report.Phase(report.PhaseBuildCacheBudget); p.Status != report.StatusWouldRemove || p.Bytes == 0 {
		t.Fatalf("dry run over budget: phase %+v", p)
	}
	if after, _ := prunableCacheBytes(t); after != before {
		t.Fatalf("the dry run changed the build cache: %d bytes before, %d after", before, after)
	}

	delete(env, "PLUGIN_DRY_RUN")
	r = runPlugin(t, env)
	cache, _ := r.report.Phase(report.PhaseBuildCache)
	budget, _ := r.report.Phase(report.PhaseBuildCacheBudget)
	after, left := prunableCacheBytes(t)
	if r.code != 0 || cache.Count != 0 || budget.Status != report.StatusRemoved || budget.Count == 0 || after > 1 {
		t.Fatalf("exit %d; build_cache phase removed %d (want 0: all younger than until); budget phase %s %d objects %d bytes; %d prunable bytes in %d records left (want at most 1 byte)",
			r.code, cache.Count, budget.Status, budget.Count, budget.Bytes, after, left)
	}
	t.Logf("budget phase removed %d records, %d bytes reported; %d prunable bytes before", budget.Count, budget.Bytes, before)
}

// Still under pressure after a prune, the summary says what holds the space (a large tagged image
// no container uses among the largest); below the threshold the run does not look.
func TestAdviceWhenStillUnderPressure(t *testing.T) {
	payload := make([]byte, 24<<20)
	_, _ = rand.Read(payload)
	tag := "dgp-big:" + fixtures.RandomHex(4)
	big := harness.LoadImage(t, fixtures.Image{Tag: tag, Created: time.Now().Add(-72 * time.Hour), Files: map[string][]byte{"payload": payload}})

	r := runPlugin(t, map[string]string{"PLUGIN_THRESHOLD": "1", "PLUGIN_FAIL_ABOVE": "100"})
	if r.code != 0 || r.report.Advice == nil {
		t.Fatalf("exit %d; no advice while still above threshold 1%%", r.code)
	}
	names := map[string]bool{}
	for _, im := range r.report.Advice.UnusedTagged {
		names[im.ID] = true
	}
	if !names[big] || !strings.Contains(r.stdout, tag) || !strings.Contains(r.stdout, "nothing here is removed") || !harness.Exists(t, "image", big) {
		t.Fatalf("advice %+v does not name %s, or the text lacks it, or it was removed", r.report.Advice, tag)
	}

	r = runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_THRESHOLD": "100", "PLUGIN_FAIL_ABOVE": "100"})
	if r.report.Advice != nil || strings.Contains(r.stdout, "still under disk pressure") {
		t.Fatalf("forced below the threshold, the run must not give advice: %+v", r.report.Advice)
	}
	r = runPlugin(t, map[string]string{"PLUGIN_THRESHOLD": "100", "PLUGIN_FAIL_ABOVE": "100"})
	if r.report.Decision != report.DecisionKeptCache || r.report.Advice != nil {
		t.Fatalf("the daily no-op must not look for advice: decision %q advice %+v", r.report.Decision, r.report.Advice)
	}
}
