package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/plugin"
)

// fixtureLabel marks every object these tests create, so cleanup finds them.
const fixtureLabel = fixtures.Label

// sleeperImage is the tagged image every test container runs; being tagged, no prune removes it.
const sleeperImage = "dgp-sleeper:e2e"

var (
	api        *client.Client
	pluginBin  string
	sleeperBin string
)

func ctx() context.Context { return context.Background() }

func randomHex(n int) string { return fixtures.RandomHex(n) }

// imageSpec describes a hand-made image.
type imageSpec struct {
	tag     string // empty: loaded untagged, i.e. dangling
	created time.Time
	labels  map[string]string
	files   map[string][]byte
}

// loadImage builds an image with go-containerregistry and loads it with POST /images/load. Its
// config's "created" is spec.created, which is what the image prune's `until` compares here.
func loadImage(t testing.TB, spec imageSpec) string {
	t.Helper()
	ids, err := fixtures.Load(ctx(), api, fixtures.Image{Tag: spec.tag, Created: spec.created, Labels: spec.labels, Files: spec.files})
	must(t, err)
	if spec.tag != sleeperImage {
		t.Cleanup(func() { _, _ = api.ImageRemove(ctx(), ids[0], image.RemoveOptions{Force: true, PruneChildren: true}) })
	}
	return ids[0]
}

func withFixtureLabel(labels map[string]string) map[string]string {
	out := map[string]string{fixtureLabel: "true"}
	for k, v := range labels {
		out[k] = v
	}
	return out
}

// danglingImage loads an untagged image created at created.
func danglingImage(t testing.TB, created time.Time, labels map[string]string) string {
	return loadImage(t, imageSpec{created: created, labels: labels})
}

// retagToDangling loads two images under one tag: the first loses its tag and is left dangling.
func retagToDangling(t testing.TB, created time.Time) (dangling, tagged string) {
	tag := "dgp-retag:" + randomHex(4)
	dangling = loadImage(t, imageSpec{tag: tag, created: created})
	tagged = loadImage(t, imageSpec{tag: tag, created: created})
	return dangling, tagged
}

// ensureSleeperImage loads the tagged image holding the sleeper binary.
func ensureSleeperImage(t testing.TB) {
	t.Helper()
	must(t, fixtures.LoadSleeper(ctx(), api, sleeperImage, sleeperBin))
}

// containerSpec describes a test container.
type containerSpec struct {
	name    string
	image   string // default sleeperImage
	labels  map[string]string
	start   bool
	cmd     []string
	restart bool   // restart policy always (with cmd exit: keeps restarting)
	health  bool   // a health check that stays "starting" for an hour
	volume  string // a named volume to mount at /data
	network string // a network to attach
}

func makeContainer(t testing.TB, spec containerSpec) string {
	t.Helper()
	ensureSleeperImage(t)
	if spec.image == "" {
		spec.image = sleeperImage
	}
	if spec.name == "" {
		spec.name = "dgp-e2e-" + randomHex(4)
	}
	cfg := &container.Config{Image: spec.image, Labels: withFixtureLabel(spec.labels), Cmd: spec.cmd}
	if len(cfg.Cmd) == 0 {
		cfg.Cmd = []string{"/sleeper"}
	}
	host := &container.HostConfig{}
	if spec.restart {
		host.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyAlways}
	}
	if spec.health {
		cfg.Healthcheck = &container.HealthConfig{Test: []string{"CMD", "/sleeper", "exit"}, Interval: time.Hour, StartPeriod: time.Hour}
	}
	if spec.volume != "" {
		host.Binds = []string{spec.volume + ":/data"}
	}
	if spec.network != "" {
		host.NetworkMode = container.NetworkMode(spec.network)
	}
	created, err := api.ContainerCreate(ctx(), cfg, host, nil, nil, spec.name)
	must(t, err)
	t.Cleanup(func() { _ = api.ContainerRemove(ctx(), created.ID, container.RemoveOptions{Force: true}) })
	if spec.start {
		must(t, api.ContainerStart(ctx(), created.ID, container.StartOptions{}))
	}
	return created.ID
}

func makeVolume(t testing.TB) string {
	v, err := api.VolumeCreate(ctx(), volume.CreateOptions{Name: "dgp-e2e-" + randomHex(4), Labels: map[string]string{fixtureLabel: "true"}})
	must(t, err)
	t.Cleanup(func() { _ = api.VolumeRemove(ctx(), v.Name, true) })
	return v.Name
}

func makeNetwork(t testing.TB) string {
	n, err := api.NetworkCreate(ctx(), "dgp-e2e-"+randomHex(4), network.CreateOptions{Labels: map[string]string{fixtureLabel: "true"}})
	must(t, err)
	t.Cleanup(func() { _ = api.NetworkRemove(ctx(), n.ID) })
	return n.ID
}

// buildCache runs a BuildKit build that leaves build-cache records behind, and tags the result.
func buildCache(t testing.TB) (tag string) {
	t.Helper()
	tag = "dgp-built:" + randomHex(4)
	must(t, fixtures.Build(ctx(), api, tag))
	t.Cleanup(func() { _, _ = api.ImageRemove(ctx(), tag, image.RemoveOptions{Force: true}) })
	return tag
}

