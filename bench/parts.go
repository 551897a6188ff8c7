package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/swarm"
	"github.com/sirupsen/logrus"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/engine"
	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
	"github.com/drone-gated-prune/drone-gated-prune/plugin"
)

const sleeperImage = "dgp-sleeper:bench"

func maxRSS(ps *os.ProcessState) int64 {
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss
	}
	return 0
}

func baseEnv(extra ...string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		env = append(env, "DOCKER_HOST="+h)
	}
	return append(env, extra...)
}

// inProcess runs the plugin's own Run in this process on an engine whose requests are counted.
func inProcess(ctx context.Context, raw map[string]string) (*report.Report, []string, error) {
	hc, ct, err := countingClient()
	if err != nil {
		return nil, nil, err
	}
	// The counting transport already dials DOCKER_HOST; the client would refuse to apply that host
	// to a transport it cannot configure, so it is hidden while the engine is made.
	if host, ok := os.LookupEnv("DOCKER_HOST"); ok {
		os.Unsetenv("DOCKER_HOST")
		defer os.Setenv("DOCKER_HOST", host)
	}
	eng, err := engine.New(hc)
	if err != nil {
		return nil, nil, err
	}
	defer eng.Close()
	cfg, err := plugin.ParseConfig(raw, time.Now())
	if err != nil {
		return nil, nil, err
	}
	log := logrus.New()
	log.SetLevel(logrus.ErrorLevel)
	r := &plugin.Run{Config: cfg, Engine: eng, Log: log, Version: "bench", PollInterval: time.Second,
		FleetPoll: plugin.DefaultFleetPoll, FleetPrepareLimit: plugin.DefaultFleetPrepareLimit}
	ct.first = time.Now()
	rep, err := r.Execute(ctx)
	lastTimeline = slices.Clone(ct.timeline)
	return rep, ct.reset(), err
}

// lastTimeline is the last in-process run's requests, each with its start from the run's.
var lastTimeline []string

// Part 1: the daily no-op, below threshold, against the CLI's no-op prune on the same engine,
// interleaved: each round runs the plugin with the automatic disk_path, the CLI, the plugin with
// disk_path set and the yardstick (bench/noopfloor: the Engine API client, GET /info and a statfs,
// nothing else), the order rotating from round to round, so that the machine's load falls on all
// four alike. The ratios are taken round by round (to the CLI).
func (e *env) noop(ctx context.Context, cfg config) error {
	below := []string{"PLUGIN_THRESHOLD=100", "PLUGIN_FAIL_ABOVE=100", "PLUGIN_LOG_LEVEL=error"}
	kinds := []struct {
		env  []string
		name string
		args []string
	}{
		{baseEnv(below...), e.pluginBin, nil},
		{baseEnv(), "docker", []string{"image", "prune", "-f", "--filter", "until=24h"}},
		{baseEnv(append(below, "PLUGIN_DISK_PATH=/")...), e.pluginBin, nil},
		{baseEnv(), e.floorBin, nil},
	}
	times := make([][]time.Duration, len(kinds))
	ratios := make([][]float64, len(kinds))
	for round := range cfg.noopRuns {
		got := make([]time.Duration, len(kinds))
		for i := range kinds {
			k := kinds[(round+i)%len(kinds)]
			d, _, _, err := timeCommand(k.env, k.name, k.args...)
			if err != nil {
				return err
			}
			got[(round+i)%len(kinds)] = d
		}
		for i, d := range got {
			times[i] = append(times[i], d)
			ratios[i] = append(ratios[i], d.Seconds()/got[1].Seconds())
		}
	}
	_, autoReqs, err := inProcess(ctx, map[string]string{"threshold": "100", "fail_above": "100"})
	if err != nil {
		return err
	}
	_, explicitReqs, err := inProcess(ctx, map[string]string{"threshold": "100", "fail_above": "100", "disk_path": "/"})
	if err != nil {
		return err
	}
	ratio := func(i int) string {
		r := slices.Sorted(slices.Values(ratios[i]))
		return fmt.Sprintf("median %.2f (min %.2f, max %.2f)", r[len(r)/2], r[0], r[len(r)-1])
	}
	e.t.add(fmt.Sprintf("1. daily no-op, wall time (median of %d rounds, interleaved)", cfg.noopRuns),
		ms(median(times[0]))+" (auto disk_path); "+ms(median(times[2]))+" (disk_path set)",
		ms(median(times[1]))+" (`docker image prune -f --filter until=24h`)",
		"ratio to the CLI round by round (target ≤ 0.75): auto "+ratio(0)+"; disk_path set "+ratio(2))
	e.t.add("1. daily no-op, the yardstick: the Engine API client, GET /info and a statfs (bench/noopfloor)",
		ms(median(times[3])), "—",
		"ratio to the CLI round by round: "+ratio(3)+"; no auto disk_path run on this client can be faster")
	e.t.add("1. daily no-op, Engine API requests", fmt.Sprintf("%d (%s) auto; %d with disk_path", len(autoReqs), strings.Join(autoReqs, ", "), len(explicitReqs)),
		"—", "target ≤ ping + info auto, 0 with disk_path")
	return nil
}

