package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// The no-run gate's promise on the shapes operators run (docs/usage.md, "The no-run gate"):
// created containers, compose projects about to start, the cc-ci run-stack pattern, and the CI's
// own run label by default.

// noRunEvidence is the no-run gate's reason and evidence, for messages and checks.
func noRunEvidence(r result) string {
	v, _ := r.report.Gate("no_run")
	return v.Reason + "\n" + strings.Join(v.Evidence, "\n") + "\n" + strings.Join(v.Warnings, "\n")
}

// A compose project whose container is created (about to start) is a live run, with an exited
// sibling; once the created container is older than until, it is abandoned and both are pruned.
func TestCreatedComposeProjectIsLive(t *testing.T) {
	// An image older than the first run's until on both stores, so a prune that ran would remove it.
	old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	cutoff := harness.WaitPastCutoff()
	project := "ci-proj-" + fixtures.RandomHex(4)
	labels := map[string]string{"com.docker.compose.project": project}
	created := harness.MakeContainer(t, harness.Container{Name: project + "-app-1", Labels: labels})
	exited := harness.MakeContainer(t, harness.Container{Name: project + "-db-1", Labels: labels, Start: true, Cmd: []string{"/sleeper", "exit"}})
	if !harness.WaitFor(t, 30*time.Second, "the sibling container exited", func() (bool, error) {
		c, err := harness.API.ContainerInspect(harness.Ctx(), exited)
		return err == nil && !c.State.Running, err
	}) {
		t.FailNow()
	}

	// until before both containers: the created container is young, so the project is live.
	r := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_STACK_PATTERN": "^ci-proj-", "PLUGIN_UNTIL": harness.RFC3339(cutoff)})
	if r.code != 0 || r.report.Decision != "skipped: no_run" || !strings.Contains(noRunEvidence(r), `compose project "`+project+`"`) {
		t.Fatalf("exit %d decision %q; want skipped by compose project %s:\n%s", r.code, r.report.Decision, project, noRunEvidence(r))
	}
	if !harness.Exists(t, "container", created) || !harness.Exists(t, "container", exited) || !harness.Exists(t, "image", old) {
		t.Fatal("a skipped run removed something")
	}

	// until a moment after both were created: the created container never started in time, it is
	// abandoned, and the container prune removes both as stopped.
	time.Sleep(1100 * time.Millisecond)
	until := time.Now().Add(-100 * time.Millisecond).UTC().Format(time.RFC3339Nano)
	r = runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_STACK_PATTERN": "^ci-proj-", "PLUGIN_UNTIL": until})
	if r.code != 0 || r.report.Decision != report.DecisionPruned {
		t.Fatalf("exit %d decision %q; want pruned:\n%s", r.code, r.report.Decision, noRunEvidence(r))
	}
	if harness.Exists(t, "container", created) || harness.Exists(t, "container", exited) {
		t.Error("the abandoned project's containers were not pruned")
	}
	if got := harness.PhaseIDs(r.report, report.PhaseContainers); !got[created] || !got[exited] {
		t.Errorf("report lists %v, want both containers", harness.FmtSet(got))
	}
}

// A paused container matching the pattern, and a created one carrying a run label, hold the gate.
func TestPausedAndCreatedAreLive(t *testing.T) {
	name := "ci-paused-" + fixtures.RandomHex(4)
	paused := harness.MakeContainer(t, harness.Container{Name: name, Start: true})
	harness.Must(t, harness.API.ContainerPause(harness.Ctx(), paused))
	t.Cleanup(func() { _ = harness.API.ContainerUnpause(harness.Ctx(), paused) })
	r := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_STACK_PATTERN": "^ci-paused-"})
	if r.report.Decision != "skipped: no_run" || !strings.Contains(noRunEvidence(r), `container "`+name+`" (paused)`) {
		t.Fatalf("decision %q; want skipped by the paused container:\n%s", r.report.Decision, noRunEvidence(r))
	}
	harness.Must(t, harness.API.ContainerUnpause(harness.Ctx(), paused))

	key := "dgp.run." + fixtures.RandomHex(4)
	harness.MakeContainer(t, harness.Container{Labels: map[string]string{key: "1"}})
	r = runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_RUN_LABELS": key})
	if r.report.Decision != "skipped: no_run" || !strings.Contains(noRunEvidence(r), "carries run label "+key) {
		t.Fatalf("decision %q; want skipped by the created container's run label:\n%s", r.report.Decision, noRunEvidence(r))
	}
}

// ccciName is a name the cc-ci run-stack pattern matches, unique to this test.
func ccciName() string {
	return "x" + fixtures.RandomHex(2)[:3] + "-" + fixtures.RandomHex(3) + "_ci_commoninternet_net_"
}

const ccciPattern = `^[a-z0-9]{1,4}-[0-9a-f]{6}_ci_commoninternet_net_`