// buildCacheIDs lists build-cache records that the non-all prune may remove.
func buildCacheIDs(t testing.TB) map[string]bool {
	du, err := api.DiskUsage(ctx(), types.DiskUsageOptions{Types: []types.DiskUsageObject{types.BuildCacheObject}})
	must(t, err)
	ids := map[string]bool{}
	for _, r := range du.BuildCache {
		ids[r.ID] = true
	}
	return ids
}

// inventory is every object on the engine, by kind.
type inventory struct {
	images, containers, volumes, networks, cache map[string]bool
}

func takeInventory(t testing.TB) inventory {
	t.Helper()
	inv := inventory{images: map[string]bool{}, containers: map[string]bool{}, volumes: map[string]bool{}, networks: map[string]bool{}}
	imgs, err := api.ImageList(ctx(), image.ListOptions{All: true})
	must(t, err)
	for _, i := range imgs {
		inv.images[i.ID] = true
	}
	cs, err := api.ContainerList(ctx(), container.ListOptions{All: true})
	must(t, err)
	for _, c := range cs {
		inv.containers[c.ID] = true
	}
	vs, err := api.VolumeList(ctx(), volume.ListOptions{})
	must(t, err)
	for _, v := range vs.Volumes {
		inv.volumes[v.Name] = true
	}
	ns, err := api.NetworkList(ctx(), network.ListOptions{})
	must(t, err)
	for _, n := range ns {
		inv.networks[n.ID] = true
	}
	inv.cache = buildCacheIDs(t)
	return inv
}

func exists(kind string, id string) bool {
	var err error
	switch kind {
	case "image":
		_, err = api.ImageInspect(ctx(), id)
	case "container":
		_, err = api.ContainerInspect(ctx(), id)
	case "volume":
		_, err = api.VolumeInspect(ctx(), id)
	case "network":
		_, err = api.NetworkInspect(ctx(), id, network.InspectOptions{})
	}
	return err == nil
}

// serviceSpec describes a swarm service running the sleeper.
type serviceSpec struct {
	name        string
	labels      map[string]string
	replicas    uint64
	constraints []string
}

func makeService(t testing.TB, spec serviceSpec) string {
	t.Helper()
	ensureSleeperImage(t)
	replicas := spec.replicas
	labels := withFixtureLabel(spec.labels)
	s := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: spec.name, Labels: labels},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: sleeperImage, Command: []string{"/sleeper"}, Labels: labels},
			Placement:     &swarm.Placement{Constraints: spec.constraints},
		},
		Mode: swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &replicas}},
	}
	resp, err := api.ServiceCreate(ctx(), s, swarm.ServiceCreateOptions{QueryRegistry: false})
	must(t, err)
	t.Cleanup(func() {
		_ = api.ServiceRemove(ctx(), resp.ID)
		// Task containers go away asynchronously; wait so the next test starts clean.
		waitFor(t, 30*time.Second, func() bool {
			cs, _ := api.ContainerList(ctx(), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "com.docker.swarm.service.id="+resp.ID))})
			return len(cs) == 0
		})
	})
	return resp.ID
}

// waitFor polls cond until it holds or the limit passes.
func waitFor(t testing.TB, limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(200 * time.Millisecond)
	}
	return cond()
}

// dataRoot is the daemon's data root, as GET /info gives it.
func dataRoot(t testing.TB) string {
	info, err := api.Info(ctx())
	must(t, err)
	return info.DockerRootDir
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// result is one run of the plugin binary.
type result struct {
	code    int
	stdout  string
	stderr  string
	report  plugin.Report
	elapsed time.Duration
}

// runPlugin runs the built binary with only the given environment (plus PATH, HOME and
// DOCKER_HOST), as Drone would run the image, and reads the JSON summary it writes.
func runPlugin(t testing.TB, env map[string]string, args ...string) result {
	t.Helper()
	dir := t.TempDir()
	summary := filepath.Join(dir, "summary.json")
	cmd := exec.Command(pluginBin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	if h, ok := os.LookupEnv("DOCKER_HOST"); ok {
		cmd.Env = append(cmd.Env, "DOCKER_HOST="+h)
	}
	if _, ok := env["PLUGIN_SUMMARY_FILE"]; !ok {
		cmd.Env = append(cmd.Env, "PLUGIN_SUMMARY_FILE="+summary)
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
	if exit, ok := err.(*exec.ExitError); ok {
		r.code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(summary); err == nil {
		must(t, json.Unmarshal(data, &r.report))
	}
	t.Logf("plugin exit %d in %s\nstdout:\n%s\nstderr:\n%s", r.code, r.elapsed.Round(time.Millisecond), r.stdout, r.stderr)
	return r
}

// phaseIDs is the set of object IDs a phase reported.
func phaseIDs(r plugin.Report, phase string) map[string]bool {
	p, _ := r.Phase(phase)
	ids := map[string]bool{}
	for _, o := range p.Objects {
		ids[o.ID] = true
	}
	return ids
}

func fmtSet(m map[string]bool) string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	return fmt.Sprint(s)
}
