package e2e

import (
	"sort"
	"strconv"

	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// fixtureSet is one of everything the policy must either remove or keep. "Old" objects are
// made before the cutoff (images also backdated 48 h in their config), "young" ones after; until is
// given as that cutoff (RFC 3339), since containers, build cache and, on the containerd store,
// image records cannot be backdated.
type fixtureSet struct {
	cutoff time.Time

	oldDangling, oldRetagged, youngDangling, usedByStopped string
	taggedOld                                              string
	oldStopped, youngStopped, oldRunning                   string
	vol, net                                               string
	oldCache, youngCache                                   map[string]bool
}

func makeFixtures(t *testing.T) fixtureSet {
	t.Helper()
	var f fixtureSet
	harness.EnsureSleeperImage(t)
	cacheBefore := buildCacheIDs(t)
	buildCache(t)
	f.oldDangling = harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	f.oldRetagged, f.taggedOld = retagToDangling(t, time.Now().Add(-48*time.Hour))
	f.usedByStopped = harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	f.vol = makeVolume(t)
	f.net = makeNetwork(t)
	f.oldStopped = harness.MakeContainer(t, harness.Container{Volume: f.vol})
	f.oldRunning = harness.MakeContainer(t, harness.Container{Start: true, Network: f.net})

	time.Sleep(1100 * time.Millisecond)
	f.cutoff = time.Now().Truncate(time.Second)
	time.Sleep(1100 * time.Millisecond)

	f.youngDangling = harness.DanglingImage(t, time.Now(), nil)
	f.youngStopped = harness.MakeContainer(t, harness.Container{Image: f.usedByStopped})
	buildCache(t)
	// Classify this fixture's build-cache records by the clock the prune compares, last use.
	f.oldCache, f.youngCache = map[string]bool{}, map[string]bool{}
	du, err := harness.API.DiskUsage(harness.Ctx(), types.DiskUsageOptions{Types: []types.DiskUsageObject{types.BuildCacheObject}})
	harness.Must(t, err)
	for _, r := range du.BuildCache {
		switch {
		case cacheBefore[r.ID] || r.Shared || r.InUse:
		case r.LastUsedAt == nil:
			t.Logf("build-cache record %s (%s) was never used: eligible at any age", r.ID, r.Description)
		case r.LastUsedAt.Before(f.cutoff):
			f.oldCache[r.ID] = true
		default:
			f.youngCache[r.ID] = true
		}
	}
	return f
}

func (f fixtureSet) until() string { return f.cutoff.UTC().Format(time.RFC3339) }

// checkPolicySet asserts that the fixture's old, unused, untagged objects went (of the old
// build-cache records at least one) and the rest of the fixture stayed, and that the report says so.
func (f fixtureSet) checkPolicySet(t *testing.T, r result) {
	t.Helper()
	for _, id := range []string{f.oldDangling, f.oldRetagged} {
		if harness.Exists(t, "image", id) {
			t.Errorf("old dangling image %s was not removed", id)
		}
	}
	if harness.Exists(t, "container", f.oldStopped) {
		t.Errorf("old stopped container %s was not removed", f.oldStopped)
	}
	for what, id := range map[string]string{"tagged image": f.taggedOld, "image used by a stopped container": f.usedByStopped,
		"young dangling image": f.youngDangling, "sleeper image": harness.SleeperImage} {
		if !harness.Exists(t, "image", id) {
			t.Errorf("%s %s was removed", what, id)
		}
	}
	for what, id := range map[string]string{"running container": f.oldRunning, "young stopped container": f.youngStopped} {
		if !harness.Exists(t, "container", id) {
			t.Errorf("%s %s was removed", what, id)
		}
	}
	if !harness.Exists(t, "volume", f.vol) {
		t.Errorf("volume %s was removed", f.vol)
	}
	if !harness.Exists(t, "network", f.net) {
		t.Errorf("network %s was removed", f.net)
	}
	cache := buildCacheIDs(t)
	removedOld := 0
	for id := range f.oldCache {
		if !cache[id] {
			removedOld++
		}
	}
	if removedOld == 0 {
		t.Errorf("no old build-cache record was removed (old records %v, left %v)", harness.FmtSet(f.oldCache), harness.FmtSet(cache))
	}
	for id := range f.youngCache {
		if !cache[id] {
			t.Errorf("young build-cache record %s was removed", id)
		}
	}
	if r.code != outcome.ExitOK || r.report.Decision != report.DecisionPruned {
		t.Errorf("exit %d decision %q, want 0 and %q", r.code, r.report.Decision, report.DecisionPruned)
	}
	if p, _ := r.report.Phase(report.PhaseImages); !harness.PhaseIDs(r.report, report.PhaseImages)[f.oldDangling] || p.Bytes == 0 {
		t.Errorf("images phase does not report %s with bytes: %+v", f.oldDangling, p)
	}
	if !harness.PhaseIDs(r.report, report.PhaseContainers)[f.oldStopped] {
		t.Errorf("containers phase does not report %s", f.oldStopped)
	}
}

// Below threshold nothing at all is removed, the summary says the cache was kept, and only the
// disk gate was evaluated, on the daemon's data root. Proves SPEC "The run" 2 and "Settings"
// threshold and disk_path (auto); docs/usage.md "What it does" 2 and "Which daemon and which disk".
func TestBelowThresholdRemovesNothing(t *testing.T) {
	f := makeFixtures(t)
	before := takeInventory(t)
	r := runPlugin(t, map[string]string{"PLUGIN_THRESHOLD": "100", "PLUGIN_FAIL_ABOVE": "100", "PLUGIN_UNTIL": f.until()})
	after := takeInventory(t)
	if r.code != 0 || r.report.Decision != report.DecisionKeptCache {
		t.Fatalf("exit %d decision %q, want 0 and %q", r.code, r.report.Decision, report.DecisionKeptCache)
	}
	for kind, pair := range map[string][2]map[string]bool{"images": {before.images, after.images}, "containers": {before.containers, after.containers},
		"volumes": {before.volumes, after.volumes}, "networks": {before.networks, after.networks}, "build cache": {before.cache, after.cache}} {
		for id := range pair[0] {
			if !pair[1][id] {
				t.Errorf("%s: %s disappeared below threshold", kind, id)
			}
		}
	}
	if !strings.Contains(r.stdout, "kept cache: below threshold") {
		t.Errorf("summary does not say the cache was kept")
	}
	if len(r.report.Gates) != 1 || r.report.DiskBefore == nil || r.report.DiskBefore.Path != harness.DataRoot(t) {
		t.Errorf("want only the disk gate measured on the data root, got %+v, disk %+v", r.report.Gates, r.report.DiskBefore)
	}
}

// At pressure exactly the policy set goes, via the threshold and via force.
// Proves SPEC "The run" 2 and 6 (the three phases, with until; never tagged images, volumes or
// networks) and "Settings" threshold and force; docs/usage.md "What it does" 2 and 6.
func TestPressurePrunesPolicySet(t *testing.T) {
	for name, env := range map[string]map[string]string{
		"threshold": {"PLUGIN_THRESHOLD": "1", "PLUGIN_FAIL_ABOVE": "100"},
		"force":     {"PLUGIN_THRESHOLD": "100", "PLUGIN_FAIL_ABOVE": "100", "PLUGIN_FORCE": "true"},
	} {
		t.Run(name, func(t *testing.T) {
			f := makeFixtures(t)
			env["PLUGIN_UNTIL"] = f.until()
			r := runPlugin(t, env)
			f.checkPolicySet(t, r)
			if v, _ := r.report.Gate(gates.DiskPressureGate); !v.Open || (name == "force") != strings.HasPrefix(v.Reason, "forced") {
				t.Errorf("disk gate %+v", v)
			}
		})
	}
}

// A duration until on images. Classic store: it compares the config's created, so of two images
// loaded just now, the one backdated 48 h goes and the one backdated 1 h stays. Containerd store: it
// compares the record's time too, so a backdated config does not make an image loaded just now old
// (both stay), while one loaded before the duration goes; the summary says which clock it
// compared. Proves SPEC "Settings" until (a duration); docs/engine.md "Image prune until".
func TestDurationUntilOnImageCreated(t *testing.T) {
	if harness.ContainerdStore {
		durationUntilOnRecords(t)
		return
	}
	old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	recent := harness.DanglingImage(t, time.Now().Add(-1*time.Hour), nil)
	r := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": "24h"})
	if r.code != 0 || harness.Exists(t, "image", old) || !harness.Exists(t, "image", recent) {
		t.Fatalf("exit %d; 48h-old image exists=%v (want false), 1h-old exists=%v (want true)", r.code, harness.Exists(t, "image", old), harness.Exists(t, "image", recent))
	}
	if p, _ := r.report.Phase(report.PhaseImages); !strings.Contains(p.Clock, "config created") {
		t.Errorf("images phase says until compared %q, want the config's created time", p.Clock)
	}
}

func durationUntilOnRecords(t *testing.T) {
	loadedEarlier := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	time.Sleep(4 * time.Second)
	loadedNow := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	r := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": "24h"})
	if r.code != 0 || !harness.Exists(t, "image", loadedEarlier) || !harness.Exists(t, "image", loadedNow) {
		t.Fatalf("until 24h: exit %d; images backdated 48 h but loaded seconds ago kept: %v, %v (want both)",
			r.code, harness.Exists(t, "image", loadedEarlier), harness.Exists(t, "image", loadedNow))
	}
	p, _ := r.report.Phase(report.PhaseImages)
	if !strings.Contains(r.report.Store, ": containerd image store") || strings.Contains(p.Clock, "(build time)") || !strings.Contains(p.Clock, "record") {
		t.Errorf("store %q, images phase says until compared %q; want the containerd store and the record's time named", r.report.Store, p.Clock)
	}
	// 2s: the image loaded 4 s before the other is old, the one loaded just now is not.
	r = runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": "2s"})
	if r.code != 0 || harness.Exists(t, "image", loadedEarlier) || !harness.Exists(t, "image", loadedNow) {
		t.Fatalf("until 2s: exit %d; image loaded 4 s earlier exists=%v (want false), loaded just now exists=%v (want true)",
			r.code, harness.Exists(t, "image", loadedEarlier), harness.Exists(t, "image", loadedNow))
	}
	if !harness.PhaseIDs(r.report, report.PhaseImages)[loadedEarlier] {
		t.Errorf("images phase does not report %s", loadedEarlier)
	}
}

// A live run matching stack_pattern (compose project, container name, swarm stack) or run_labels
// skips the prune, and the summary names it. Proves SPEC "The run" 3 and 5 and "Settings"
// stack_pattern and run_labels; docs/usage.md "What it does" 3 and 5.
func TestLiveRunSkips(t *testing.T) {
	cases := map[string]struct {
		setup func(t *testing.T)
		want  string
	}{
		"compose project": {func(t *testing.T) {
			harness.MakeContainer(t, harness.Container{Start: true, Labels: map[string]string{gates.ComposeProjectLabel: "ci-run-41"}})
		}, `compose project "ci-run-41"`},
		"container name": {func(t *testing.T) {
			harness.MakeContainer(t, harness.Container{Start: true, Name: "ci-run-42-db"})
		}, `container "ci-run-42-db"`},
		"swarm stack": {func(t *testing.T) {
			makeService(t, serviceSpec{name: "ci-run-43_web", replicas: 1, labels: map[string]string{gates.StackNamespaceLabel: "ci-run-43"}})
		}, `swarm stack "ci-run-43"`},
		"run label": {func(t *testing.T) {
			harness.MakeContainer(t, harness.Container{Start: true, Labels: map[string]string{"io.drone.build.number": "7", "io.drone.repo.slug": "other/repo"}})
		}, "carries run label io.drone.build.number"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
			stopped := harness.MakeContainer(t, harness.Container{})
			c.setup(t)
			time.Sleep(1100 * time.Millisecond)
			before := takeInventory(t)
			r := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": time.Now().Add(-time.Second).UTC().Format(time.RFC3339),
				"PLUGIN_STACK_PATTERN": "^ci-run-[0-9]+", "PLUGIN_RUN_LABELS": "io.drone.build.number",
				"DRONE_REPO": "me/prune", "DRONE_BUILD_NUMBER": "7"})
			after := takeInventory(t)
			if r.code != 0 || r.report.Decision != "skipped: "+gates.NoRunGate {
				t.Fatalf("exit %d decision %q", r.code, r.report.Decision)
			}
			if !strings.Contains(r.stdout, c.want) {
				t.Errorf("summary does not name %s", c.want)
			}
			if !harness.Exists(t, "image", old) || !harness.Exists(t, "container", stopped) || len(after.images) < len(before.images) || len(after.containers) < len(before.containers) {
				t.Errorf("something was removed while a run was live")
			}
		})
	}
}

