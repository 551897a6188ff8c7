package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// Image pruning versus a pull in flight (SPEC "The run" 6; docs/engine.md "Pulls in flight"): on
// the containerd image store the engine's image prune drops the leases of pulls in flight and
// makes them fail (moby/moby#53321), so the plugin deletes dangling images one by one there. A
// registry on the test's 127.0.0.1 serves a large image; the engine must reach it (on an engine
// in its own network namespace, run the tests inside it: scripts/test-engine.sh exec).

// pullDuring starts pulling ref, runs during (after a moment, so that layers are in flight) and
// returns the pull's outcome and whether the pull was still running when during returned.
func pullDuring(t *testing.T, ref string, during func()) (pullErr error, overlapped bool) {
	t.Helper()
	t.Cleanup(func() {
		_, _ = harness.API.ImageRemove(harness.Ctx(), ref, image.RemoveOptions{Force: true, PruneChildren: true})
	})
	done := make(chan error, 1)
	go func() { done <- fixtures.Pull(harness.Ctx(), harness.API, ref) }()
	time.Sleep(300 * time.Millisecond)
	during()
	select {
	case err := <-done:
		return err, false
	default:
	}
	return <-done, true
}

// bigImage serves a 3-layer image of 120 MB, slow enough to pull that a prune lands in the middle.
func bigImage(t *testing.T) (*fixtures.Registry, func(tag string) string) {
	reg, err := fixtures.StartRegistry()
	harness.Must(t, err)
	t.Cleanup(func() { _ = reg.Close() })
	return reg, func(tag string) string {
		ref, err := reg.PushBase("big/pull", tag, 3, 40<<20)
		harness.Must(t, err)
		return ref
	}
}

// The plugin's image phase, run while a pull is in flight, removes its dangling image and the pull
// succeeds, on either store. The registry holds the pull's layers part downloaded until the plugin
// has finished, so the pull is in flight for the whole run however long the run takes.
func TestPullDuringImagePhase(t *testing.T) {
	reg, push := bigImage(t)
	ref := push("plugin")
	release := reg.Hold()
	t.Cleanup(release)
	old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	time.Sleep(1100 * time.Millisecond) // on the containerd store the load time is what counts
	until := time.Now().Add(-100 * time.Millisecond).UTC().Format(time.RFC3339Nano)
	var r result
	// The pull cannot finish while its layers are held, so it overlaps the whole run; pullDuring's
	// own reading of that races with the release and is not used.
	pullErr, _ := pullDuring(t, ref, func() {
		r = runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": until})
		if reg.LayersServed() == 0 {
			t.Error("no layer download had started when the plugin finished: the test proves nothing")
		}
		release()
	})
	if pullErr != nil {
		t.Fatalf("the pull running during the plugin's run failed: %v", pullErr)
	}
	images, _ := r.report.Phase(report.PhaseImages)
	if r.code != 0 || images.Status != report.StatusRemoved || harness.Exists(t, "image", old) {
		t.Fatalf("exit %d, image phase %s; the old dangling image was removed: %v", r.code, images.Status, !harness.Exists(t, "image", old))
	}
	if harness.ContainerdStore && !strings.Contains(images.Reason, "one by one") {
		t.Errorf("on the containerd store the image phase must delete one by one: %q", images.Reason)
	}
}

// What the plugin avoids: on the containerd store the engine's own image prune (what `docker image
// prune` sends) during a pull makes the pull fail. If this stops holding, the engine has fixed
// moby/moby#53321 and the one-by-one deletes can be revisited.
func TestEnginePruneBreaksPullOnContainerdStore(t *testing.T) {
	if !harness.ContainerdStore {
		t.Skip("classic image store: its image prune does not touch pulls in flight (docs/engine.md)")
	}
	_, push := bigImage(t)
	failed := 0
	for try := range 3 {
		ref := push(fixtures.RandomHex(4))
		pullErr, overlapped := pullDuring(t, ref, func() {
			_, err := harness.API.ImagesPrune(harness.Ctx(), filters.NewArgs(filters.Arg("dangling", "true"), filters.Arg("until", "1s")))
			harness.Must(t, err)
		})
		t.Logf("try %d: pull still running after the prune %v, pull error %v", try, overlapped, pullErr)
		// The pull started first and succeeds on its own (TestPullDuringImagePhase, the warmth
		// test); failing while or right after the prune ran is the prune's doing.
		if pullErr != nil {
			failed++
			break
		}
	}
	if failed == 0 {
		t.Fatal("no pull failed under the engine's image prune in 3 tries")
	}
}
