package plugin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/swarm"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/engine"
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
	w, rows, err := r.fleetResults(ctx, id, image)
	rep.Fleet.Nodes = rows
	if err == nil {
		rep.Decision = report.DecisionFleet
		err = worstNode(rows)
	}
	if err != nil && w != nil && w.imageFailed {
		// The remedy, said once; the exit code stays the one err carries.
		err = fmt.Errorf("%w; for the nodes that could not run the fleet image: %s", err, fleetImageRemedy)
	}
	return err
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

// fleetPollFirst is the shortest interval between two looks at the job's tasks. The interval grows
// with the time already waited (a twentieth of it) up to Run.FleetPoll: a swarm runs a global job
// on a few nodes in about a second, its nodes ending some 100 ms apart, and a long wait should not
// be asked about twenty times a second.
const fleetPollFirst = 50 * time.Millisecond

// fleetPollAfter is the interval before the next look, waited has passed since the job was made.
func fleetPollAfter(waited, longest time.Duration) time.Duration {
	return min(longest, max(fleetPollFirst, waited/20))
}

// fleetWait is one wait for the job's tasks: a row per node, the nodes that can run a task, and
// the nodes whose row is final (the card of their ended task read, or the problem named).
type fleetWait struct {
	r        *Run
	image    string
	rows     map[string]*report.NodeRow
	eligible map[string]bool
	final    map[string]bool
	// imageFailed is set when a node could not get or start the image.
	imageFailed bool
	// followed are the tasks whose log is followed; cards brings the cards read that way.
	followed  map[string]bool
	cards     chan followedCard
	followers sync.WaitGroup
}

// followedCard is the card a node's followed log gave.
type followedCard struct {
	node string
	card report.CardData
}

// fleetResults waits for the job's task on every node that can run one, reading each node's card
// from its task's followed log as the node prints it (or from the whole log once the task ends, if
// the followed one gave none), until every eligible node's row is final or ctx ends. A node that is down or
// drained, whose task left no card, could not start (the image is missing there, for one) or is
// still short of running after FleetPrepareLimit, gets a row that names the problem and exit code 1.
func (r *Run) fleetResults(ctx context.Context, serviceID, image string) (*fleetWait, []report.NodeRow, error) {
	nodes, err := r.Engine.Nodes(ctx)
	if err != nil {
		return nil, nil, err
	}
	w := &fleetWait{r: r, image: image, final: map[string]bool{}, followed: map[string]bool{}, cards: make(chan followedCard)}
	w.rows, w.eligible = nodeRows(nodes)
	// The followed logs end with the wait, whichever way it ends.
	fctx, stopFollowing := context.WithCancel(ctx)
	defer w.followers.Wait()
	defer stopFollowing()
	start := time.Now()
	// last is the latest answer: a look the stop cuts short leaves the one before it.
	var last []swarm.Task
	for {
		tasks, err := r.Engine.Tasks(ctx, serviceID)
		if err != nil {
			if ctx.Err() != nil {
				rows, err := w.timedOut(ctx, last)
				return w, rows, err
			}
			return w, sortedRows(w.rows), err
		}
		last = tasks
		for _, t := range tasks {
			w.look(ctx, t, time.Since(start))
			w.follow(fctx, t)
		}
		if w.done() {
			return w, sortedRows(w.rows), nil
		}
		next := time.After(fleetPollAfter(time.Since(start), r.FleetPoll))
	wait:
		for {
			select {
			case <-ctx.Done():
				rows, err := w.timedOut(ctx, last)
				return w, rows, err
			case c := <-w.cards:
				w.take(c)
				if w.done() {
					return w, sortedRows(w.rows), nil
				}
			case <-next:
				break wait
			}
		}
	}
}

// follow starts reading the log of a task that is on a node and has not ended, so that the node's
// card is read as soon as its run prints it, before the swarm records the task as ended. A log
// that ends or fails without a card changes nothing: the task's end, seen by look, decides.
func (w *fleetWait) follow(ctx context.Context, t swarm.Task) {
	if w.rows[t.NodeID] == nil || w.final[t.NodeID] || w.followed[t.ID] || terminalTask(t.Status.State) {
		return
	}
	w.followed[t.ID] = true
	w.followers.Add(1)
	go func() {
		defer w.followers.Done()
		var got *followedCard
		_ = w.r.Engine.TaskStdoutLines(ctx, t.ID, true, func(line []byte) bool {
			card, ok, err := report.CardLine(line)
			if ok && err == nil {
				got = &followedCard{node: t.NodeID, card: card}
			}
			return ok
		})
		if got == nil {
			return
		}
		select {
		case w.cards <- *got:
		case <-ctx.Done():
		}
	}()
}

// take fills a node's row from the card its followed log gave (a card that cannot be read is not
// sent: it is left to the task's end, when look reads the whole log).
func (w *fleetWait) take(c followedCard) {
	row := w.rows[c.node]
	if row == nil || w.final[c.node] {
		return
	}
	fillRow(row, c.card)
	w.final[c.node] = true
}

