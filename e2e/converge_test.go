package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// taskStates counts the tasks of a service by state.
func taskStates(t *testing.T, serviceID string) map[swarm.TaskState]int {
	t.Helper()
	tasks, err := harness.API.TaskList(harness.Ctx(), swarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", serviceID))})
	harness.Must(t, err)
	out := map[swarm.TaskState]int{}
	for _, task := range tasks {
		out[task.Status.State]++
	}
	return out
}

// A job whose task has completed is not converging: the gate stays open. Proves SPEC "The run" 4
// (finished jobs); the gate's rule alone is TestUnconverged.
func TestFinishedJobIsNotConverging(t *testing.T) {
	name := "dgp-job-" + fixtures.RandomHex(4)
	one := uint64(1)
	id := makeService(t, serviceSpec{name: name, cmd: []string{"/sleeper", "done"},
		mode: &swarm.ServiceMode{ReplicatedJob: &swarm.ReplicatedJob{MaxConcurrent: &one, TotalCompletions: &one}}})
	if !harness.WaitFor(t, 60*time.Second, "job "+name+"'s task completes", func() (bool, error) {
		return taskStates(t, id)[swarm.TaskStateComplete] == 1, nil
	}) {
		t.FailNow()
	}
	r := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_DRY_RUN": "true"})
	v, _ := r.report.Gate(gates.NoConvergeGate)
	if r.code != 0 || r.report.Decision != report.DecisionDryRun || !v.Open {
		t.Fatalf("exit %d, decision %q, no_converge open %v (%s %v); want a dry run with the gate open", r.code, r.report.Decision, v.Open, v.Reason, v.Evidence)
	}
}

// A service in the middle of a rolling update holds the no-converge gate, and the summary says
// so, even while all its tasks run. The update waits an hour between its two tasks, so it stays
// "updating" for the test.
func TestServiceUpdatingSkips(t *testing.T) {
	name := "dgp-updating-" + fixtures.RandomHex(4)
	id := makeService(t, serviceSpec{name: name, replicas: 2,
		update: &swarm.UpdateConfig{Parallelism: 1, Delay: time.Hour, Order: swarm.UpdateOrderStartFirst}})
	if !harness.WaitFor(t, 60*time.Second, "service "+name+" runs 2 tasks", func() (bool, error) {
		return taskStates(t, id)[swarm.TaskStateRunning] == 2, nil
	}) {
		t.FailNow()
	}
	svc, _, err := harness.API.ServiceInspectWithRaw(harness.Ctx(), id, swarm.ServiceInspectOptions{})
	harness.Must(t, err)
	spec := svc.Spec
	spec.TaskTemplate.ContainerSpec.Env = append(spec.TaskTemplate.ContainerSpec.Env, "DGP_UPDATE=1")
	_, err = harness.API.ServiceUpdate(harness.Ctx(), id, svc.Version, spec, swarm.ServiceUpdateOptions{})
	harness.Must(t, err)
	if !harness.WaitFor(t, 60*time.Second, "service "+name+" is updating", func() (bool, error) {
		s, _, err := harness.API.ServiceInspectWithRaw(harness.Ctx(), id, swarm.ServiceInspectOptions{})
		return err == nil && s.UpdateStatus != nil && s.UpdateStatus.State == swarm.UpdateStateUpdating, err
	}) {
		t.FailNow()
	}
	r := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_DRY_RUN": "true"})
	if r.code != 0 || r.report.Decision != "skipped: "+gates.NoConvergeGate || !strings.Contains(r.stdout, "service "+name+" is updating") {
		t.Fatalf("exit %d, decision %q; want skipped by no_converge naming %s as updating\n%s", r.code, r.report.Decision, name, r.stdout)
	}
}

// failedTaskContainers lists the containers of a service's tasks that failed.
func failedTaskContainers(t *testing.T, service string) (failed []string, unended int) {
	t.Helper()
	tasks, err := harness.API.TaskList(harness.Ctx(), swarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", service))})
	harness.Must(t, err)
	for _, tk := range tasks {
		switch tk.Status.State {
		case swarm.TaskStateFailed:
			if tk.Status.ContainerStatus != nil && tk.Status.ContainerStatus.ContainerID != "" {
				failed = append(failed, tk.Status.ContainerStatus.ContainerID)
			}
		case swarm.TaskStateComplete, swarm.TaskStateShutdown, swarm.TaskStateRejected, swarm.TaskStateOrphaned, swarm.TaskStateRemove:
		default:
			unended++
		}
	}
	return failed, unended
}

// A crash-looping service (restart on failure, its task fails after 1.5 s) holds the no-converge
// gate across the loop, while a replacement runs (its task count met) and between tasks, and its
// failed task containers, old enough to be pruned, are kept. Proves SPEC "The run" 4 (a service that
// restarted a failed task recently); docs/spec.md defines the window.
func TestCrashLoopHoldsGate(t *testing.T) {
	delay := 200 * time.Millisecond
	name := "dgp-loop-" + fixtures.RandomHex(3)
	id := makeService(t, serviceSpec{name: name, replicas: 1, cmd: []string{"/sleeper", "exit-after", "1500ms"},
		restart: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionOnFailure, Delay: &delay}})
	var failed []string
	if !harness.WaitFor(t, 90*time.Second, "two tasks of "+name+" failed", func() (bool, error) {
		failed, _ = failedTaskContainers(t, id)
		return len(failed) >= 2, nil
	}) {
		t.FailNow()
	}
	cutoff := harness.WaitPastCutoff()
	running := 0 // runs that saw the replacement running: the moment a task count alone reads converged
	for i := range 6 {
		r := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": harness.RFC3339(cutoff), "PLUGIN_FAIL_ABOVE": "100"})
		v, _ := r.report.Gate(gates.NoConvergeGate)
		if r.code != 0 || r.report.Decision != "skipped: "+gates.NoConvergeGate || !strings.Contains(strings.Join(v.Evidence, "\n"), "service "+name+" restarted a failed task") {
			t.Errorf("run %d: exit %d decision %q, no_converge %s %q; want the gate closed by %s's crash loop", i, r.code, r.report.Decision, v.Reason, v.Evidence, name)
		}
		if strings.Contains(strings.Join(v.Evidence, "\n"), "(1/1 running)") {
			running++
		}
		time.Sleep(400 * time.Millisecond)
	}
	if running == 0 {
		t.Errorf("no run saw a replacement task running; the loop was never at its task count")
	}
	for _, c := range failed {
		if !harness.Exists(t, "container", c) {
			t.Errorf("the failed task container %s of the crash-looping service was removed", c)
		}
	}
}

// A service whose restart attempts are spent is reported as not converging on its own and does
// not hold the gate. Proves SPEC "The run" 4 (a spent restart limit).
func TestSpentRestartLimitHoldsNothing(t *testing.T) {
	delay, attempts := 200*time.Millisecond, uint64(1)
	name := "dgp-spent-" + fixtures.RandomHex(3)
	id := makeService(t, serviceSpec{name: name, replicas: 1, cmd: []string{"/sleeper", "exit"},
		restart: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionOnFailure, Delay: &delay, MaxAttempts: &attempts}})
	if !harness.WaitFor(t, 90*time.Second, "the swarm gave up restarting "+name, func() (bool, error) {
		failed, unended := failedTaskContainers(t, id)
		return len(failed) >= 2 && unended == 0, nil
	}) {
		t.FailNow()
	}
	r := runPlugin(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_DRY_RUN": "true", "PLUGIN_FAIL_ABOVE": "100"})
	v, _ := r.report.Gate(gates.NoConvergeGate)
	if r.code != 0 || !v.Open || !strings.Contains(strings.Join(v.Warnings, "\n"), "service "+name+" will not converge on its own: 2 failed task(s), restart limit reached") {
		t.Fatalf("exit %d, no_converge open %v %s, evidence %q warnings %q; want it open, saying %s will not converge on its own", r.code, v.Open, v.Reason, v.Evidence, v.Warnings, name)
	}
}