func (e *env) ensureSleeper(ctx context.Context) error {
	return fixtures.LoadSleeper(ctx, e.api, sleeperImage, e.sleeperBin)
}

// removeFixtures removes every fixture container and service.
func (e *env) removeFixtures(ctx context.Context) {
	services, _ := e.api.ServiceList(ctx, swarm.ServiceListOptions{Filters: filters.NewArgs(filters.Arg("label", fixtures.Label))})
	for _, s := range services {
		_ = e.api.ServiceRemove(ctx, s.ID)
	}
	cs, _ := e.api.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", fixtures.Label))})
	for _, c := range cs {
		_ = e.api.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		left, _ := e.api.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", fixtures.Label))})
		if len(left) == 0 {
			return
		}
		for _, c := range left {
			_ = e.api.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
		}
	}
}

// Part 2: the cost of the no-run and no-converge gates as the host grows.
func (e *env) gateCost(ctx context.Context, cfg config) error {
	if err := e.ensureSleeper(ctx); err != nil {
		return err
	}
	defer e.removeFixtures(ctx)
	running, services := 0, 0
	for _, size := range cfg.sizes {
		var stopped string
		for running < size.containers {
			c, err := e.api.ContainerCreate(ctx, &container.Config{Image: sleeperImage, Cmd: []string{"/sleeper"}, Labels: map[string]string{fixtures.Label: "true"}},
				&container.HostConfig{NetworkMode: "none"}, nil, nil, "")
			if err == nil {
				err = e.api.ContainerStart(ctx, c.ID, container.StartOptions{})
			}
			if err != nil {
				stopped = fmt.Sprintf("stopped at %d running containers: %v", running, err)
				break
			}
			running++
		}
		for services < size.services && stopped == "" {
			replicas := uint64(1)
			_, err := e.api.ServiceCreate(ctx, swarm.ServiceSpec{
				Annotations:  swarm.Annotations{Name: fmt.Sprintf("dgp-bench-%d", services), Labels: map[string]string{fixtures.Label: "true"}},
				TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: sleeperImage, Command: []string{"/sleeper"}, Labels: map[string]string{fixtures.Label: "true"}}},
				Mode:         swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &replicas}},
			}, swarm.ServiceCreateOptions{})
			if err != nil {
				stopped = fmt.Sprintf("stopped at %d services: %v", services, err)
				break
			}
			services++
		}
		// Let the services converge so the gates see a settled host.
		for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
			list, err := e.api.ServiceList(ctx, swarm.ServiceListOptions{Status: true, Filters: filters.NewArgs(filters.Arg("label", fixtures.Label))})
			if err != nil {
				return err
			}
			settled := 0
			for _, s := range list {
				if s.ServiceStatus != nil && s.ServiceStatus.RunningTasks == s.ServiceStatus.DesiredTasks {
					settled++
				}
			}
			if settled == len(list) {
				break
			}
		}
		hc, ct, err := countingClient()
		if err != nil {
			return err
		}
		eng, err := engine.New(hc)
		if err != nil {
			return err
		}
		policy := gates.RunPolicy{}
		var ds []time.Duration
		var reqs []int64
		for range 10 {
			ct.reset()
			start := time.Now()
			snap, err := eng.Snapshot(ctx)
			if err != nil {
				return err
			}
			_, _ = gates.LiveRuns(snap.Workload, policy), gates.Unconverged(snap.Workload)
			ds = append(ds, time.Since(start))
			reqs = append(reqs, ct.n.Load())
		}
		eng.Close()
		note := fmt.Sprintf("requests per evaluation: %d (first, with version negotiation: %d)", reqs[len(reqs)-1], reqs[0])
		if stopped != "" {
			note += "; " + stopped
		}
		e.t.add(fmt.Sprintf("2. gates with %d running containers, %d services (median of 10)", running, services), ms(median(ds)), "—", note)
		if stopped != "" {
			break
		}
	}
	return nil
}

