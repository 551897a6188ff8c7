package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// fleetImage is the plugin image the fleet part builds on the system engine and loads into the
// swarm's nodes.
const fleetImage = "dgp-plugin:bench"

// Part 6 (go run ./bench -fleet): one fleet run on a real 3-manager swarm (scripts/test-engine.sh
// swarm, three Docker 29 engines in their own network namespaces) against three separate runs, one
// per node, as a cron per host would do. Each run, fleet or not, finds the same work on every node:
// an old dangling image and an old stopped container. Wall time is around Run.Execute in this
// process; requests are the ones this process sends to the engine it is pointed at. In the fleet
// run that is the manager; the nodes' tasks send their own to their own engines, the manager's
// task included (about as many as a separate run there).
func (e *env) fleet(ctx context.Context, cfg config) error {
	name := "fb" + fixtures.RandomHex(2)
	hosts, err := fixtures.StartSwarm("scripts/test-engine.sh", name)
	if err != nil {
		return fmt.Errorf("%w (scripts/test-engine.sh build first)", err)
	}
	defer func() {
		if err := fixtures.StopSwarm("scripts/test-engine.sh", name); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
	}()
	var nodes []*client.Client
	for _, h := range hosts {
		c, err := client.NewClientWithOpts(client.WithHost(h), client.WithAPIVersionNegotiation())
		if err != nil {
			return err
		}
		defer c.Close()
		nodes = append(nodes, c)
	}
	if out, err := exec.Command("sh", "scripts/build-image.sh", fleetImage, "bench").CombinedOutput(); err != nil {
		return fmt.Errorf("building %s: %w\n%s", fleetImage, err, out)
	}
	if out, err := exec.Command("bash", "scripts/test-engine.sh", "load", name, fleetImage).CombinedOutput(); err != nil {
		return fmt.Errorf("loading %s into the nodes: %w\n%s", fleetImage, err, out)
	}
	for _, c := range nodes {
		if err := fixtures.LoadSleeper(ctx, c, sleeperImage, e.sleeperBin); err != nil {
			return err
		}
	}
	// until 1s: the containerd image store judges an image's age by when it was loaded here.
	settings := map[string]string{"force": "true", "until": "1s", "timeout": "2m"}
	work := func() error {
		for _, c := range nodes {
			if _, err := fixtures.Load(ctx, c, fixtures.Image{Created: time.Now().Add(-48 * time.Hour)}); err != nil {
				return err
			}
			if _, err := c.ContainerCreate(ctx, &container.Config{Image: sleeperImage, Cmd: []string{"/sleeper"}, Labels: map[string]string{fixtures.Label: "1"}},
				&container.HostConfig{NetworkMode: "none"}, nil, nil, ""); err != nil {
				return err
			}
		}
		time.Sleep(2 * time.Second)
		return nil
	}
	timed := func(host string, raw map[string]string) (time.Duration, []string, *report.Report, error) {
		os.Setenv("DOCKER_HOST", host)
		defer os.Unsetenv("DOCKER_HOST")
		start := time.Now()
		rep, reqs, err := inProcess(ctx, raw)
		return time.Since(start), reqs, rep, err
	}
	// floor is the swarm's own part: a global job whose container exits at once, from its creation
	// until every node's task has completed, looked at every 20 ms.
	floor := func() (time.Duration, error) {
		start := time.Now()
		resp, err := nodes[0].ServiceCreate(ctx, swarm.ServiceSpec{
			Annotations: swarm.Annotations{Name: "dgp-bench-floor-" + fixtures.RandomHex(3)},
			TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: sleeperImage, Command: []string{"/sleeper", "done"}},
				RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone}},
			Mode: swarm.ServiceMode{GlobalJob: &swarm.GlobalJob{}},
		}, swarm.ServiceCreateOptions{})
		if err != nil {
			return 0, err
		}
		defer func() { _ = nodes[0].ServiceRemove(ctx, resp.ID) }()
		for time.Since(start) < time.Minute {
			tasks, err := nodes[0].TaskList(ctx, swarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", resp.ID))})
			if err != nil {
				return 0, err
			}
			done := 0
			for _, t := range tasks {
				if t.Status.State == swarm.TaskStateComplete {
					done++
				}
			}
			if done == len(nodes) {
				return time.Since(start), nil
			}
			time.Sleep(20 * time.Millisecond)
		}
		return 0, fmt.Errorf("the floor job did not complete on %d nodes within a minute", len(nodes))
	}
	var sepWall, sepMax, fleetWall, floorWall []time.Duration
	var sepReqs, managerReqs, fleetReqs []string
	for round := range cfg.rounds {
		if err := work(); err != nil {
			return err
		}
		var sum, longest time.Duration
		for i, h := range hosts {
			d, reqs, rep, err := timed(h, settings)
			if err != nil {
				return fmt.Errorf("separate run on node %d: %w", i+1, err)
			}
			if removed := removedCount(rep); removed < 2 {
				return fmt.Errorf("separate run on node %d removed %d objects, want at least 2", i+1, removed)
			}
			sum, longest = sum+d, max(longest, d)
			if i == 0 {
				managerReqs = reqs
				fmt.Fprintf(os.Stderr, "bench: round %d, separate run on node 1: %s; its requests, from the run's start:\n  %s\n", round+1, secs(d), strings.Join(lastTimeline, "\n  "))
			}
			if round == 0 {
				sepReqs = append(sepReqs, fmt.Sprint(len(reqs)))
			}
		}
		sepWall, sepMax = append(sepWall, sum), append(sepMax, longest)
		if err := work(); err != nil {
			return err
		}
		raw := map[string]string{"fleet": "true", "fleet_image": fleetImage, "fleet_socket": fixtures.EngineRunDir() + "/{{.Node.Hostname}}/docker.sock"}
		for k, v := range settings {
			raw[k] = v
		}
		d, reqs, rep, err := timed(hosts[0], raw)
		if err != nil {
			return fmt.Errorf("fleet run: %w", err)
		}
		if rep.Fleet == nil || len(rep.Fleet.Nodes) != 3 {
			return fmt.Errorf("fleet run: decision %q, want a row per node", rep.Decision)
		}
		for _, n := range rep.Fleet.Nodes {
			if n.ExitCode != 0 || n.Objects < 2 {
				return fmt.Errorf("fleet run: node %s exit %d, %d objects removed; want 0 and at least 2", n.Node, n.ExitCode, n.Objects)
			}
		}
		fleetWall, fleetReqs = append(fleetWall, d), reqs
		f, err := floor()
		if err != nil {
			return err
		}
		floorWall = append(floorWall, f)
		fmt.Fprintf(os.Stderr, "bench: fleet round %d: %s; its requests on the manager, from the run's start:\n  %s\n", round+1, secs(d), strings.Join(lastTimeline, "\n  "))
	}
	ver, err := nodes[0].ServerVersion(ctx)
	if err != nil {
		return err
	}
	e.t.add(fmt.Sprintf("6. fleet: 3-manager swarm of Docker %s engines, wall time (median of %d)", ver.Version, cfg.rounds),
		secs(median(fleetWall))+" (one fleet step on the manager)",
		"—",
		fmt.Sprintf("3 separate runs, one per node: %s one after another, %s the longest (as 3 crons at once); each node removes 1 dangling image and 1 stopped container. "+
			"The swarm's floor, a global job whose container exits at once, created to complete on every node: %s", secs(median(sepWall)), secs(median(sepMax)), secs(median(floorWall))))
	e.t.add("6. fleet: Engine API requests on the manager",
		fmt.Sprintf("%d from the fleet step (%s) + the manager's own task (as a separate run there)", len(fleetReqs), requestKinds(fleetReqs)),
		"—",
		fmt.Sprintf("separate runs: %s requests on nodes 1, 2, 3 (node 1 is the manager: %s)", strings.Join(sepReqs, ", "), requestKinds(managerReqs)))
	return nil
}

