package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// scratchLabel is the label a random fixture may carry and the `labels` setting may ask for.
const scratchLabel = "dgp.tier=scratch"

type fixtureImage struct {
	id               string
	tagged, old, lbl bool
}

type fixtureContainer struct {
	id                string
	image             int // index into images, or -1 for the sleeper image
	running, old, lbl bool
}

// randomWorld is a random mix of images, containers, volumes and networks around a cutoff.
type randomWorld struct {
	seed       uint64
	cutoff     time.Time
	images     []fixtureImage
	containers []fixtureContainer
	volumes    []string
	networks   []string
}

// makeWorld creates a random world. Images are dated around the cutoff in their config;
// containers are made in two waves, before and after it. Every image is loaded before the first
// wave (containers of either wave may use any of them), and the young untagged ones are loaded under
// a tag of their own that is taken away after the cutoff: they become dangling then, which on the
// containerd store is the time `until` compares, so they are young by every clock.
func makeWorld(t *testing.T, seed uint64) *randomWorld {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	w := &randomWorld{seed: seed}
	harness.EnsureSleeperImage(t)
	sleeper, err := os.ReadFile(harness.SleeperBin)
	harness.Must(t, err)
	// Images are dated an hour before or after now in their config; the cutoff falls after the
	// first wave of containers, seconds from now.
	base := time.Now()
	var danglingLater []string
	for i := 0; i < 6+rng.IntN(5); i++ {
		im := fixtureImage{tagged: rng.IntN(3) == 0, old: rng.IntN(3) != 0, lbl: rng.IntN(2) == 0}
		created := base.Add(-time.Hour)
		if !im.old {
			created = base.Add(time.Hour)
		}
		spec := fixtures.Image{Created: created, Files: map[string][]byte{"sleeper": sleeper, "data/" + fixtures.RandomHex(4): []byte(fixtures.RandomHex(512))}}
		if im.lbl {
			spec.Labels = map[string]string{"dgp.tier": "scratch"}
		}
		switch {
		case im.tagged:
			spec.Tag = "dgp-world:" + fixtures.RandomHex(4)
		case !im.old:
			spec.Tag = "dgp-world-young:" + fixtures.RandomHex(4)
			danglingLater = append(danglingLater, spec.Tag)
		}
		im.id = harness.LoadImage(t, spec)
		w.images = append(w.images, im)
	}
	for i := 0; i < 1+rng.IntN(2); i++ {
		w.volumes = append(w.volumes, makeVolume(t))
		w.networks = append(w.networks, makeNetwork(t))
	}
	wave := func(old bool) {
		for i := 0; i < 2+rng.IntN(4); i++ {
			c := fixtureContainer{image: -1, running: rng.IntN(3) == 0, old: old, lbl: rng.IntN(2) == 0}
			if rng.IntN(3) != 0 {
				c.image = rng.IntN(len(w.images))
			}
			spec := harness.Container{Start: c.running}
			if c.image >= 0 {
				spec.Image = w.images[c.image].id
			}
			if c.lbl {
				spec.Labels = map[string]string{"dgp.tier": "scratch"}
			}
			if rng.IntN(3) == 0 {
				spec.Volume = w.volumes[rng.IntN(len(w.volumes))]
			}
			if c.running && rng.IntN(2) == 0 {
				spec.Network = w.networks[rng.IntN(len(w.networks))]
			}
			c.id = harness.MakeContainer(t, spec)
			w.containers = append(w.containers, c)
		}
	}
	wave(true)
	w.cutoff = time.Now().Truncate(time.Second).Add(time.Second)
	time.Sleep(time.Until(w.cutoff) + 1100*time.Millisecond)
	for _, tag := range danglingLater {
		leaveDangling(t, tag)
	}
	wave(false)
	return w
}

// containerRemoved: a container carries its image's labels too (the engine merges them), so
// `labels` also matches a container whose image is labelled.
func (w *randomWorld) containerRemoved(c fixtureContainer, labels bool) bool {
	labelled := c.lbl || (c.image >= 0 && w.images[c.image].lbl)
	return !c.running && c.old && (!labels || labelled)
}

// policy is the set the policy removes: stopped containers created before the cutoff, and
// untagged images created before it that no remaining container uses; with labels, only labelled.
func (w *randomWorld) policy(labels bool) map[string]bool {
	removed := map[string]bool{}
	for _, c := range w.containers {
		if w.containerRemoved(c, labels) {
			removed[c.id] = true
		}
	}
	for i, im := range w.images {
		if im.tagged || !im.old || (labels && !im.lbl) {
			continue
		}
		inUse := false
		for _, c := range w.containers {
			if c.image == i && !removed[c.id] {
				inUse = true
			}
		}
		if !inUse {
			removed[im.id] = true
		}
	}
	return removed
}

func (w *randomWorld) check(t *testing.T, labels bool, before, after inventory, describe string) {
	t.Helper()
	want := w.policy(labels)
	fixtures := map[string]bool{}
	for _, im := range w.images {
		fixtures[im.id] = true
		if gone := !after.images[im.id]; gone != want[im.id] {
			t.Errorf("seed %d%s: image %s (tagged %v, old %v, labelled %v) removed=%v, policy says %v", w.seed, describe, im.id[:19], im.tagged, im.old, im.lbl, gone, want[im.id])
		}
	}
	for _, c := range w.containers {
		fixtures[c.id] = true
		if gone := !after.containers[c.id]; gone != want[c.id] {
			t.Errorf("seed %d%s: container %s (running %v, old %v, labelled %v) removed=%v, policy says %v", w.seed, describe, c.id[:12], c.running, c.old, c.lbl, gone, want[c.id])
		}
	}
	for id := range before.networks {
		if !after.networks[id] {
			t.Errorf("seed %d%s: network %s removed", w.seed, describe, id)
		}
	}
	for id := range before.volumes {
		if !after.volumes[id] {
			t.Errorf("seed %d%s: volume %s removed", w.seed, describe, id)
		}
	}
	for id := range before.images {
		if !fixtures[id] && !after.images[id] {
			t.Errorf("seed %d%s: image %s, not one of this world's, was removed", w.seed, describe, id)
		}
	}
	for id := range before.containers {
		if !fixtures[id] && !after.containers[id] {
			t.Errorf("seed %d%s: container %s, not one of this world's, was removed", w.seed, describe, id)
		}
	}
}

