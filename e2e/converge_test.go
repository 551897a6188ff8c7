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