// The plugin's own build (DRONE_REPO + DRONE_BUILD_NUMBER) does not count as a live run. The own
// build is me/prune 9, or the enclosing build when the tests run in a Drone step (harness.DroneBuildAs).
// Proves SPEC "Settings" run_labels (own build ignored); docs/usage.md "2. Post-run cleanup".
func TestOwnBuildIgnored(t *testing.T) {
	slug, n := harness.DroneBuildAs("me/prune", 9)
	harness.MakeContainer(t, harness.Container{Start: true, Labels: map[string]string{"io.drone.build.number": strconv.Itoa(n), "io.drone.repo.slug": slug}})
	r := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_DRY_RUN": "true", "PLUGIN_RUN_LABELS": "io.drone.build.number",
		"DRONE_REPO": slug, "DRONE_BUILD_NUMBER": strconv.Itoa(n)})
	if r.code != 0 || r.report.Decision != report.DecisionDryRun {
		t.Fatalf("exit %d decision %q: own build held the gate", r.code, r.report.Decision)
	}
}

// A service that cannot reach its replicas skips the prune, and the summary gives its
// running/desired counts. Proves SPEC "The run" 4 and 5; docs/usage.md "What it does" 4 and 5.
func TestUnconvergedServiceSkips(t *testing.T) {
	old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	makeService(t, serviceSpec{name: "dgp-unplaceable", replicas: 2, constraints: []string{"node.labels.dgp-nowhere==true"}})
	// The image is older than until on both stores, so a prune that ran would remove it.
	r := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": harness.RFC3339(harness.WaitPastCutoff())})
	if r.code != 0 || r.report.Decision != "skipped: "+gates.NoConvergeGate {
		t.Fatalf("exit %d decision %q", r.code, r.report.Decision)
	}
	if !strings.Contains(r.stdout, "service dgp-unplaceable has 0/2 tasks running") {
		t.Errorf("summary does not show running/desired")
	}
	if !harness.Exists(t, "image", old) {
		t.Errorf("image removed while a service was converging")
	}
}

