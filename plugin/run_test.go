package plugin

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/sirupsen/logrus"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/engine"
	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// The run's own paths, proven on values: a fakeEngine answers, the disk gate is forced open on a
// temporary directory. The engine tests (e2e) prove the same paths on real engines.

// testRun is a run of settings (on top of a forced disk gate on a temporary directory and a
// stack_pattern) against e.
func testRun(t *testing.T, e Engine, settings map[string]string) *Run {
	t.Helper()
	raw := map[string]string{"disk_path": t.TempDir(), "force": "true", "stack_pattern": "^ci-", "until": "1h"}
	for k, v := range settings {
		raw[k] = v
	}
	cfg, err := ParseConfig(raw, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	return &Run{Config: cfg, Engine: e, Log: log, Version: "test", PollInterval: 10 * time.Millisecond, FleetPoll: 10 * time.Millisecond,
		FleetPrepareLimit: time.Minute}
}

// liveRun is a snapshot in which a container of a CI run (stack_pattern ^ci-) is running.
func liveRun() engine.Snapshot {
	s := idle()
	s.Workload.Containers = []gates.Container{{ID: "c-live", Name: "ci-build-7", State: "running", Created: s.DaemonTime}}
	return s
}

// oldStopped is one stopped container and one dangling image, both two hours old.
func withOldObjects(e *fakeEngine) *fakeEngine {
	old := time.Now().Add(-2 * time.Hour).Unix()
	e.stopped = []engine.Listed{{Object: report.Object{ID: "c-old"}, Unix: old}}
	e.dangling = []engine.Listed{{Object: report.Object{ID: "i-old"}, Unix: old}}
	e.pruneContainers = func(context.Context, filters.Args) ([]string, uint64, error) { return []string{"c-old"}, 10, nil }
	e.pruneImages = func(context.Context, filters.Args) ([]string, []string, uint64, error) {
		return []string{"i-old"}, nil, 20, nil
	}
	return e
}

func phaseStatuses(rep *report.Report) []string {
	var out []string
	for _, p := range rep.Phases {
		out = append(out, p.Phase+"="+p.Status)
	}
	return out
}

func count(calls []string, name string) int {
	n := 0
	for _, c := range calls {
		if c == name || strings.HasPrefix(c, name+" ") {
			n++
		}
	}
	return n
}

// Before each phase after the first the no-run and no-converge gates are judged again on a new
// snapshot; a live run that appeared since stops the run there: the phases before it stand, the
// rest are not run, and the run ends with exit 0 and a decision that says which gate closed.
func TestRunRechecksGatesBeforeEachPhase(t *testing.T) {
	for _, c := range []struct {
		liveFrom int // the first snapshot that shows the live run
		before   string
		want     []string
	}{
		{2, report.PhaseImages, []string{"containers=removed", "images=not run", "build_cache=not run"}},
		{3, report.PhaseBuildCache, []string{"containers=removed", "images=removed", "build_cache=not run"}},
	} {
		t.Run("before "+c.before, func(t *testing.T) {
			e := withOldObjects(&fakeEngine{})
			e.snapshot = func(_ context.Context, n int) (engine.Snapshot, error) {
				if n >= c.liveFrom {
					return liveRun(), nil
				}
				return idle(), nil
			}
			rep, err := testRun(t, e, nil).Execute(context.Background())
			if err != nil || rep.ExitCode != outcome.ExitOK {
				t.Fatalf("exit %d, %v; want 0", rep.ExitCode, err)
			}
			if want := "stopped: no_run closed before " + c.before; rep.Decision != want {
				t.Errorf("decision %q, want %q", rep.Decision, want)
			}
			if got := phaseStatuses(rep); !slices.Equal(got, c.want) {
				t.Errorf("phases %q, want %q", got, c.want)
			}
			calls := e.Calls()
			if n := count(calls, "Snapshot"); n != c.liveFrom {
				t.Errorf("%d snapshots, want %d (one per phase reached): %q", n, c.liveFrom, calls)
			}
			if c.before == report.PhaseImages && (count(calls, "PruneImages") > 0 || count(calls, "DanglingImages") > 0) {
				t.Errorf("the image phase ran after the gate closed: %q", calls)
			}
			if v, _ := rep.Gate(gates.NoRunGate); v.Open || !strings.Contains(strings.Join(v.Evidence, " "), "ci-build-7") {
				t.Errorf("the report's no-run verdict is not the one that closed: %+v", v)
			}
		})
	}
}

// A phase another pruner holds (the engine's 409, or another client's disk-usage listing) is
// skipped with the reason; the next phases still run and the run ends pruned, exit 0.
func TestRunConflictSkipsPhase(t *testing.T) {
	e := withOldObjects(&fakeEngine{})
	e.pruneContainers = func(context.Context, filters.Args) ([]string, uint64, error) {
		return nil, 0, fmt.Errorf("%w (Error response from daemon: a prune operation is already running)", engine.ErrPruneRunning)
	}
	rep, err := testRun(t, e, nil).Execute(context.Background())
	if err != nil || rep.ExitCode != outcome.ExitOK || rep.Decision != report.DecisionPruned {
		t.Fatalf("exit %d, %v, decision %q; want 0, %q", rep.ExitCode, err, rep.Decision, report.DecisionPruned)
	}
	if got, want := phaseStatuses(rep), []string{"containers=skipped", "images=removed", "build_cache=removed"}; !slices.Equal(got, want) {
		t.Errorf("phases %q, want %q", got, want)
	}
	if ph, _ := rep.Phase(report.PhaseContainers); !strings.Contains(ph.Reason, "a prune operation is already running") {
		t.Errorf("the skipped phase does not say why: %q", ph.Reason)
	}
}

// The decision names what the phases did: pruned only when one removed something; nothing to
// prune when they ran and found nothing; every phase skipped when another prune held each one.
func TestRunDecisionNamesWhatHappened(t *testing.T) {
	busy := fmt.Errorf("%w (Error response from daemon: a prune operation is already running)", engine.ErrPruneRunning)
	for _, c := range []struct {
		name     string
		engine   *fakeEngine
		decision string
		statuses []string
	}{
		{"something removed", withOldObjects(&fakeEngine{}), report.DecisionPruned,
			[]string{"containers=removed", "images=removed", "build_cache=removed"}},
		{"nothing old enough", &fakeEngine{}, report.DecisionNothingToPrune,
			[]string{"containers=removed", "images=removed", "build_cache=removed"}},
		{"another prune held every phase", &fakeEngine{
			pruneContainers: func(context.Context, filters.Args) ([]string, uint64, error) { return nil, 0, busy },
			pruneImages:     func(context.Context, filters.Args) ([]string, []string, uint64, error) { return nil, nil, 0, busy },
			cacheErr:        busy,
		}, report.DecisionPhasesSkipped, []string{"containers=skipped", "images=skipped", "build_cache=skipped"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			rep, err := testRun(t, c.engine, nil).Execute(context.Background())
			if err != nil || rep.ExitCode != outcome.ExitOK || rep.Decision != c.decision {
				t.Fatalf("exit %d, %v, decision %q; want 0, %q", rep.ExitCode, err, rep.Decision, c.decision)
			}
			if got := phaseStatuses(rep); !slices.Equal(got, c.statuses) {
				t.Errorf("phases %q, want %q", got, c.statuses)
			}
		})
	}
}

// A stop (signal or timeout) while a prune is answering: the phase is reported with what the
// engine said it removed, the later phases are not run, and the run exits 1 saying where it
// stopped. A prune whose answer never comes is reported interrupted.
func TestRunStopMidPhase(t *testing.T) {
	for _, c := range []struct {
		name     string
		answers  bool
		status   string
		stopWord string
	}{
		{"the prune answers", true, report.StatusRemoved, "stopped after the containers phase: received terminated"},
		{"the prune does not answer", false, report.StatusInterrupted, "stopped during the containers phase: received terminated"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			e := withOldObjects(&fakeEngine{})
			e.pruneContainers = func(pctx context.Context, _ filters.Args) ([]string, uint64, error) {
				cancel(&outcome.StopCause{Reason: "received terminated"})
				if !c.answers {
					return nil, 0, &outcome.RuntimeError{What: "pruning stopped containers", Err: context.Cause(ctx)}
				}
				return []string{"c-old"}, 10, nil
			}
			rep, err := testRun(t, e, nil).Execute(ctx)
			if rep.ExitCode != outcome.ExitRuntime || err == nil || err.Error() != c.stopWord || rep.Decision != report.DecisionError {
				t.Fatalf("exit %d, %v, decision %q; want 1, %q, %q", rep.ExitCode, err, rep.Decision, c.stopWord, report.DecisionError)
			}
			if got, want := phaseStatuses(rep), []string{"containers=" + c.status, "images=not run", "build_cache=not run"}; !slices.Equal(got, want) {
				t.Errorf("phases %q, want %q", got, want)
			}
			if ph, _ := rep.Phase(report.PhaseContainers); c.answers && (ph.Count != 1 || ph.Bytes != 10) {
				t.Errorf("the stopped phase does not report what the engine removed: %+v", ph)
			}
			if n := count(e.Calls(), "Snapshot"); n != 1 {
				t.Errorf("%d snapshots after the stop; want only the first", n)
			}
		})
	}
}