// pruneFixtures makes the full-prune fixtures: dangling images and stopped containers older
// than the cutoff, plus build cache.
func (e *env) pruneFixtures(ctx context.Context, cfg config) error {
	if err := e.loadOldDangling(ctx, cfg.images); err != nil {
		return err
	}
	for range cfg.stopped {
		if _, err := e.api.ContainerCreate(ctx, &container.Config{Image: sleeperImage, Cmd: []string{"/sleeper"}, Labels: map[string]string{fixtures.Label: "true"}},
			&container.HostConfig{NetworkMode: "none"}, nil, nil, ""); err != nil {
			return err
		}
	}
	for range cfg.builds {
		tag := "dgp-bench-built:" + fixtures.RandomHex(4)
		if err := fixtures.Build(ctx, e.api, tag); err != nil {
			return err
		}
		// Untag the result so its cache records are no longer shared with a tagged image.
		if _, err := e.api.ImageRemove(ctx, tag, image.RemoveOptions{Force: true}); err != nil {
			return err
		}
	}
	time.Sleep(2500 * time.Millisecond)
	return nil
}

var fullPruneRSS int64

// Part 3: a full prune, the plugin against the three CLI prunes on identical fixtures.
func (e *env) fullPrune(ctx context.Context, cfg config) error {
	if err := e.ensureSleeper(ctx); err != nil {
		return err
	}
	var pluginTimes, cliTimes []time.Duration
	var removed string
	for round := range cfg.rounds {
		if err := e.pruneFixtures(ctx, cfg); err != nil {
			return err
		}
		d, rss, _, err := timeCommand(baseEnv("PLUGIN_FORCE=true", "PLUGIN_UNTIL=2s", "PLUGIN_FAIL_ABOVE=100", "PLUGIN_THRESHOLD=100", "PLUGIN_LOG_LEVEL=error",
			"PLUGIN_SUMMARY_FILE="+e.dir+"/full.json"), e.pluginBin)
		if err != nil {
			return err
		}
		pluginTimes = append(pluginTimes, d)
		fullPruneRSS = max(fullPruneRSS, rss)
		if data, err := os.ReadFile(e.dir + "/full.json"); err == nil && round == 0 {
			removed = summarizeRemoved(data)
		}
		if err := e.pruneFixtures(ctx, cfg); err != nil {
			return err
		}
		start := time.Now()
		for _, args := range [][]string{
			{"container", "prune", "-f", "--filter", "until=2s"},
			{"image", "prune", "-f", "--filter", "until=2s"},
			{"builder", "prune", "-f", "--filter", "until=2s"},
		} {
			if _, _, _, err := timeCommand(baseEnv(), "docker", args...); err != nil {
				return err
			}
		}
		cliTimes = append(cliTimes, time.Since(start))
	}
	p, c := median(pluginTimes), median(cliTimes)
	e.t.add(fmt.Sprintf("3. full prune: %d dangling images, %d stopped containers, %d builds' cache (median of %d)", cfg.images, cfg.stopped, cfg.builds, cfg.rounds),
		secs(p), secs(c)+" (`container prune` + `image prune` + `builder prune`)", fmt.Sprintf("ratio %.3f (target ≤ 1.05); plugin removed %s", p.Seconds()/c.Seconds(), removed))
	return nil
}