// A restarting container and a health check still starting both hold the no-converge gate.
// Proves SPEC "The run" 4 (containers); docs/usage.md "What it does" 4.
func TestConvergingContainersSkip(t *testing.T) {
	for name, spec := range map[string]harness.Container{
		"restarting": {Start: true, Restart: true, Cmd: []string{"/sleeper", "exit"}},
		"health":     {Start: true, Health: true},
	} {
		t.Run(name, func(t *testing.T) {
			id := harness.MakeContainer(t, spec)
			if name == "restarting" && !harness.WaitFor(t, 10*time.Second, "container "+id[:12]+" is restarting", func() (bool, error) {
				c, err := harness.API.ContainerInspect(harness.Ctx(), id)
				return err == nil && c.State != nil && c.State.Restarting, err
			}) {
				t.FailNow()
			}
			r := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_DRY_RUN": "true"})
			if r.code != 0 || r.report.Decision != "skipped: "+gates.NoConvergeGate {
				t.Fatalf("exit %d decision %q", r.code, r.report.Decision)
			}
		})
	}
}

// wait: a gate closed by a live run is re-checked until the run stops, then the run goes on (a dry
// run here). Proves SPEC "Settings" wait and "The run" 5; docs/usage.md "What it does" 5.
func TestWaitForGate(t *testing.T) {
	live := harness.MakeContainer(t, harness.Container{Start: true, Name: "ci-run-77-app"})
	stopped := make(chan error, 1)
	go func() {
		time.Sleep(2 * time.Second)
		stopped <- harness.API.ContainerStop(harness.Ctx(), live, containerStopOptions())
	}()
	r := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_DRY_RUN": "true", "PLUGIN_STACK_PATTERN": "^ci-run-", "PLUGIN_WAIT": "30s"})
	if err := <-stopped; err != nil {
		t.Fatalf("stopping the live run during wait: %v", err)
	}
	if r.code != 0 || r.report.Decision != report.DecisionDryRun {
		t.Fatalf("exit %d decision %q, want the gate to open within wait", r.code, r.report.Decision)
	}
	if r.elapsed < 2*time.Second || r.elapsed > 20*time.Second {
		t.Errorf("took %s; want the first re-check after the stop, well within wait", r.elapsed)
	}
}

