package engine

import (
	"context"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/system"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
)

// Snapshot is one look at what runs on the engine, with the daemon's clock at that moment.
type Snapshot struct {
	Workload   gates.Workload
	DaemonTime time.Time
	// LocalTime is this host's clock when the daemon's was read.
	LocalTime time.Time
	// APIVersion is the negotiated Engine API version.
	APIVersion string
	// Store is the engine's image store.
	Store Store
}

// infoReading is a GET /info answer and when it was read, on this host's clock.
type infoReading struct {
	info system.Info
	at   time.Time
}

// remember keeps an /info answer for the run's later snapshots.
func (e *Client) remember(info system.Info) {
	e.info = &infoReading{info: info, at: time.Now()}
}

// Snapshot asks the daemon for its clock and swarm role (GET /info, once a run: later snapshots,
// and the first after Store, reuse that answer, the daemon's clock moved on by the time passed
// here, as /info costs 10 to 30 ms on a busy engine and a run's role does not change under it; a
// demotion shows as GET /services answering 503), the swarm services with
// their task counts and their tasks that failed or have not ended (GET /services?status=true and
// GET /tasks, managers only) and the containers that can be live
// (GET /containers/json: created, running, paused, restarting; on a worker this includes the
// node's own task containers not yet started), each request with its own deadline. The number of
// calls does not grow with the number of objects.
func (e *Client) Snapshot(ctx context.Context) (Snapshot, error) {
	var s Snapshot
	if e.info == nil {
		qctx, cancel := e.query(ctx)
		info, err := e.api.Info(qctx)
		cancel()
		if err != nil {
			return s, e.failed("asking the daemon for its swarm state (GET /info)", err)
		}
		e.remember(info)
	}
	info := e.info.info
	s.APIVersion = e.api.ClientVersion()
	s.LocalTime = time.Now()
	daemonTime, err := time.Parse(time.RFC3339Nano, info.SystemTime)
	if err != nil {
		return s, &outcome.RuntimeError{What: "reading the daemon's clock from GET /info", Err: err}
	}
	s.DaemonTime = daemonTime.Add(s.LocalTime.Sub(e.info.at))
	s.Workload.Self = selfNames()
	s.Workload.Now = s.DaemonTime
	role, ok := swarmRole(info.Swarm)
	if !ok {
		// A swarm that cannot report on itself: the gates cannot be evaluated, so fail closed.
		return s, &outcome.RuntimeError{What: "reading the swarm state for the no-run and no-converge gates",
			Err: fmt.Errorf("this node's swarm state is %q %s", info.Swarm.LocalNodeState, info.Swarm.Error)}
	}
	s.Workload.Swarm = role
	s.Store = readStore(info, e.podman())
	if s.Workload.Swarm == gates.SwarmManager {
		services, err := e.services(ctx)
		switch {
		case cerrdefs.IsNotFound(err):
			// An engine without the swarm endpoints (Podman answers 404 or 503 there): not a swarm.
			s.Workload.Swarm = gates.SwarmNone
		case cerrdefs.IsUnavailable(err) && s.Store.Podman:
			s.Workload.Swarm = gates.SwarmNone
		case cerrdefs.IsUnavailable(err):
			// Demoted between the two calls: judge it as a worker.
			s.Workload.Swarm = gates.SwarmWorker
		case err != nil:
			return s, err
		default:
			s.Workload.Services = services
		}
	}
	s.Workload.Containers, err = e.liveContainers(ctx)
	return s, err
}

// swarmRole reads the node's role; false for a swarm it cannot report on (pending, locked, error).
func swarmRole(info swarm.Info) (gates.SwarmRole, bool) {
	switch info.LocalNodeState {
	case swarm.LocalNodeStateInactive, "":
		return gates.SwarmNone, true
	case swarm.LocalNodeStateActive:
		if info.ControlAvailable {
			return gates.SwarmManager, true
		}
		return gates.SwarmWorker, true
	}
	return "", false
}

// services lists swarm services with their running and desired task counts.
func (e *Client) services(ctx context.Context) ([]gates.Service, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	list, err := e.api.ServiceList(ctx, swarm.ServiceListOptions{Status: true})
	if cerrdefs.IsUnavailable(err) || cerrdefs.IsNotFound(err) {
		return nil, err
	}
	if err != nil {
		return nil, e.failed("listing swarm services for the no-run and no-converge gates (GET /services)", err)
	}
	out := make([]gates.Service, 0, len(list))
	for _, sv := range list {
		if sv.ServiceStatus == nil {
			// Engines below API 1.41 send no task counts: convergence cannot be judged.
			return nil, &outcome.RuntimeError{What: "listing swarm services for the no-converge gate (GET /services?status=true)",
				Err: fmt.Errorf("the daemon reported no task counts for service %s (API %s)", sv.Spec.Name, e.api.ClientVersion())}
		}
		g := gates.Service{ID: sv.ID, Name: sv.Spec.Name, Stack: sv.Spec.Labels[gates.StackNamespaceLabel], Mode: serviceMode(sv.Spec.Mode),
			Running: sv.ServiceStatus.RunningTasks, Desired: sv.ServiceStatus.DesiredTasks}
		if sv.UpdateStatus != nil {
			g.UpdateState = string(sv.UpdateStatus.State)
		}
		if rp := sv.Spec.TaskTemplate.RestartPolicy; rp != nil {
			g.NoRestart = rp.Condition == swarm.RestartPolicyConditionNone
			if rp.MaxAttempts != nil {
				g.RestartLimit = *rp.MaxAttempts
			}
		}
		out = append(out, g)
	}
	if len(out) == 0 {
		return out, nil
	}
	return out, e.taskHistory(ctx, out)
}