// look reads one task: the card of a task that has ended, or the problem of one that could not
// start, whose status carries an error before it runs, or that is still short of running after
// FleetPrepareLimit.
func (w *fleetWait) look(ctx context.Context, t swarm.Task, waited time.Duration) {
	row := w.rows[t.NodeID]
	if row == nil || w.final[t.NodeID] || ctx.Err() != nil {
		return // once the run is stopped, timedOut reads what is left
	}
	switch {
	case terminalTask(t.Status.State):
		w.readCard(ctx, row, t)
	case beforeStart(t.Status.State) && t.Status.Err != "":
		// The node tried and failed, and keeps retrying: Docker 29 leaves a task whose image pull
		// fails preparing, with the pull's error, for as long as the job lasts.
		row.ExitCode = outcome.ExitRuntime
		row.Problem = fmt.Sprintf("its task is %s and failing (task status: %s)", t.Status.State, t.Status.Err)
		if imageTrouble(t.Status.Err, w.image) {
			row.Problem = fmt.Sprintf("could not get or start image %s: %s", w.image, row.Problem)
			w.imageFailed = true
		}
	case beforeStart(t.Status.State) && waited >= w.r.FleetPrepareLimit:
		row.ExitCode = outcome.ExitRuntime
		row.Problem = fmt.Sprintf("could not get or start image %s: its task is still %s after %s (task status: %s)",
			w.image, t.Status.State, w.r.FleetPrepareLimit, taskStatusText(t))
		w.imageFailed = true
	default:
		return
	}
	w.final[t.NodeID] = true
}

// fleetImageRemedy is what an operator does about a fleet image a node cannot run; the run's error
// says it once after the nodes it concerns.
const fleetImageRemedy = "load the image on every node (docker load), or set fleet_image to an image in a registry every node can pull from (with registry auth for a private one)"

// readCard fills a node's row from the card its ended task printed. A task that ended without
// starting its container (rejected: no such image, for one) is named with the task's own message,
// and with the image when that message is about it.
func (w *fleetWait) readCard(ctx context.Context, row *report.NodeRow, t swarm.Task) {
	if !taskStarted(t) {
		row.ExitCode = outcome.ExitRuntime
		row.Problem = fmt.Sprintf("its task is %s before its container was made (task status: %s)", t.Status.State, taskStatusText(t))
		if imageTrouble(t.Status.Err, w.image) {
			row.Problem = fmt.Sprintf("could not start image %s: %s", w.image, row.Problem)
			w.imageFailed = true
		}
		return
	}
	var card report.CardData
	var cardErr error
	err := w.r.Engine.TaskStdoutLines(ctx, t.ID, false, func(line []byte) bool {
		var ok bool
		card, ok, cardErr = report.CardLine(line)
		return ok
	})
	switch {
	case err == nil && cardErr == nil:
		fillRow(row, card)
		return
	case errors.Is(err, engine.ErrLogEnded):
		cardErr = errors.New("no card in its log")
	case err != nil:
		row.ExitCode, row.Problem = outcome.ExitRuntime, err.Error()
		return
	}
	row.ExitCode = outcome.ExitRuntime
	row.Problem = fmt.Sprintf("its task (%s, exit %d) left no report: %v", t.Status.State, taskExit(t), cardErr)
}

// done reports whether every eligible node's row is final.
func (w *fleetWait) done() bool {
	for id := range w.eligible {
		if !w.final[id] {
			return false
		}
	}
	return true
}

// fleetReadGrace is how long the cards of tasks that ended before the run's timeout may still be
// read once it has passed.
const fleetReadGrace = 3 * time.Second

// timedOut is the rows when the run's timeout (or a signal) ends the wait: a node whose task had
// ended keeps its card (read now, within fleetReadGrace, if it was not yet), one whose task was
// still under way or never came says so.
func (w *fleetWait) timedOut(ctx context.Context, tasks []swarm.Task) ([]report.NodeRow, error) {
	grace, cancel := context.WithTimeout(context.WithoutCancel(ctx), fleetReadGrace)
	defer cancel()
	seen := map[string]bool{}
	for _, t := range tasks {
		row := w.rows[t.NodeID]
		if row == nil || w.final[t.NodeID] {
			continue
		}
		seen[t.NodeID] = true
		if terminalTask(t.Status.State) {
			w.readCard(grace, row, t)
			continue
		}
		row.ExitCode = outcome.ExitRuntime
		row.Problem = fmt.Sprintf("its task was still %s when the run stopped (%v)", t.Status.State, context.Cause(ctx))
	}
	for id := range w.eligible {
		if !w.final[id] && !seen[id] {
			w.rows[id].Problem = fmt.Sprintf("its task never ran: none was scheduled on it before the run stopped (%v)", context.Cause(ctx))
		}
	}
	return sortedRows(w.rows), stopped(ctx, "while waiting for the nodes' tasks")
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
	row.Phases = card.Phases
}

// beforeStart reports whether a task is still on its way to running: scheduled, getting its image,
// or being created.
func beforeStart(s swarm.TaskState) bool {
	switch s {
	case swarm.TaskStateNew, swarm.TaskStateAllocated, swarm.TaskStatePending, swarm.TaskStateAssigned,
		swarm.TaskStateAccepted, swarm.TaskStatePreparing, swarm.TaskStateReady, swarm.TaskStateStarting:
		return true
	}
	return false
}

// taskStarted reports whether a task's container was made: one that was not never printed a card.
func taskStarted(t swarm.Task) bool {
	return t.Status.ContainerStatus != nil && t.Status.ContainerStatus.ContainerID != ""
}

// imageTrouble reports whether a task's error is about its image: it names the image, or says
// the node has no such image.
func imageTrouble(taskErr, image string) bool {
	return strings.Contains(taskErr, image) || strings.Contains(strings.ToLower(taskErr), "no such image")
}

// taskStatusText is the task's own account of its state: its error, else its message.
func taskStatusText(t swarm.Task) string {
	if t.Status.Err != "" {
		return t.Status.Err
	}
	if t.Status.Message != "" {
		return t.Status.Message
	}
	return string(t.Status.State)
}

// terminalTask reports whether a task has ended, one way or another.
func terminalTask(s swarm.TaskState) bool {
	switch s {
	case swarm.TaskStateComplete, swarm.TaskStateFailed, swarm.TaskStateRejected, swarm.TaskStateShutdown, swarm.TaskStateOrphaned:
		return true
	}
	return false
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
