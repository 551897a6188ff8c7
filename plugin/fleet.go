package plugin

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/swarm"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// FleetService is the name of the global job a fleet run creates; one name per swarm is what keeps
// two fleet runs from overlapping.
const FleetService = "drone-gated-prune-fleet"

// runFleet is a fleet run on a swarm manager: the cluster-wide gates judged here, then the plugin
// run on every node as a global job with the same settings (less the fleet ones), each node
// judging its own disk and containers, and one report with a row per node. Its error carries the
// worst node's exit code.
func (r *Run) runFleet(ctx context.Context, rep *report.Report) error {
	snap, err := r.Engine.Snapshot(ctx)
	if err != nil {
		return err
	}
	rep.APIVersion = snap.APIVersion
	if snap.Workload.Swarm != gates.SwarmManager {
		return &SettingError{Key: "fleet", Value: "true", Accepted: fmt.Sprintf("a run on a swarm manager (this engine is %s)", snap.Workload.Swarm)}
	}
	// The cluster-wide gates: services and stacks, seen from here; containers are each node's.
	snap, closed, err := r.waitForGates(ctx, rep, clusterOnly)
	if err != nil {
		return err
	}
	if len(closed) > 0 {
		rep.Decision = "skipped: " + strings.Join(closed, ", ")
		return nil
	}
	image, err := r.fleetImage(ctx)
	if err != nil {
		return err
	}
	rep.Fleet = &report.FleetReport{Service: FleetService, Image: image}
	id, err := r.Engine.CreateService(ctx, r.fleetSpec(image))
	if err != nil {
		return err
	}
	defer func() {
		if err := r.Engine.RemoveService(context.WithoutCancel(ctx), id); err != nil {
			r.Log.WithError(err).Warn("removing the fleet job")
		}
	}()
	rows, err := r.fleetResults(ctx, id)
	rep.Fleet.Nodes = rows
	if err != nil {
		return err
	}
	rep.Decision = report.DecisionFleet
	return worstNode(rows)
}

// clusterOnly keeps what the manager judges for the whole swarm: its services (and their stacks).
func clusterOnly(w gates.Workload) gates.Workload {
	return gates.Workload{Swarm: w.Swarm, Services: w.Services, Self: w.Self}
}

// fleetImage is the image the nodes run: the fleet_image setting when given, else the image this
// plugin's own container runs (found by its hostname, the container ID's prefix).
func (r *Run) fleetImage(ctx context.Context) (string, error) {
	if r.Config.FleetImage != "" {
		return r.Config.FleetImage, nil
	}
	self, _ := os.Hostname()
	image, err := r.Engine.ContainerImage(ctx, self)
	if err != nil || image == "" {
		return "", &SettingError{Key: "fleet_image", Value: "",
			Accepted: "the plugin image to run on every node: this run is not in a container of this engine (" + self + "), so set fleet_image"}
	}
	return image, nil
}

// fleetSpec is the global job: the plugin image with the settings as given, less the fleet ones
// and the output files (paths here mean nothing on the nodes), the CI identity so that each node
// applies the same run-label default and ignores this build, a card on stdout as the report
// channel, and the node's Docker socket.
func (r *Run) fleetSpec(image string) swarm.ServiceSpec {
	var env []string
	for _, key := range slices.Sorted(maps.Keys(r.Config.Raw)) {
		switch key {
		case "fleet", "fleet_image", "fleet_socket", "summary_file", "metrics_file", "env_file":
			continue
		}
		env = append(env, EnvName(key)+"="+r.Config.Raw[key])
	}
	for _, k := range ciIdentity {
		if v := r.Config.CI.Environ[k]; v != "" {
			env = append(env, k+"="+v)
		}
	}
	env = append(env, "DRONE_CARD_PATH=/dev/stdout")
	return swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: FleetService, Labels: map[string]string{KeepLabel: "fleet"}},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{
				Image:  image,
				Env:    env,
				Labels: map[string]string{KeepLabel: "fleet"},
				Mounts: []mount.Mount{{Type: mount.TypeBind, Source: r.Config.FleetSocket, Target: "/var/run/docker.sock"}},
			},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
		},
		Mode: swarm.ServiceMode{GlobalJob: &swarm.GlobalJob{}},
	}
}

