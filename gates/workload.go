package gates

import (
	"cmp"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode"
)

// Labels the engine and its tools put on objects, read by the gates.
const (
	StackNamespaceLabel = "com.docker.stack.namespace"
	ComposeProjectLabel = "com.docker.compose.project"
	SwarmTaskLabel      = "com.docker.swarm.task.id"
	DroneRepoLabel      = "io.drone.repo.slug"
	DroneBuildLabel     = "io.drone.build.number"
	// WoodpeckerStepLabel is the one label Woodpecker's docker backend puts on every step, service
	// and clone container (its value is the step's UUID).
	WoodpeckerStepLabel = "wp_uuid"
)

// SwarmRole is what this engine is in a swarm.
type SwarmRole string

// The roles a snapshot can carry. A swarm the engine belongs to but cannot report on (locked,
// pending, error) gives no snapshot at all: the engine adapter fails the run instead.
const (
	SwarmNone    SwarmRole = "none"
	SwarmManager SwarmRole = "manager"
	SwarmWorker  SwarmRole = "worker"
)

// Service is one swarm service with its task counts.
type Service struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Stack string `json:"stack,omitempty"`
	// Mode is replicated, global, replicated-job or global-job.
	Mode    string `json:"mode"`
	Running uint64 `json:"running"`
	Desired uint64 `json:"desired"`
	// UpdateState is the service's UpdateStatus.State ("updating", "rollback_started", ...), or "".
	UpdateState string `json:"update_state,omitempty"`
	// FailedTasks are the service's tasks that failed or were rejected, as far as the swarm's task
	// history keeps them; Unended counts its tasks that have not ended (new to running).
	FailedTasks []FailedTask `json:"failed_tasks,omitempty"`
	Unended     int          `json:"unended"`
	// RestartLimit is the restart policy's maximum attempts (0: no limit); NoRestart is a policy
	// whose condition is "none".
	RestartLimit uint64 `json:"restart_limit,omitempty"`
	NoRestart    bool   `json:"no_restart,omitempty"`
}

// FailedTask is one task of a service that failed: when (the task's status time, on the daemon's
// clock), with which exit code, and the swarm's message.
type FailedTask struct {
	ID      string    `json:"id"`
	At      time.Time `json:"at"`
	Exit    int       `json:"exit"`
	Message string    `json:"message,omitempty"`
}

// CrashLoopWindow is how recently a service must have had a task fail for it to count as
// converging though its task count is met: the swarm is restarting it, and the failed task
// containers are what an operator debugs the loop with.
const CrashLoopWindow = 10 * time.Minute

// restartsSpent reports whether the swarm has stopped replacing the service's failed tasks: fewer
// running than desired, no task left that has not ended, a task that failed, and a restart policy
// that limits the attempts (or makes none).
func (s Service) restartsSpent() bool {
	return s.Running < s.Desired && s.Unended == 0 && len(s.FailedTasks) > 0 && (s.RestartLimit > 0 || s.NoRestart)
}

// lastFailure is the service's most recent failed task.
func (s Service) lastFailure() (FailedTask, bool) {
	var last FailedTask
	for _, t := range s.FailedTasks {
		if t.At.After(last.At) {
			last = t
		}
	}
	return last, len(s.FailedTasks) > 0
}

// IsJob reports whether the service runs to completion rather than staying up.
func (s Service) IsJob() bool { return strings.HasSuffix(s.Mode, "-job") }

// Container is one container as the gates need it: the engine adapter gives the ones that are
// created, running, paused or restarting (the states in which a container can still be part of a
// run or of a service settling).
type Container struct {
	ID     string            `json:"id"`
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
	// State is the engine's state word: created, running, paused or restarting.
	State string `json:"state"`
	// Health is "starting", "healthy", "unhealthy" or "" when the container has no healthcheck.
	Health string `json:"health,omitempty"`
	// Created is when the container was created (whole seconds, as the engine lists it).
	Created time.Time `json:"created"`
	// Networks are the names of the networks the container is attached to.
	Networks []string `json:"networks,omitempty"`
}

// live reports whether a container can be part of a run: running, paused or restarting, or created
// (about to start) after abandonedBefore. A container created longer ago and never started is
// abandoned; the container prune removes it as stopped.
func (c Container) live(abandonedBefore time.Time) bool {
	switch c.State {
	case "running", "paused", "restarting":
		return true
	case "created":
		// The engine lists whole seconds and prunes what was created at or before the cutoff: a
		// container listed in the cutoff's second counts as live (prune less).
		return !c.Created.Before(abandonedBefore)
	}
	return false
}