// taskHistory adds to each service its failed tasks and the number of its tasks not yet ended
// (GET /tasks, every task the swarm keeps: one request).
func (e *Client) taskHistory(ctx context.Context, services []gates.Service) error {
	ctx, cancel := e.query(ctx)
	defer cancel()
	tasks, err := e.api.TaskList(ctx, swarm.TaskListOptions{})
	if cerrdefs.IsUnavailable(err) {
		return err // demoted meanwhile: Snapshot judges it as a worker
	}
	if err != nil {
		return e.failed("listing swarm tasks for the no-converge gate (GET /tasks)", err)
	}
	byID := map[string]*gates.Service{}
	for i := range services {
		byID[services[i].ID] = &services[i]
	}
	for _, t := range tasks {
		s := byID[t.ServiceID]
		if s == nil {
			continue
		}
		switch t.Status.State {
		case swarm.TaskStateFailed, swarm.TaskStateRejected:
			f := gates.FailedTask{ID: t.ID, At: t.Status.Timestamp, Message: t.Status.Err}
			if t.Status.ContainerStatus != nil {
				f.Exit = t.Status.ContainerStatus.ExitCode
			}
			s.FailedTasks = append(s.FailedTasks, f)
		case swarm.TaskStateComplete, swarm.TaskStateShutdown, swarm.TaskStateOrphaned, swarm.TaskStateRemove:
		default:
			s.Unended++
		}
	}
	return nil
}

func serviceMode(m swarm.ServiceMode) string {
	switch {
	case m.Global != nil:
		return "global"
	case m.ReplicatedJob != nil:
		return "replicated-job"
	case m.GlobalJob != nil:
		return "global-job"
	}
	return "replicated"
}

// liveStates are the container states that can be live. Podman has no "restarting" state and
// refuses a filter that names one ("unknown container state", HTTP 500).
func liveStates(podman bool) []string {
	if podman {
		return []string{"created", "running", "paused"}
	}
	return []string{"created", "running", "paused", "restarting"}
}

// liveContainers lists the containers in a state that can be live: created, running, paused or
// restarting (exited and dead ones cannot hold a run).
func (e *Client) liveContainers(ctx context.Context) ([]gates.Container, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	f := filters.NewArgs()
	for _, state := range liveStates(e.podman() != "") {
		f.Add("status", state)
	}
	list, err := e.api.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return nil, e.failed("listing containers for the no-run and no-converge gates (GET /containers/json)", err)
	}
	out := make([]gates.Container, 0, len(list))
	for _, c := range list {
		gc := gates.Container{ID: c.ID, Name: containerName(c.Names), Labels: c.Labels, State: c.State,
			Health: health(c.Status), Created: time.Unix(c.Created, 0)}
		if c.NetworkSettings != nil {
			gc.Networks = slices.Sorted(maps.Keys(c.NetworkSettings.Networks))
		}
		out = append(out, gc)
	}
	return out, nil
}

func containerName(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return strings.TrimPrefix(names[0], "/")
}

// health reads the health word from the list's Status text ("Up 3 seconds (health: starting)").
func health(status string) string {
	switch {
	case strings.Contains(status, "(health: starting)"):
		return "starting"
	case strings.Contains(status, "(unhealthy)"):
		return "unhealthy"
	case strings.Contains(status, "(healthy)"):
		return "healthy"
	}
	return ""
}

// selfNames is what names the plugin's own container (gates.Workload.Self): its hostname, then
// the container IDs in the paths the engine mounted over /etc/hostname, /etc/hosts and
// /etc/resolv.conf, read from /proc/self/mountinfo. A container that shares another's network
// (an Actions runner's docker:// step shares its job container's, whose hostname it also gets)
// has that container's files. Read once: they do not change while the process runs.
var selfNames = sync.OnceValue(func() []string {
	var out []string
	if h, err := os.Hostname(); err == nil {
		out = append(out, h)
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return out
	}
	return append(out, mountedContainerIDs(string(data))...)
})

// mountedContainerIDs reads the IDs from mountinfo lines whose mount point is /etc/hostname,
// /etc/hosts or /etc/resolv.conf and whose root (the path inside the mounted filesystem) holds a
// 64-hex container directory: Docker's containers/<id>/hostname, Podman's
// overlay-containers/<id>/userdata/hostname.
func mountedContainerIDs(mountinfo string) []string {
	var out []string
	for line := range strings.Lines(mountinfo) {
		f := strings.Fields(line)
		if len(f) < 5 || (f[4] != "/etc/hostname" && f[4] != "/etc/hosts" && f[4] != "/etc/resolv.conf") {
			continue
		}
		if m := containerDir.FindStringSubmatch(f[3]); m != nil && !slices.Contains(out, m[1]) {
			out = append(out, m[1])
		}
	}
	return out
}

var containerDir = regexp.MustCompile(`/([0-9a-f]{64})/`)