// A dry run removes nothing and lists exactly what the following real run removes.
// Proves SPEC "Settings" dry_run; docs/usage.md "What it does" (dry_run) and "3. Manual promote".
func TestDryRunMatchesRealRun(t *testing.T) {
	f := makeFixtures(t)
	env := map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": f.until()}
	before := takeInventory(t)
	dry := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": f.until(), "PLUGIN_DRY_RUN": "true"})
	if dry.code != 0 || dry.report.Decision != report.DecisionDryRun {
		t.Fatalf("dry run exit %d decision %q", dry.code, dry.report.Decision)
	}
	mid := takeInventory(t)
	for id := range before.images {
		if !mid.images[id] {
			t.Fatalf("dry run removed image %s", id)
		}
	}
	for id := range before.containers {
		if !mid.containers[id] {
			t.Fatalf("dry run removed container %s", id)
		}
	}
	real := runPlugin(t, env)
	for _, phase := range []string{report.PhaseContainers, report.PhaseImages, report.PhaseBuildCache} {
		want, got := harness.PhaseIDs(dry.report, phase), harness.PhaseIDs(real.report, phase)
		if len(want) == 0 {
			t.Errorf("%s: dry run listed nothing; the fixtures should give it something", phase)
		}
		if fmtSorted(want) != fmtSorted(got) {
			t.Errorf("%s: dry run listed %v, real run removed %v", phase, fmtSorted(want), fmtSorted(got))
		}
	}
	f.checkPolicySet(t, real)
}