// removedCount is the number of objects a run removed, over its phases.
func removedCount(rep *report.Report) int {
	n := 0
	for _, ph := range rep.Phases {
		if ph.Status == report.StatusRemoved {
			n += ph.Count
		}
	}
	return n
}

// requestKinds names each request by method and path (IDs and the API version cut), with counts.
func requestKinds(reqs []string) string {
	var order []string
	count := map[string]int{}
	for _, r := range reqs {
		f := strings.Fields(r)
		if len(f) < 2 {
			continue
		}
		parts := strings.Split(f[1], "/")
		var kept []string
		for _, p := range parts {
			switch {
			case p == "" || strings.HasPrefix(p, "v1."):
			case len(p) >= 12 && strings.Trim(p, "0123456789abcdefghijklmnopqrstuvwxyz:") == "" && strings.ContainsAny(p, "0123456789"):
				kept = append(kept, "{id}")
			default:
				kept = append(kept, p)
			}
		}
		k := f[0] + " /" + strings.Join(kept, "/")
		if count[k] == 0 {
			order = append(order, k)
		}
		count[k]++
	}
	var out []string
	for _, k := range order {
		if count[k] > 1 {
			out = append(out, fmt.Sprintf("%s ×%d", k, count[k]))
		} else {
			out = append(out, k)
		}
	}
	return strings.Join(out, ", ")
}