// Workload is one snapshot of what runs on the engine.
type Workload struct {
	Swarm SwarmRole `json:"swarm"`
	// Services is filled on a manager only.
	Services []Service `json:"services,omitempty"`
	// Containers holds the containers in a state that can be live (created, running, paused,
	// restarting).
	Containers []Container `json:"containers,omitempty"`
	// Self holds what names the plugin's own container, when it runs in one: its hostname (the
	// container ID's 12-character prefix unless the CI set another) and the IDs in the paths of
	// its /etc/hostname, /etc/hosts and /etc/resolv.conf (a container sharing another's network,
	// as an Actions runner's step shares its job container's, has that container's). A container
	// whose ID starts with one is never a live run.
	Self []string `json:"-"`
	// Now is the daemon's clock when the workload was read, against which a failed task is recent
	// (CrashLoopWindow).
	Now time.Time `json:"-"`
}

// LabelSelector matches a label by key, or by key and value.
type LabelSelector struct {
	Key      string
	Value    string
	HasValue bool
}

// String renders the selector the way it is written in settings.
func (l LabelSelector) String() string {
	if l.HasValue {
		return l.Key + "=" + l.Value
	}
	return l.Key
}

// Matches reports whether labels carry this selector.
func (l LabelSelector) Matches(labels map[string]string) bool {
	v, ok := labels[l.Key]
	return ok && (!l.HasValue || v == l.Value)
}

// OwnRun names the CI build, workflow or job the plugin runs in, so that its own containers are
// not mistaken for a live run: a container carrying every one of Labels (Drone: repository and
// build number), attached to Network (Woodpecker: the workflow's default network), or named with
// NamePrefix (an Actions-format runner's task or job) is its own.
type OwnRun struct {
	Labels     map[string]string
	Network    string
	NamePrefix string
	// SelfNetwork, when set, finds Network on the plugin's own container: the one of its networks
	// this matches (Woodpecker names every workflow's network <prefix>_default, 1.x to 3.x).
	SelfNetwork *regexp.Regexp
	// SelfName, when set, finds NamePrefix in the name of the plugin's own container (or of the
	// job container whose network it shares): its first submatch (an Actions-format runner names
	// every container of a job with one prefix).
	SelfName *regexp.Regexp
}

// Resolve fills Network and NamePrefix from the plugin's own container in the workload, where
// SelfNetwork or SelfName ask for it. The warning says why the own run could not be found: its
// containers then count as live runs (prune less).
func (o OwnRun) Resolve(w Workload) (OwnRun, string) {
	if o.SelfNetwork == nil && o.SelfName == nil {
		return o, ""
	}
	self, found := w.self()
	if !found {
		return o, fmt.Sprintf("the plugin's own container (%s) is not among the live containers: its own run's containers count as live runs", cmp.Or(strings.Join(w.Self, ", "), "no hostname or mounted /etc files name one"))
	}
	if o.SelfNetwork != nil {
		var nets []string
		for _, n := range self.Networks {
			if o.SelfNetwork.MatchString(n) {
				nets = append(nets, n)
			}
		}
		if len(nets) != 1 {
			return o, fmt.Sprintf("the plugin's own container %s is on networks %q, not on exactly one matching %q: its own workflow's containers count as live runs", self.Name, self.Networks, o.SelfNetwork)
		}
		o.Network = nets[0]
	}
	if o.SelfName != nil {
		m := o.SelfName.FindStringSubmatch(self.Name)
		if len(m) < 2 || m[1] == "" {
			return o, fmt.Sprintf("the plugin's own container name %q does not match %q: its own job's containers count as live runs", self.Name, o.SelfName)
		}
		o.NamePrefix = m[1]
	}
	return o, ""
}

// Owns reports whether a container belongs to the plugin's own build or workflow.
func (o OwnRun) Owns(c Container) bool {
	if len(o.Labels) > 0 {
		all := true
		for k, v := range o.Labels {
			all = all && v != "" && c.Labels[k] == v
		}
		if all {
			return true
		}
	}
	return (o.Network != "" && slices.Contains(c.Networks, o.Network)) || o.namedOwn(c.Name)
}