// labels narrows the container and image prunes and skips the build-cache phase.
// Proves SPEC "Settings" labels and "The run" 6; docs/usage.md "What it does" 6.
func TestLabelsNarrowAndSkipBuildCache(t *testing.T) {
	in := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), map[string]string{"ci.tier": "scratch"})
	out := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	inC := harness.MakeContainer(t, harness.Container{Labels: map[string]string{"ci.tier": "scratch"}})
	outC := harness.MakeContainer(t, harness.Container{})
	// This test's own build-cache records: old enough for the until below, so a build-cache
	// phase that ran would remove them. (Records of earlier tests are left out: the engine drops
	// some of them by itself once their images are removed.)
	preexisting := buildCacheIDs(t)
	buildCache(t)
	ours := map[string]bool{}
	for id := range buildCacheIDs(t) {
		if !preexisting[id] {
			ours[id] = true
		}
	}
	if len(ours) == 0 {
		t.Fatal("the build left no build-cache record to protect")
	}
	// until below is whole seconds, a second ago: two seconds on, everything above is older.
	time.Sleep(2100 * time.Millisecond)
	r := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_LABELS": "ci.tier=scratch",
		"PLUGIN_UNTIL": time.Now().Add(-time.Second).UTC().Format(time.RFC3339)})
	if r.code != 0 || harness.Exists(t, "image", in) || harness.Exists(t, "container", inC) || !harness.Exists(t, "image", out) || !harness.Exists(t, "container", outC) {
		t.Fatalf("exit %d; labelled image/container gone: %v/%v (want true); unlabelled kept: %v/%v (want true)",
			r.code, !harness.Exists(t, "image", in), !harness.Exists(t, "container", inC), harness.Exists(t, "image", out), harness.Exists(t, "container", outC))
	}
	p, _ := r.report.Phase(report.PhaseBuildCache)
	if p.Status != report.StatusSkipped || !strings.Contains(p.Reason, "ignores labels") {
		t.Errorf("build-cache phase %+v, want skipped because of labels", p)
	}
	after := buildCacheIDs(t)
	for id := range ours {
		if !after[id] {
			t.Errorf("build cache %s removed although labels was set", id)
		}
	}
}

func fmtSorted(m map[string]bool) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ",")
}
