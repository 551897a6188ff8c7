package plugin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
)

// FleetService is the name of the global job a fleet run creates; one name per swarm is what keeps
// two fleet runs from overlapping.
const FleetService = "drone-gated-prune-fleet"

// FleetReport is a fleet run: the job it ran and one row per node.
type FleetReport struct {
	Service string    `json:"service"`
	Image   string    `json:"image"`
	Nodes   []NodeRow `json:"nodes"`
}

// NodeRow is one node's part of a fleet run, from the card its task printed.
type NodeRow struct {
	Node       string `json:"node"`
	Decision   string `json:"decision"`
	DiskBefore string `json:"disk_before,omitempty"`
	DiskAfter  string `json:"disk_after,omitempty"`
	Objects    int    `json:"objects"`
	Bytes      uint64 `json:"bytes"`
	ExitCode   int    `json:"exit_code"`
	// Problem says why a node has no result: down, drained, its task never ran or left no report.
	Problem string `json:"problem,omitempty"`
}

// runFleet is a fleet run on a swarm manager: the cluster-wide gates judged here, then the plugin
// run on every node as a global job with the same settings (less the fleet ones), each node
// judging its own disk and containers, and one report with a row per node. Its error carries the
// worst node's exit code.
func (r *Run) runFleet(ctx context.Context, rep *Report) error {
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
	rep.Fleet = &FleetReport{Service: FleetService, Image: image}
	id, err := r.Engine.CreateFleetJob(ctx, r.fleetSpec(image))
	if err != nil {
		return err
	}
	defer func() {
		if err := r.Engine.RemoveService(context.WithoutCancel(ctx), id); err != nil {
			r.Log.WithError(err).Warn("removing the fleet job")
		}
	}()
	rows, err := r.Engine.FleetResults(ctx, id, 2*time.Second)
	rep.Fleet.Nodes = rows
	if err != nil {
		return err
	}
	rep.Decision = DecisionFleet
	return worstNode(rows)
}

// clusterOnly keeps what the manager judges for the whole swarm: its services (and their stacks).
func clusterOnly(w gates.Workload) gates.Workload {
	return gates.Workload{Swarm: w.Swarm, Services: w.Services, Self: w.Self}
}

// fleetImage is the image the nodes run: the one this plugin's container runs (found by its
// hostname, the container ID's prefix), else the fleet_image setting.
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
func worstNode(rows []NodeRow) error {
	worst := ExitOK
	for i, n := range rows {
		switch {
		case n.ExitCode == ExitPolicy:
			worst = ExitPolicy
		case n.ExitCode != ExitOK:
			rows[i].ExitCode = ExitRuntime
			if worst == ExitOK {
				worst = ExitRuntime
			}
		}
	}
	if worst == ExitOK {
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
	if worst == ExitPolicy {
		return &PolicyError{Reason: "on node(s) " + strings.Join(names, ", ") + ": the disk is still at or above fail_above"}
	}
	return &RuntimeError{What: "the fleet run", Err: fmt.Errorf("node(s) %s exited %d", strings.Join(names, ", "), worst)}
}

// CreateFleetJob creates the global job (POST /services/create). A job of that name already there
// is another fleet run in flight: refused, never overlapped.
func (e *Engine) CreateFleetJob(ctx context.Context, spec swarm.ServiceSpec) (string, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	resp, err := e.api.ServiceCreate(ctx, spec, swarm.ServiceCreateOptions{})
	if cerrdefs.IsConflict(err) || (err != nil && strings.Contains(err.Error(), "already exists")) {
		return "", &RuntimeError{What: "starting the fleet run", Err: fmt.Errorf("service %s exists: another fleet run is in flight on this swarm (remove the service if it is left over)", spec.Name)}
	}
	if err != nil {
		return "", e.failed("creating the fleet job (POST /services/create)", err)
	}
	return resp.ID, nil
}

// RemoveService removes a service (DELETE /services/{id}).
func (e *Engine) RemoveService(ctx context.Context, id string) error {
	ctx, cancel := e.query(ctx)
	defer cancel()
	return e.api.ServiceRemove(ctx, id)
}

// ContainerImage is the image reference a container was created from, or "" when there is no such
// container on this engine.
func (e *Engine) ContainerImage(ctx context.Context, id string) (string, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	c, err := e.api.ContainerInspect(ctx, id)
	if cerrdefs.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", e.failed("finding this plugin's own image (GET /containers/{id}/json)", err)
	}
	if c.Config == nil {
		return "", nil
	}
	return c.Config.Image, nil
}