// The run's timeout cuts a call short: the error names the call and the timeout, exit 1, and no
// phase runs.
func TestRunTimeout(t *testing.T) {
	e := &fakeEngine{snapshot: func(ctx context.Context, _ int) (engine.Snapshot, error) {
		<-ctx.Done()
		return engine.Snapshot{}, &outcome.RuntimeError{What: "stopped while asking the daemon for its swarm state (GET /info)", Err: context.Cause(ctx)}
	}}
	start := time.Now()
	rep, err := testRun(t, e, map[string]string{"timeout": "200ms"}).Execute(context.Background())
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the run took %s with a 200ms timeout", took)
	}
	want := "stopped while evaluating the gates: timeout 200ms reached"
	if rep.ExitCode != outcome.ExitRuntime || err == nil || err.Error() != want || rep.Error != want {
		t.Fatalf("exit %d, %v (report: %q); want 1, %q", rep.ExitCode, err, rep.Error, want)
	}
	if len(rep.Phases) != 0 || count(e.Calls(), "PruneContainers") != 0 {
		t.Errorf("phases %q ran after the timeout", phaseStatuses(rep))
	}
}

// A gate closed at the first look is re-checked while wait lasts and the run goes on once it
// opens.
func TestRunWaitsForGate(t *testing.T) {
	e := withOldObjects(&fakeEngine{})
	e.snapshot = func(_ context.Context, n int) (engine.Snapshot, error) {
		if n <= 2 {
			return liveRun(), nil
		}
		return idle(), nil
	}
	rep, err := testRun(t, e, map[string]string{"wait": "5s"}).Execute(context.Background())
	if err != nil || rep.Decision != report.DecisionPruned {
		t.Fatalf("%v, decision %q; want %q after the gate opened", err, rep.Decision, report.DecisionPruned)
	}
	if n := count(e.Calls(), "Snapshot"); n != 5 {
		t.Errorf("%d snapshots, want 5: two closed, the open one, and one before each later phase", n)
	}
}