// worstNode is the fleet's outcome: the worst node's exit code (3 over 1 over 0; any other failure
// counts as 1), as an error naming the nodes that gave it.
func worstNode(rows []report.NodeRow) error {
	worst := outcome.ExitOK
	for i, n := range rows {
		switch {
		case n.ExitCode == outcome.ExitPolicy:
			worst = outcome.ExitPolicy
		case n.ExitCode != outcome.ExitOK:
			rows[i].ExitCode = outcome.ExitRuntime
			if worst == outcome.ExitOK {
				worst = outcome.ExitRuntime
			}
		}
	}
	if worst == outcome.ExitOK {
		return nil
	}
	var names []string
	for _, n := range rows {
		if n.ExitCode == worst {
			why := n.Problem
			if why == "" {
				why = n.Decision
			}
			names = append(names, n.Node+" ("+why+")")
		}
	}
	if worst == outcome.ExitPolicy {
		return &outcome.PolicyError{Reason: "on node(s) " + strings.Join(names, ", ") + ": the disk is still at or above fail_above"}
	}
	return &outcome.RuntimeError{What: "the fleet run", Err: fmt.Errorf("node(s) %s exited %d", strings.Join(names, ", "), worst)}
}

// fleetResults waits, asking every FleetPoll until ctx ends, for the job's task on every node
// that can run one, then reads each ended task's card from its log. A node that is down or
// drained, or whose task did not end in time or left no card, gets a row that names the problem
// and exit code 1.
func (r *Run) fleetResults(ctx context.Context, serviceID string) ([]report.NodeRow, error) {
	nodes, err := r.Engine.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	rows, eligible := nodeRows(nodes)
	var tasks []swarm.Task
	for {
		if tasks, err = r.Engine.Tasks(ctx, serviceID); err != nil {
			return sortedRows(rows), err
		}
		if allEnded(tasks, eligible) {
			break
		}
		select {
		case <-ctx.Done():
			for _, t := range tasks {
				if row := rows[t.NodeID]; row != nil && !terminalTask(t.Status.State) {
					row.Problem = "its task did not end in time (" + string(t.Status.State) + ")"
				}
			}
			return sortedRows(rows), nil
		case <-time.After(r.FleetPoll):
		}
	}
	for _, t := range tasks {
		row := rows[t.NodeID]
		if row == nil || !terminalTask(t.Status.State) {
			continue
		}
		log, err := r.Engine.TaskStdout(ctx, t.ID)
		if err == nil {
			var card report.CardData
			if card, err = report.ReadCard(log); err == nil {
				fillRow(row, card)
				continue
			}
			err = fmt.Errorf("its task (%s, exit %d) left no report: %w", t.Status.State, taskExit(t), err)
		}
		row.ExitCode, row.Problem = outcome.ExitRuntime, err.Error()
	}
	return sortedRows(rows), nil
}

// nodeRows is a row per node, each exit code 1 and its problem until its task's card says
// otherwise, and the nodes that can run a task: ready and active.
func nodeRows(nodes []swarm.Node) (rows map[string]*report.NodeRow, eligible map[string]bool) {
	rows, eligible = map[string]*report.NodeRow{}, map[string]bool{}
	for _, n := range nodes {
		row := &report.NodeRow{Node: n.Description.Hostname, ExitCode: outcome.ExitRuntime}
		switch {
		case n.Status.State != swarm.NodeStateReady:
			row.Problem = "node is " + string(n.Status.State)
		case n.Spec.Availability != swarm.NodeAvailabilityActive:
			row.Problem = "node is " + string(n.Spec.Availability)
		default:
			eligible[n.ID] = true
			row.Problem = "its task never ran"
		}
		rows[n.ID] = row
	}
	return rows, eligible
}

// fillRow is a node's row from the card its run printed.
func fillRow(row *report.NodeRow, card report.CardData) {
	row.Problem = ""
	row.Decision, row.DiskBefore, row.DiskAfter = card.Decision, card.DiskBefore, card.DiskAfter
	row.Objects, row.Bytes, row.ExitCode = card.Objects, card.ReclaimedBytes, card.ExitCode
}

// terminalTask reports whether a task has ended, one way or another.
func terminalTask(s swarm.TaskState) bool {
	switch s {
	case swarm.TaskStateComplete, swarm.TaskStateFailed, swarm.TaskStateRejected, swarm.TaskStateShutdown, swarm.TaskStateOrphaned:
		return true
	}
	return false
}

// allEnded reports whether every eligible node has a task and every task has ended.
func allEnded(tasks []swarm.Task, eligible map[string]bool) bool {
	seen := map[string]bool{}
	for _, t := range tasks {
		if !terminalTask(t.Status.State) {
			return false
		}
		seen[t.NodeID] = true
	}
	for id := range eligible {
		if !seen[id] {
			return false
		}
	}
	return true
}

func taskExit(t swarm.Task) int {
	if t.Status.ContainerStatus != nil {
		return t.Status.ContainerStatus.ExitCode
	}
	return -1
}

func sortedRows(rows map[string]*report.NodeRow) []report.NodeRow {
	out := make([]report.NodeRow, 0, len(rows))
	for _, r := range rows {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}