// terminalTask reports whether a task has ended, one way or another.
func terminalTask(s swarm.TaskState) bool {
	switch s {
	case swarm.TaskStateComplete, swarm.TaskStateFailed, swarm.TaskStateRejected, swarm.TaskStateShutdown, swarm.TaskStateOrphaned:
		return true
	}
	return false
}

// FleetResults waits, polling every interval until ctx ends, for the job's task on every node
// that can run one, then reads each task's card from its log. A node that is down or drained, or
// whose task did not end in time, gets a row that names the problem and exit code 1.
func (e *Engine) FleetResults(ctx context.Context, serviceID string, interval time.Duration) ([]NodeRow, error) {
	qctx, cancel := e.query(ctx)
	nodes, err := e.api.NodeList(qctx, swarm.NodeListOptions{})
	cancel()
	if err != nil {
		return nil, e.failed("listing swarm nodes (GET /nodes)", err)
	}
	rows := map[string]*NodeRow{}
	eligible := map[string]bool{}
	for _, n := range nodes {
		row := &NodeRow{Node: n.Description.Hostname, ExitCode: ExitRuntime}
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
	var tasks []swarm.Task
	for {
		qctx, cancel := e.query(ctx)
		tasks, err = e.api.TaskList(qctx, swarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", serviceID))})
		cancel()
		if err != nil {
			return sortedRows(rows), e.failed("listing the fleet job's tasks (GET /tasks)", err)
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
		case <-time.After(interval):
		}
	}
	for _, t := range tasks {
		row := rows[t.NodeID]
		if row == nil || !terminalTask(t.Status.State) {
			continue
		}
		row.Problem = ""
		if err := e.readCard(ctx, t, row); err != nil {
			row.ExitCode, row.Problem = ExitRuntime, err.Error()
		}
	}
	return sortedRows(rows), nil
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

// readCard reads a finished task's log (GET /tasks/{id}/logs) and fills the row from the card
// the plugin printed there.
func (e *Engine) readCard(ctx context.Context, t swarm.Task, row *NodeRow) error {
	ctx, cancel := e.query(ctx)
	defer cancel()
	rc, err := e.api.TaskLogs(ctx, t.ID, container.LogsOptions{ShowStdout: true})
	if err != nil {
		return fmt.Errorf("reading its task's log: %w", err)
	}
	defer rc.Close()
	var stdout bytes.Buffer
	if _, err := stdcopy.StdCopy(&stdout, io.Discard, rc); err != nil {
		return fmt.Errorf("reading its task's log: %w", err)
	}
	data, err := findCard(stdout.Bytes())
	if err != nil {
		return fmt.Errorf("its task (%s, exit %d) left no report: %w", t.Status.State, taskExit(t), err)
	}
	row.Decision, row.DiskBefore, row.DiskAfter = data.Decision, data.DiskBefore, data.DiskAfter
	row.Objects, row.Bytes, row.ExitCode = data.Objects, data.ReclaimedBytes, data.ExitCode
	return nil
}

func taskExit(t swarm.Task) int {
	if t.Status.ContainerStatus != nil {
		return t.Status.ContainerStatus.ExitCode
	}
	return -1
}

// nodeCard is what a row needs of the card data a node's run printed (cardData).
type nodeCard struct {
	Decision       string `json:"decision"`
	DiskBefore     string `json:"disk_before"`
	DiskAfter      string `json:"disk_after"`
	Objects        int    `json:"objects"`
	ReclaimedBytes uint64 `json:"reclaimed_bytes"`
	ExitCode       int    `json:"exit_code"`
}

// findCard finds the card line (ESC]1338; base64 JSON ESC]0m) in a log.
func findCard(log []byte) (nodeCard, error) {
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		start := strings.Index(line, cardPrefix)
		if start < 0 {
			continue
		}
		encoded, _, _ := strings.Cut(line[start+len(cardPrefix):], cardSuffix)
		raw, err := base64.StdEncoding.DecodeString(encoded)
		if err != nil {
			return nodeCard{}, fmt.Errorf("its card is not base64: %w", err)
		}
		var card struct {
			Data nodeCard `json:"data"`
		}
		if err := json.Unmarshal(raw, &card); err != nil {
			return nodeCard{}, fmt.Errorf("its card is not JSON: %w", err)
		}
		return card.Data, nil
	}
	return nodeCard{}, fmt.Errorf("no card in its log")
}

func sortedRows(rows map[string]*NodeRow) []NodeRow {
	out := make([]NodeRow, 0, len(rows))
	for _, r := range rows {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}