// namedOwn reports whether name starts with NamePrefix, which ends at a word's end there: task 42's
// containers are not task 421's.
func (o OwnRun) namedOwn(name string) bool {
	rest, ok := strings.CutPrefix(name, o.NamePrefix)
	if o.NamePrefix == "" || !ok {
		return false
	}
	return rest == "" || !unicode.IsLetter(rune(rest[0])) && !unicode.IsDigit(rune(rest[0]))
}

// String names the own run for the summary.
func (o OwnRun) String() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(o.Labels)) {
		parts = append(parts, k+"="+o.Labels[k])
	}
	if o.Network != "" {
		parts = append(parts, "network "+o.Network)
	}
	if o.NamePrefix != "" {
		parts = append(parts, "containers named "+o.NamePrefix+"*")
	}
	return strings.Join(parts, ", ")
}

// RunPolicy says what a live CI run looks like on this host.
type RunPolicy struct {
	// Patterns match stack, compose project, service and container names.
	Patterns []*regexp.Regexp
	// Labels match live containers.
	Labels []LabelSelector
	// JobNames match live containers' names, except the own run's (an Actions-format runner's
	// job containers carry no label, only a name with the runner's prefix).
	JobNames []*regexp.Regexp
	// Own is the plugin's own build or workflow, ignored by Labels.
	Own OwnRun
	// Source says where Labels came from when no setting gave them (a CI's own run label).
	Source string
	// Warnings are shown with the verdict (the own run cannot be told apart, a CI's runs unwatched).
	Warnings []string
	// AbandonedBefore: a created container created before this never started in time and is no
	// longer a live run (the prune's cutoff, so the gate and the container prune agree).
	AbandonedBefore time.Time
}

func (w Workload) isSelf(c Container) bool {
	return slices.ContainsFunc(w.Self, func(id string) bool { return len(id) >= 12 && strings.HasPrefix(c.ID, id) })
}

// self is the plugin's own container among the live ones, or the container whose network it
// shares (both name the same run).
func (w Workload) self() (Container, bool) {
	i := slices.IndexFunc(w.Containers, w.isSelf)
	if i < 0 {
		return Container{}, false
	}
	return w.Containers[i], true
}

// LiveRuns closes the gate when any live run matches the policy. With neither patterns nor labels
// it stays open and says loudly that it had nothing to look for.
func LiveRuns(w Workload, p RunPolicy) Verdict {
	v := Verdict{Gate: NoRunGate, Warnings: slices.Clone(p.Warnings)}
	if len(p.Patterns) == 0 && len(p.Labels) == 0 && len(p.JobNames) == 0 {
		v.Open = true
		v.Reason = "no stack_pattern or run_labels set: this gate cannot see CI runs and lets every prune through"
		v.Warnings = append(v.Warnings, "NO-RUN GATE IS BLIND: set stack_pattern or run_labels so a live CI run holds the prune")
		return v
	}
	own, warning := p.Own.Resolve(w)
	p.Own = own
	if warning != "" {
		v.Warnings = append(v.Warnings, warning)
	}
	seen := map[string]bool{}
	add := func(what string) {
		if !seen[what] {
			seen[what] = true
			v.Evidence = append(v.Evidence, what)
		}
	}
	match := func(name string) string {
		for _, re := range p.Patterns {
			if name != "" && re.MatchString(name) {
				return re.String()
			}
		}
		return ""
	}
	for _, s := range w.Services {
		if re := match(s.Stack); re != "" {
			add(fmt.Sprintf("swarm stack %q (service %s) matches %q", s.Stack, s.Name, re))
		}
		if re := match(s.Name); re != "" {
			add(fmt.Sprintf("swarm service %q matches %q", s.Name, re))
		}
	}
	for _, c := range w.Containers {
		if w.isSelf(c) || !c.live(p.AbandonedBefore) {
			continue
		}
		if stack := c.Labels[StackNamespaceLabel]; stack != "" {
			if re := match(stack); re != "" {
				add(fmt.Sprintf("swarm stack %q (container %s) matches %q", stack, c.Name, re))
			}
		}
		if project := c.Labels[ComposeProjectLabel]; project != "" {
			if re := match(project); re != "" {
				add(fmt.Sprintf("compose project %q (container %s) matches %q", project, c.Name, re))
			}
		}
		if re := match(c.Name); re != "" {
			add(fmt.Sprintf("container %q (%s) matches %q", c.Name, c.State, re))
		}
		if p.Own.Owns(c) {
			continue
		}
		for _, sel := range p.Labels {
			if sel.Matches(c.Labels) {
				add(fmt.Sprintf("container %q carries run label %s", c.Name, sel))
			}
		}
		for _, re := range p.JobNames {
			if re.MatchString(c.Name) {
				add(fmt.Sprintf("container %q (%s) is a job container (%q)", c.Name, c.State, re))
			}
		}
	}
	sort.Strings(v.Evidence)
	if len(v.Evidence) > 0 {
		v.Reason = fmt.Sprintf("live run found (%d match(es)), looking for %s", len(v.Evidence), describePolicy(p))
		return v
	}
	v.Open = true
	v.Reason = "no live run matches " + describePolicy(p)
	return v
}

