package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// On Podman's Docker-compatible service (scripts/test-podman.sh): the summary names Podman, the
// gates ask only for container states Podman knows and no swarm question, a young created
// container matching stack_pattern holds the prune, the build-cache phase is skipped with its
// reason in the dry run and the real run alike, and the real run removes exactly the dry run's
// plan: the old created container and the old dangling image, not the young ones.
func TestPodman(t *testing.T) {
	if !harness.Podman {
		t.Skip("the engine under test is not Podman (scripts/test-podman.sh starts one)")
	}
	oldImage := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	oldContainer := harness.MakeContainer(t, harness.Container{})
	cutoff := harness.WaitPastCutoff()
	time.Sleep(time.Second)
	youngImage := harness.DanglingImage(t, time.Now(), nil)
	youngContainer := harness.MakeContainer(t, harness.Container{})
	until := cutoff.UTC().Format(time.RFC3339)
	env := map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": until}

	// A created container younger than until is a live run when stack_pattern matches it.
	live := harness.MakeContainer(t, harness.Container{Name: "dgp-podman-run-1"})
	held := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": until, "PLUGIN_STACK_PATTERN": "^dgp-podman-run-"})
	v, _ := held.report.Gate(gates.NoRunGate)
	if held.code != 0 || held.report.Decision != "skipped: "+gates.NoRunGate || !strings.Contains(strings.Join(v.Evidence, "\n"), "dgp-podman-run-1") {
		t.Fatalf("with a young created container matching stack_pattern: exit %d decision %q evidence %q; want skipped by no_run naming it", held.code, held.report.Decision, v.Evidence)
	}
	harness.Must(t, harness.API.ContainerRemove(harness.Ctx(), live, container.RemoveOptions{Force: true}))

	dry := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": until, "PLUGIN_DRY_RUN": "true"})
	real := runPlugin(t, env)
	for _, r := range []result{dry, real} {
		if r.code != 0 || !strings.HasPrefix(r.report.Store, "Podman ") {
			t.Errorf("exit %d, store %q; want 0 and the engine named as Podman", r.code, r.report.Store)
		}
		if v, _ := r.report.Gate(gates.NoConvergeGate); !v.Open || !strings.Contains(strings.Join(v.Warnings, "\n"), "not in a swarm") {
			t.Errorf("no_converge %v %q %q; want open, not in a swarm", v.Open, v.Reason, v.Warnings)
		}
		if p, _ := r.report.Phase(report.PhaseBuildCache); p.Status != report.StatusSkipped || !strings.Contains(p.Reason, "Podman") {
			t.Errorf("build_cache phase %q %q; want skipped, naming Podman", p.Status, p.Reason)
		}
	}
	if real.report.Decision != report.DecisionPruned {
		t.Errorf("real run decision %q; want %q", real.report.Decision, report.DecisionPruned)
	}
	for phase, want := range map[string]string{report.PhaseContainers: oldContainer, report.PhaseImages: oldImage} {
		planned, removed := harness.PhaseIDs(dry.report, phase), harness.PhaseIDs(real.report, phase)
		if !planned[want] || len(planned) != 1 {
			t.Errorf("%s: the dry run planned %v; want only %s", phase, fmtSorted(planned), want)
		}
		if fmtSorted(planned) != fmtSorted(removed) {
			t.Errorf("%s: the dry run planned %v, the real run removed %v", phase, fmtSorted(planned), fmtSorted(removed))
		}
	}
	if harness.Exists(t, "container", oldContainer) || harness.Exists(t, "image", oldImage) {
		t.Errorf("after the real run: old container kept %v, old image kept %v", harness.Exists(t, "container", oldContainer), harness.Exists(t, "image", oldImage))
	}
	if !harness.Exists(t, "container", youngContainer) || !harness.Exists(t, "image", youngImage) {
		t.Errorf("a young object was removed: container kept %v, image kept %v", harness.Exists(t, "container", youngContainer), harness.Exists(t, "image", youngImage))
	}
}