// cardLog is a node's task log: its text summary and its card, as the plugin prints them; its
// image phase removed objects images, named img-1, img-2, ...
func cardLog(t *testing.T, decision string, code, objects int) []byte {
	t.Helper()
	var b bytes.Buffer
	status := report.StatusRemoved
	if decision == report.DecisionDryRun {
		status = report.StatusWouldRemove
	}
	var objs []report.Object
	for i := range objects {
		objs = append(objs, report.Object{ID: fmt.Sprintf("sha256:img-%d", i+1), Size: 500})
	}
	rep := &report.Report{Version: "test", Decision: decision, ExitCode: code, DryRun: status == report.StatusWouldRemove,
		Phases: []report.PhaseReport{{Phase: report.PhaseImages, Status: status, Count: objects, Bytes: 1000, Objects: objs}}}
	if err := report.WriteText(&b, rep); err != nil {
		t.Fatal(err)
	}
	if err := report.WriteCard(&b, "/dev/stdout", rep); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func node(id, host string, state swarm.NodeState, availability swarm.NodeAvailability) swarm.Node {
	return swarm.Node{ID: id, Description: swarm.NodeDescription{Hostname: host},
		Status: swarm.NodeStatus{State: state}, Spec: swarm.NodeSpec{Availability: availability}}
}

// task is a task whose container was made (a task that got as far as running).
func task(id, nodeID string, state swarm.TaskState, exit int) swarm.Task {
	return swarm.Task{ID: id, NodeID: nodeID, Status: swarm.TaskStatus{State: state, ContainerStatus: &swarm.ContainerStatus{ContainerID: "c-" + id, ExitCode: exit}}}
}

// withoutPhases is the rows with their phases left out, to compare the rest.
func withoutPhases(rows []report.NodeRow) []report.NodeRow {
	out := slices.Clone(rows)
	for i := range out {
		out[i].Phases = nil
	}
	return out
}

func fleetManager(context.Context, int) (engine.Snapshot, error) {
	s := idle()
	s.Workload.Swarm = gates.SwarmManager
	return s, nil
}

// A fleet run gives every node a row: the card of a node whose task ended, the problem of a node
// that is down or drained, whose task left no card, or whose task did not end in time. The run's
// exit code is the worst node's, and the job is removed at the end.
func TestFleetPerNodeOutcomes(t *testing.T) {
	manager := func(context.Context, int) (engine.Snapshot, error) {
		s := idle()
		s.Workload.Swarm = gates.SwarmManager
		return s, nil
	}
	nodes := []swarm.Node{
		node("n1", "a-ok", swarm.NodeStateReady, swarm.NodeAvailabilityActive),
		node("n2", "b-full", swarm.NodeStateReady, swarm.NodeAvailabilityActive),
		node("n3", "c-down", swarm.NodeStateDown, swarm.NodeAvailabilityActive),
		node("n4", "d-drained", swarm.NodeStateReady, swarm.NodeAvailabilityDrain),
		node("n5", "e-nocard", swarm.NodeStateReady, swarm.NodeAvailabilityActive),
	}
	logs := map[string][]byte{"t1": cardLog(t, "pruned", 0, 2), "t2": cardLog(t, "pruned", 3, 1), "t5": []byte("panic: boom\n")}

	t.Run("every task ends", func(t *testing.T) {
		e := &fakeEngine{snapshot: manager, nodes: nodes, logs: logs}
		e.tasks = func(n int) []swarm.Task {
			if n == 1 { // the first look: still running
				return []swarm.Task{task("t1", "n1", swarm.TaskStateRunning, 0)}
			}
			return []swarm.Task{task("t1", "n1", swarm.TaskStateComplete, 0), task("t2", "n2", swarm.TaskStateFailed, 3), task("t5", "n5", swarm.TaskStateFailed, 2)}
		}
		rep, err := testRun(t, e, map[string]string{"fleet": "true", "fleet_image": "plugin:test"}).Execute(context.Background())
		if rep.ExitCode != outcome.ExitPolicy || err == nil || !strings.Contains(err.Error(), "b-full") {
			t.Fatalf("exit %d, %v; want 3 naming b-full", rep.ExitCode, err)
		}
		want := []report.NodeRow{
			{Node: "a-ok", Decision: "pruned", Objects: 2, Bytes: 1000, ExitCode: 0},
			{Node: "b-full", Decision: "pruned", Objects: 1, Bytes: 1000, ExitCode: 3},
			{Node: "c-down", ExitCode: 1, Problem: "node is down"},
			{Node: "d-drained", ExitCode: 1, Problem: "node is drain"},
			{Node: "e-nocard", ExitCode: 1, Problem: "its task (failed, exit 2) left no report: no card in its log"},
		}
		if got := withoutPhases(rep.Fleet.Nodes); !reflect.DeepEqual(got, want) {
			t.Errorf("rows\n%+v\nwant\n%+v", got, want)
		}
		if len(e.services) != 1 || e.services[0].Mode.GlobalJob == nil || e.services[0].TaskTemplate.ContainerSpec.Image != "plugin:test" || !slices.Equal(e.removed, []string{"job1"}) {
			t.Errorf("job %+v, removed %q; want one global job of plugin:test, removed", e.services, e.removed)
		}
		if n := count(e.Calls(), "Tasks"); n != 2 {
			t.Errorf("%d task listings, want 2 (one running, one ended)", n)
		}
	})

	t.Run("a task does not end in time", func(t *testing.T) {
		e := &fakeEngine{snapshot: manager, nodes: nodes[:1], logs: logs}
		e.tasks = func(int) []swarm.Task { return []swarm.Task{task("t1", "n1", swarm.TaskStateRunning, 0)} }
		rep, err := testRun(t, e, map[string]string{"fleet": "true", "fleet_image": "plugin:test", "timeout": "300ms"}).Execute(context.Background())
		if rep.ExitCode != outcome.ExitRuntime || err == nil {
			t.Fatalf("exit %d, %v; want 1", rep.ExitCode, err)
		}
		if got := rep.Fleet.Nodes; len(got) != 1 || !strings.HasPrefix(got[0].Problem, "its task was still running when the run stopped (timeout 300ms reached)") || got[0].ExitCode != 1 {
			t.Errorf("rows %+v; want a-ok's task reported as still running at the timeout", got)
		}
		if !slices.Equal(e.removed, []string{"job1"}) {
			t.Errorf("the job was not removed after the timeout: %q", e.removed)
		}
	})
}

// A node's card is taken from its followed log as soon as its run prints it: the run ends with
// every row filled while the swarm still reports the tasks running, without reading a whole log.
// A followed log that ends without a card leaves the node to its task's end.
func TestFleetReadsCardsAsPrinted(t *testing.T) {
	nodes := []swarm.Node{
		node("n1", "a-streamed", swarm.NodeStateReady, swarm.NodeAvailabilityActive),
		node("n2", "b-streamed", swarm.NodeStateReady, swarm.NodeAvailabilityActive),
	}
	noise := []byte("time=\"...\" level=info msg=\"measuring\"\n")
	e := &fakeEngine{snapshot: fleetManager, nodes: nodes, streams: map[string][]byte{
		"t1": append(slices.Clone(noise), cardLog(t, "pruned", 0, 2)...),
		"t2": cardLog(t, "pruned", 3, 1),
	}}
	e.tasks = func(int) []swarm.Task {
		return []swarm.Task{task("t1", "n1", swarm.TaskStateRunning, 0), task("t2", "n2", swarm.TaskStateStarting, 0)}
	}
	rep, err := testRun(t, e, map[string]string{"fleet": "true", "fleet_image": "plugin:test", "timeout": "10s"}).Execute(context.Background())
	if rep.ExitCode != outcome.ExitPolicy || err == nil || !strings.Contains(err.Error(), "b-streamed") {
		t.Fatalf("exit %d, %v; want 3 naming b-streamed (from its card, its task still starting)", rep.ExitCode, err)
	}
	want := []report.NodeRow{
		{Node: "a-streamed", Decision: "pruned", Objects: 2, Bytes: 1000, ExitCode: 0},
		{Node: "b-streamed", Decision: "pruned", Objects: 1, Bytes: 1000, ExitCode: 3},
	}
	if got := withoutPhases(rep.Fleet.Nodes); !reflect.DeepEqual(got, want) {
		t.Errorf("rows\n%+v\nwant\n%+v", got, want)
	}
	if n := count(e.Calls(), "FollowTaskStdout"); n != 2 || count(e.Calls(), "TaskStdout") != 0 {
		t.Errorf("calls %v: want each task's log followed once and no whole log read", e.Calls())
	}

	t.Run("a log that ends without a card", func(t *testing.T) {
		e := &fakeEngine{snapshot: fleetManager, nodes: nodes[:1], logs: map[string][]byte{"t1": cardLog(t, "pruned", 0, 2)},
			streams: map[string][]byte{"t1": noise}}
		e.tasks = func(n int) []swarm.Task {
			if n < 3 {
				return []swarm.Task{task("t1", "n1", swarm.TaskStateRunning, 0)}
			}
			return []swarm.Task{task("t1", "n1", swarm.TaskStateComplete, 0)}
		}
		rep, err := testRun(t, e, map[string]string{"fleet": "true", "fleet_image": "plugin:test", "timeout": "10s"}).Execute(context.Background())
		if err != nil || len(rep.Fleet.Nodes) != 1 || rep.Fleet.Nodes[0].Decision != "pruned" {
			t.Fatalf("%v, rows %+v; want a-streamed's card read once its task ended", err, rep.Fleet.Nodes)
		}
		if count(e.Calls(), "FollowTaskStdout") != 1 || count(e.Calls(), "TaskStdout") != 1 || count(e.Calls(), "Tasks") != 3 {
			t.Errorf("calls %v: want one follow, three looks, and the whole log read at the end", e.Calls())
		}
	})
}

// Right after a timeout each node's row says what became of its task: a node whose task had
// ended keeps its card, one whose task was under way says so, one that never got a task says it
// never ran. The run's error names the timeout.
func TestFleetTimeoutTexts(t *testing.T) {
	nodes := []swarm.Node{
		node("n1", "a-finished", swarm.NodeStateReady, swarm.NodeAvailabilityActive),
		node("n2", "b-running", swarm.NodeStateReady, swarm.NodeAvailabilityActive),
		node("n3", "c-never", swarm.NodeStateReady, swarm.NodeAvailabilityActive),
	}
	e := &fakeEngine{snapshot: fleetManager, nodes: nodes, logs: map[string][]byte{"t1": cardLog(t, "pruned", 0, 1)}}
	e.tasks = func(n int) []swarm.Task {
		if n == 1 {
			return []swarm.Task{task("t1", "n1", swarm.TaskStateRunning, 0), task("t2", "n2", swarm.TaskStateRunning, 0)}
		}
		return []swarm.Task{task("t1", "n1", swarm.TaskStateComplete, 0), task("t2", "n2", swarm.TaskStateRunning, 0)}
	}
	rep, err := testRun(t, e, map[string]string{"fleet": "true", "fleet_image": "plugin:test", "timeout": "300ms"}).Execute(context.Background())
	if rep.ExitCode != outcome.ExitRuntime || err == nil || !strings.Contains(err.Error(), "timeout 300ms reached") {
		t.Fatalf("exit %d, %v; want 1 naming the timeout", rep.ExitCode, err)
	}
	rows := map[string]report.NodeRow{}
	for _, r := range rep.Fleet.Nodes {
		rows[r.Node] = r
	}
	if r := rows["a-finished"]; r.Decision != "pruned" || r.Problem != "" || r.Objects != 1 || r.ExitCode != 0 {
		t.Errorf("a-finished: %+v; want its card (pruned, 1 object)", r)
	}
	if r := rows["b-running"]; !strings.HasPrefix(r.Problem, "its task was still running when the run stopped") || r.ExitCode != 1 {
		t.Errorf("b-running: %+v; want its task still running", r)
	}
	if r := rows["c-never"]; !strings.HasPrefix(r.Problem, "its task never ran") || r.ExitCode != 1 {
		t.Errorf("c-never: %+v; want its task never ran", r)
	}
}

// A node that cannot run the fleet image fails the run without waiting out the timeout: a task
// rejected before its container was made, one preparing with an error (a pull that fails), and one
// still preparing after FleetPrepareLimit, are each named with the image, the task's own message
// and the remedy, while a node that ran its task keeps its card.
func TestFleetImageNodesCannotRun(t *testing.T) {
	nodes := []swarm.Node{
		node("n1", "a-ok", swarm.NodeStateReady, swarm.NodeAvailabilityActive),
		node("n2", "b-rejected", swarm.NodeStateReady, swarm.NodeAvailabilityActive),
		node("n3", "c-preparing", swarm.NodeStateReady, swarm.NodeAvailabilityActive),
		node("n4", "d-pull-failing", swarm.NodeStateReady, swarm.NodeAvailabilityActive),
		node("n5", "e-bad-mount", swarm.NodeStateReady, swarm.NodeAvailabilityActive),
	}
	rejected := swarm.Task{ID: "t2", NodeID: "n2", Status: swarm.TaskStatus{State: swarm.TaskStateRejected, Message: "preparing",
		Err: "No such image: plugin:missing"}}
	preparing := swarm.Task{ID: "t3", NodeID: "n3", Status: swarm.TaskStatus{State: swarm.TaskStatePreparing, Message: "preparing"}}
	// As Docker 29 reports a pull that cannot reach a registry: preparing, with the pull's error.
	pullFailing := swarm.Task{ID: "t4", NodeID: "n4", Status: swarm.TaskStatus{State: swarm.TaskStatePreparing, Message: "preparing",
		Err: `failed to resolve reference "docker.io/library/plugin:missing": dial tcp: lookup registry-1.docker.io: network is unreachable`}}
	// Rejected for a reason other than the image: named with its message, not as an image problem.
	badMount := swarm.Task{ID: "t5", NodeID: "n5", Status: swarm.TaskStatus{State: swarm.TaskStateRejected,
		Err: `invalid mount config for type "bind": bind source path does not exist: /nowhere/docker.sock`}}
	e := &fakeEngine{snapshot: fleetManager, nodes: nodes, logs: map[string][]byte{"t1": cardLog(t, "pruned", 0, 1)}}
	e.tasks = func(int) []swarm.Task {
		return []swarm.Task{task("t1", "n1", swarm.TaskStateComplete, 0), rejected, preparing, pullFailing, badMount}
	}
	r := testRun(t, e, map[string]string{"fleet": "true", "fleet_image": "plugin:missing", "timeout": "1m"})
	r.FleetPrepareLimit = 200 * time.Millisecond
	start := time.Now()
	rep, err := r.Execute(context.Background())
	if took := time.Since(start); rep.ExitCode != outcome.ExitRuntime || err == nil || took > 30*time.Second {
		t.Fatalf("exit %d, %v after %s; want 1 well before the 1m timeout", rep.ExitCode, err, took)
	}
	for _, name := range []string{"b-rejected", "c-preparing", "d-pull-failing", "load the image on every node", "registry"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("the error does not name %s: %v", name, err)
		}
	}
	rows := map[string]report.NodeRow{}
	for _, row := range rep.Fleet.Nodes {
		rows[row.Node] = row
	}
	if row := rows["a-ok"]; row.Decision != "pruned" || row.ExitCode != 0 {
		t.Errorf("a-ok: %+v; want its card", row)
	}
	for name, says := range map[string]string{"b-rejected": "No such image: plugin:missing", "c-preparing": "still preparing after 200ms",
		"d-pull-failing": "could not get or start image plugin:missing: its task is preparing and failing (task status: failed to resolve reference"} {
		row := rows[name]
		for _, want := range []string{"plugin:missing", says} {
			if !strings.Contains(row.Problem, want) {
				t.Errorf("%s: %q lacks %q", name, row.Problem, want)
			}
		}
		if row.ExitCode != outcome.ExitRuntime {
			t.Errorf("%s: exit %d, want 1", name, row.ExitCode)
		}
	}
	if row := rows["e-bad-mount"]; row.Problem != `its task is rejected before its container was made (task status: invalid mount config for type "bind": bind source path does not exist: /nowhere/docker.sock)` || row.ExitCode != 1 {
		t.Errorf("e-bad-mount: %+v; want its own message, not an image problem", row)
	}
	if count(e.Calls(), "TaskStdout") != 1 {
		t.Errorf("calls %v: want the log read of a-ok's task only", e.Calls())
	}
}