func describePolicy(p RunPolicy) string {
	var parts []string
	for _, re := range p.Patterns {
		parts = append(parts, fmt.Sprintf("%q", re.String()))
	}
	for _, l := range p.Labels {
		parts = append(parts, "label "+l.String())
	}
	for _, re := range p.JobNames {
		parts = append(parts, fmt.Sprintf("container name %q", re))
	}
	s := strings.Join(parts, ", ")
	if p.Source != "" {
		s += " (" + p.Source + ")"
	}
	if own := p.Own.String(); own != "" {
		s += "; own run ignored: " + own
	}
	return s
}

// Unconverged closes the gate while anything on the engine is still settling: a swarm service
// short of its desired tasks or mid-update, a restarting container, a health check still starting.
func Unconverged(w Workload) Verdict {
	v := Verdict{Gate: NoConvergeGate}
	switch w.Swarm {
	case SwarmWorker:
		v.Warnings = append(v.Warnings, "worker node: the cluster's services cannot be listed here, so only this node's own task containers and other containers are checked")
	case SwarmNone:
		v.Warnings = append(v.Warnings, "not in a swarm: only container checks apply")
	}
	for _, s := range w.Services {
		last, failed := s.lastFailure()
		switch {
		case s.UpdateState == "updating" || s.UpdateState == "rollback_started":
			v.Evidence = append(v.Evidence, fmt.Sprintf("service %s is %s (%d/%d running)", s.Name, strings.ReplaceAll(s.UpdateState, "_", " "), s.Running, s.Desired))
		case s.IsJob():
			// A job's desired count is what is still to run; a finished job reports 0/0 and a
			// running one is doing its work, not converging towards a state.
		case s.restartsSpent():
			// The swarm has given up: nothing here converges by waiting.
			v.Warnings = append(v.Warnings, fmt.Sprintf("service %s will not converge on its own: %d failed task(s), restart limit reached (%d/%d running; last: task %s at %s, %s)",
				s.Name, len(s.FailedTasks), s.Running, s.Desired, last.ID, last.At.UTC().Format(time.RFC3339), failure(last)))
		case failed && !last.At.Before(w.Now.Add(-CrashLoopWindow)):
			v.Evidence = append(v.Evidence, fmt.Sprintf("service %s restarted a failed task in the last %s (%d/%d running): task %s failed at %s, %s",
				s.Name, CrashLoopWindow, s.Running, s.Desired, last.ID, last.At.UTC().Format(time.RFC3339), failure(last)))
		case s.Running < s.Desired:
			v.Evidence = append(v.Evidence, fmt.Sprintf("service %s has %d/%d tasks running", s.Name, s.Running, s.Desired))
		}
	}
	for _, c := range w.Containers {
		if w.isSelf(c) {
			continue
		}
		switch {
		case c.State == "restarting":
			v.Evidence = append(v.Evidence, fmt.Sprintf("container %s is restarting", c.Name))
		case c.Health == "starting":
			v.Evidence = append(v.Evidence, fmt.Sprintf("container %s health is starting", c.Name))
		case w.Swarm == SwarmWorker && c.Labels[SwarmTaskLabel] != "" && c.State == "created":
			v.Evidence = append(v.Evidence, fmt.Sprintf("task container %s is created but not started", c.Name))
		}
	}
	if len(v.Evidence) > 0 {
		v.Reason = fmt.Sprintf("%d thing(s) still converging", len(v.Evidence))
		return v
	}
	v.Open = true
	v.Reason = "every service is at its desired task count and no container is restarting or starting"
	if w.Swarm != SwarmManager {
		v.Reason = "no container is restarting or starting"
	}
	return v
}

// failure says how a task failed.
func failure(t FailedTask) string {
	if t.Message != "" {
		return fmt.Sprintf("exit %d: %s", t.Exit, t.Message)
	}
	return fmt.Sprintf("exit %d", t.Exit)
}