func summarizeRemoved(data []byte) string {
	var rep report.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		return "?"
	}
	var parts []string
	for _, ph := range rep.Phases {
		parts = append(parts, fmt.Sprintf("%d %s", ph.Count, strings.ReplaceAll(ph.Phase, "_", " ")))
	}
	return strings.Join(parts, ", ")
}

// Part 4: footprint.
func (e *env) footprint(ctx context.Context, cfg config) error {
	st, err := os.Stat(e.pluginBin)
	if err != nil {
		return err
	}
	imageSize := "not built"
	tag := "dgp-plugin:bench"
	if _, _, out, err := timeCommand(baseEnv("CGO_ENABLED=0", "GOCACHE="+goEnv("GOCACHE"), "GOPATH="+goEnv("GOPATH")), "sh", "scripts/build-image.sh", tag, "bench"); err == nil {
		if inspect, err := e.api.ImageInspect(ctx, tag); err == nil {
			imageSize = fmt.Sprintf("%.1f MB", float64(inspect.Size)/1e6)
		}
		_, _ = e.api.ImageRemove(ctx, tag, image.RemoveOptions{Force: true, PruneChildren: true})
	} else {
		imageSize = "build failed: " + strings.TrimSpace(out)
	}
	e.t.add("4. footprint", fmt.Sprintf("peak RSS %.1f MB in (3); binary %.1f MB; image %s", float64(fullPruneRSS)/1024, float64(st.Size())/1e6, imageSize),
		"—", "target RSS ≤ 40 MB, image ≤ 15 MB")
	return nil
}

// Part 5: cache warmth. Base images pulled from a registry on 127.0.0.1; after the plugin's prune
// a second pull downloads nothing, after `docker system prune -af` everything again.
func (e *env) warmth(ctx context.Context, cfg config) error {
	reg, err := fixtures.StartRegistry()
	if err != nil {
		return err
	}
	defer reg.Close()
	var bases []string
	for i := range cfg.warmBases {
		ref, err := reg.PushBase(fmt.Sprintf("base/image-%d", i), "1", 4, cfg.warmLayer)
		if err != nil {
			return err
		}
		bases = append(bases, ref)
	}
	pullAll := func() (time.Duration, int, error) {
		before := reg.LayersServed()
		start := time.Now()
		for _, ref := range bases {
			if err := fixtures.Pull(ctx, e.api, ref); err != nil {
				return 0, 0, err
			}
		}
		return time.Since(start), reg.LayersServed() - before, nil
	}
	coldTime, coldLayers, err := pullAll()
	if err != nil {
		return err
	}
	if _, _, _, err := timeCommand(baseEnv("PLUGIN_FORCE=true", "PLUGIN_FAIL_ABOVE=100", "PLUGIN_THRESHOLD=100", "PLUGIN_LOG_LEVEL=error"), e.pluginBin); err != nil {
		return err
	}
	warmTime, warmLayers, err := pullAll()
	if err != nil {
		return err
	}
	if _, _, _, err := timeCommand(baseEnv(), "docker", "system", "prune", "-af"); err != nil {
		return err
	}
	againTime, againLayers, err := pullAll()
	if err != nil {
		return err
	}
	for _, ref := range bases {
		_, _ = e.api.ImageRemove(ctx, ref, image.RemoveOptions{Force: true, PruneChildren: true})
	}
	total := cfg.warmBases * 4
	e.t.add(fmt.Sprintf("5. cache warmth: pull %d base images (%d layers of %.1f MB) after a prune at pressure", cfg.warmBases, total, float64(cfg.warmLayer)/1e6),
		fmt.Sprintf("%s, %d layers downloaded", secs(warmTime), warmLayers), fmt.Sprintf("%s, %d layers downloaded (after `docker system prune -af`)", secs(againTime), againLayers),
		fmt.Sprintf("cold pull: %s, %d layers", secs(coldTime), coldLayers))
	return nil
}

// goEnv is one value of `go env`, for the image build's environment.
func goEnv(key string) string {
	out, err := exec.Command("go", "env", key).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