// The cc-ci pattern, one string with a comma inside braces, closes the gate for a running
// container and for a swarm service of a run stack.
func TestCCCIPatternClosesGate(t *testing.T) {
	old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	name := ccciName() + "app"
	harness.MakeContainer(t, harness.Container{Name: name, Start: true})
	// The image is older than until on both stores, so a prune that ran would remove it.
	r := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_STACK_PATTERN": ccciPattern, "PLUGIN_UNTIL": harness.RFC3339(harness.WaitPastCutoff())})
	if r.report.Decision != "skipped: no_run" || !strings.Contains(noRunEvidence(r), `container "`+name+`" (running) matches "`+ccciPattern+`"`) {
		t.Fatalf("decision %q; want skipped by %s matching the whole pattern:\n%s", r.report.Decision, name, noRunEvidence(r))
	}
	if !harness.Exists(t, "image", old) {
		t.Fatal("a skipped run removed the old image")
	}
}

func TestCCCIPatternServiceClosesGate(t *testing.T) {
	service := ccciName() + "web"
	makeService(t, serviceSpec{name: service, replicas: 1})
	r := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_STACK_PATTERN": "^build-," + ccciPattern})
	if !strings.HasPrefix(r.report.Decision, "skipped: no_run") || !strings.Contains(noRunEvidence(r), `swarm service "`+service+`"`) {
		t.Fatalf("decision %q; want skipped by service %s:\n%s", r.report.Decision, service, noRunEvidence(r))
	}
}

// Inside Drone with no run policy, io.drone.build.number is the default: another build's step
// holds the gate, the plugin's own build does not, and the summary says which label was used.
// The own build is me/repo 3, or the enclosing build when the tests run in a Drone step.
func TestDefaultRunLabelInsideDrone(t *testing.T) {
	slug, n := harness.DroneBuildAs("me/repo", 3)
	number := strconv.Itoa(n)
	drone := map[string]string{"PLUGIN_FORCE": "true", "DRONE": "true", "DRONE_REPO": slug, "DRONE_BUILD_NUMBER": number}
	own := harness.MakeContainer(t, harness.Container{Start: true, Labels: map[string]string{"io.drone.repo.slug": slug, "io.drone.build.number": number}})
	r := runPlugin(t, drone)
	if r.code != 0 || r.report.Decision == "skipped: no_run" || !strings.Contains(noRunEvidence(r), "default inside Drone") {
		t.Fatalf("exit %d decision %q; the own build must not hold the gate, and the default must be named:\n%s", r.code, r.report.Decision, noRunEvidence(r))
	}
	harness.Must(t, harness.API.ContainerRemove(harness.Ctx(), own, container.RemoveOptions{Force: true}))
	harness.MakeContainer(t, harness.Container{Labels: map[string]string{"io.drone.repo.slug": "other/repo", "io.drone.build.number": number}})
	r = runPlugin(t, drone)
	if r.report.Decision != "skipped: no_run" || !strings.Contains(noRunEvidence(r), "io.drone.build.number") {
		t.Fatalf("decision %q; another repository's build (created, about to start) must hold the gate:\n%s", r.report.Decision, noRunEvidence(r))
	}
}

// Inside Woodpecker with no run policy, wp_uuid is the default; the workflow's own containers
// (on its default network) are ignored, another workflow's hold the gate.
func TestDefaultRunLabelInsideWoodpecker(t *testing.T) {
	prefix := "dgp-wf-" + fixtures.RandomHex(4)
	ownNet, err := harness.API.NetworkCreate(harness.Ctx(), prefix+"_default", network.CreateOptions{Labels: map[string]string{fixtures.Label: "true"}})
	harness.Must(t, err)
	t.Cleanup(func() { _ = harness.API.NetworkRemove(harness.Ctx(), ownNet.ID) })
	otherNet := makeNetwork(t)
	env := map[string]string{"PLUGIN_FORCE": "true", "CI": "woodpecker", "CI_STEP_NAME": prefix + "_step_1", "DRONE_BUILD_NUMBER": "0"}

	// The own workflow is read off the plugin's own container (TestCIClients/woodpecker* runs it
	// in one); as a process on the host it cannot be told apart, whatever CI_STEP_NAME says, so
	// its service holds the gate (prune less) and the summary says why.
	service := harness.MakeContainer(t, harness.Container{Start: true, Network: prefix + "_default", Labels: map[string]string{"wp_uuid": fixtures.RandomHex(8)}})
	r := runPlugin(t, env)
	if v, _ := r.report.Gate(gates.NoRunGate); r.code != 0 || r.report.Decision != "skipped: no_run" || !strings.Contains(v.Reason, "default inside Woodpecker") ||
		!strings.Contains(strings.Join(v.Warnings, "\n"), "own container") {
		t.Fatalf("exit %d decision %q; outside its container the own workflow must hold the gate with a warning:\n%s %q", r.code, r.report.Decision, noRunEvidence(r), v.Warnings)
	}
	harness.Must(t, harness.API.ContainerRemove(harness.Ctx(), service, container.RemoveOptions{Force: true}))
	harness.MakeContainer(t, harness.Container{Start: true, Network: otherNet, Labels: map[string]string{"wp_uuid": fixtures.RandomHex(8)}})
	r = runPlugin(t, env)
	if r.report.Decision != "skipped: no_run" || !strings.Contains(noRunEvidence(r), "wp_uuid") {
		t.Fatalf("decision %q; another workflow must hold the gate:\n%s", r.report.Decision, noRunEvidence(r))
	}
}