// seeds are the random worlds to try: DGP_SEEDS (comma-separated decimal integers) when set,
// else 1, 2, 3 and one drawn from the clock. A DGP_SEEDS item that is not a seed fails the test
// rather than being dropped, so a mistyped rerun cannot pass by trying fewer worlds.
func seeds(t testing.TB) []uint64 {
	t.Helper()
	s := os.Getenv("DGP_SEEDS")
	if s == "" {
		return []uint64{1, 2, 3, uint64(time.Now().UnixNano() % 100000)}
	}
	var out []uint64
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 64)
		if err != nil {
			t.Fatalf("DGP_SEEDS=%q: item %q is not a seed (a decimal integer): %v", s, f, err)
		}
		out = append(out, n)
	}
	return out
}

// Invariants: on random fixture sets, a forced run removes exactly the policy set.
// DGP_SEEDS=1,2,3 reruns given seeds; each failure names its seed. Proves SPEC "The run" 6 and
// "Settings" until and labels; docs/reliability.md "Invariants".
func TestInvariantsOnRandomFixtures(t *testing.T) {
	for _, seed := range seeds(t) {
		t.Run(fmt.Sprint("seed-", seed), func(t *testing.T) {
			w := makeWorld(t, seed)
			labels := seed%2 == 0
			before := takeInventory(t)
			env := map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": w.cutoff.UTC().Format(time.RFC3339)}
			if labels {
				env["PLUGIN_LABELS"] = scratchLabel
			}
			r := runPlugin(t, env)
			if r.code != 0 {
				t.Fatalf("seed %d: exit %d", seed, r.code)
			}
			w.check(t, labels, before, takeInventory(t), fmt.Sprintf(" (labels %v)", labels))
			t.Logf("seed %d: %d images, %d containers, %d volumes, %d networks; policy removes %d", seed, len(w.images), len(w.containers), len(w.volumes), len(w.networks), len(w.policy(labels)))
		})
	}
}

// Four runs started at once on one daemon: each exits 0, together they remove exactly the
// policy set, and a conflict shows as a skipped phase. Proves SPEC "The run" 6 (HTTP 409 skips
// the phase, not an error); docs/reliability.md "Concurrency".
func TestConcurrentRuns(t *testing.T) {
	// Seed 44's world has an old dangling image whose only user is an old stopped container, so
	// one run's image phase can only remove it after another run's container phase.
	w := makeWorld(t, 44)
	before := takeInventory(t)
	const runs = 4
	// The runs' goroutines must not fail the test: each returns its result and error, and both
	// are checked here on the test goroutine.
	results := make([]result, runs)
	errs := make([]error, runs)
	dirs := make([]string, runs)
	for i := range dirs {
		dirs[i] = t.TempDir()
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results[i], errs[i] = execPlugin(dirs[i], map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": w.cutoff.UTC().Format(time.RFC3339)})
		}()
	}
	close(start)
	wg.Wait()
	notRun := false
	for i, r := range results {
		t.Logf("run %d:", i)
		logRun(t, r)
		if errs[i] != nil {
			t.Errorf("run %d: %v", i, errs[i])
			notRun = true
		}
	}
	if notRun {
		t.FailNow() // what the runs removed together cannot be judged without every run's report
	}
	union := map[string]bool{}
	skipped := 0
	for i, r := range results {
		if r.code != 0 {
			t.Errorf("run %d: exit %d: %s", i, r.code, r.stderr)
		}
		// The decision names what this run's phases did: another prune held each (409), they
		// removed something, or they ran and found nothing.
		want := report.DecisionNothingToPrune
		if !slices.ContainsFunc(r.report.Phases, func(ph report.PhaseReport) bool { return ph.Status != report.StatusSkipped }) {
			want = report.DecisionPhasesSkipped
		} else if slices.ContainsFunc(r.report.Phases, func(ph report.PhaseReport) bool { return ph.Count > 0 }) {
			want = report.DecisionPruned
		}
		if r.report.Decision != want {
			t.Errorf("run %d: decision %q, want %q for phases %+v", i, r.report.Decision, want, r.report.Phases)
		}
		for _, ph := range r.report.Phases {
			for _, o := range ph.Objects {
				if union[o.ID] && ph.Phase != report.PhaseBuildCache {
					t.Errorf("%s %s reported removed by two runs", ph.Phase, o.ID)
				}
				union[o.ID] = true
			}
			if ph.Status == report.StatusSkipped {
				skipped++
				if !strings.Contains(ph.Reason, "already running") {
					t.Errorf("run %d: %s skipped for another reason: %s", i, ph.Phase, ph.Reason)
				}
			}
		}
	}
	if skipped == 0 {
		t.Errorf("four simultaneous runs met no conflicting prune: the runs did not overlap")
	}
	w.check(t, false, before, takeInventory(t), " (concurrent)")
	want := w.policy(false)
	for id := range want {
		if !union[id] {
			t.Errorf("policy object %s is gone but no run reported removing it", id)
		}
	}
	t.Logf("%d concurrent runs: %d objects removed in all, %d phases skipped as conflicts", runs, len(union), skipped)
}