// A fleet dry run lists each node's plan: every object its phases would remove, under the node's
// name, in the rows (JSON summary and card) and in the text.
func TestFleetListsEachNodesPlan(t *testing.T) {
	nodes := []swarm.Node{
		node("n1", "a-one", swarm.NodeStateReady, swarm.NodeAvailabilityActive),
		node("n2", "b-two", swarm.NodeStateReady, swarm.NodeAvailabilityActive),
	}
	e := &fakeEngine{snapshot: fleetManager, nodes: nodes,
		logs: map[string][]byte{"t1": cardLog(t, report.DecisionDryRun, 0, 1), "t2": cardLog(t, report.DecisionDryRun, 0, 2)}}
	e.tasks = func(int) []swarm.Task {
		return []swarm.Task{task("t1", "n1", swarm.TaskStateComplete, 0), task("t2", "n2", swarm.TaskStateComplete, 0)}
	}
	rep, err := testRun(t, e, map[string]string{"fleet": "true", "fleet_image": "plugin:test", "dry_run": "true"}).Execute(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range rep.Fleet.Nodes {
		var ids []string
		for _, p := range row.Phases {
			for _, o := range p.Objects {
				ids = append(ids, o.ID)
			}
		}
		if want := map[string]int{"a-one": 1, "b-two": 2}[row.Node]; len(ids) != want || ids[0] != "sha256:img-1" {
			t.Errorf("%s: planned %q, want %d images from img-1", row.Node, ids, want)
		}
	}
	var b bytes.Buffer
	if err := report.WriteText(&b, rep); err != nil {
		t.Fatal(err)
	}
	text := b.String()
	_, underB, _ := strings.Cut(text, "\n  b-two:\n")
	if !strings.Contains(text, "\n  a-one:\n    images       would remove 1") || !strings.Contains(underB, "img-2") {
		t.Errorf("the text does not list each node's plan under its name:\n%s", text)
	}
}

// A stop that cuts a look at the tasks short leaves the answer before it: a node whose task was
// running then is reported as still running, not as never having run.
func TestFleetStopDuringALook(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	e := &fakeEngine{snapshot: fleetManager, nodes: []swarm.Node{node("n1", "a-running", swarm.NodeStateReady, swarm.NodeAvailabilityActive)}}
	e.tasks = func(int) []swarm.Task { return []swarm.Task{task("t1", "n1", swarm.TaskStateRunning, 0)} }
	e.tasksErr = func(n int) error {
		if n < 2 {
			return nil
		}
		// The second look is under way when the run is stopped.
		cancel(&outcome.StopCause{Reason: "received terminated"})
		return context.Canceled
	}
	rep, err := testRun(t, e, map[string]string{"fleet": "true", "fleet_image": "plugin:test"}).Execute(ctx)
	if rep.ExitCode != outcome.ExitRuntime || err == nil || !strings.Contains(err.Error(), "received terminated") {
		t.Fatalf("exit %d, %v; want 1 naming the signal", rep.ExitCode, err)
	}
	if got := rep.Fleet.Nodes; len(got) != 1 || !strings.HasPrefix(got[0].Problem, "its task was still running when the run stopped") {
		t.Errorf("rows %+v; want a-running's task still running", got)
	}
}
