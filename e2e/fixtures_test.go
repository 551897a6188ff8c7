package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/system"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/plugin"
)

// fixtureLabel marks every image, container, volume, network and service these tests create
// (build-cache records take no labels), so leftovers of an interrupted run can be found with
// `docker ps -a --filter label=dgp.fixture`. Cleanup itself goes by ID, through t.Cleanup.
const fixtureLabel = fixtures.Label

// sleeperImage is the tagged image test containers and services run unless a test names another
// image; being tagged, no prune removes it.
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

// containerdStore is true when the engine keeps images in the containerd image store (Docker 29's
// default on fresh installs) and false on a classic graphdriver store; TestMain sets it. The stores
// differ in an image's ID (classic: the config digest; containerd: the manifest digest, so fixtures
// are found by label or tag) and in what an image prune's `until` compares: the config's "created"
// on the classic store, the image record's creation time on the containerd store, that is when the
// image was loaded, pulled or tagged, or for a dangling image when it was left dangling.
var containerdStore bool

// isContainerdStore reads the store from GET /info: the containerd store reports the driver type
// io.containerd.snapshotter.v1.
func isContainerdStore(info system.Info) bool {
	for _, kv := range info.DriverStatus {
		if len(kv) == 2 && kv[0] == "driver-type" && kv[1] == "io.containerd.snapshotter.v1" {
			return true
		}
	}
	return false
}

// storeName names the engine's image store for messages.
func storeName() string {
	if containerdStore {
		return "containerd"
	}
	return "classic"
}

// waitPastCutoff returns the next whole second after now once the clock has passed it. Everything
// made before the call is older than that cutoff by every clock a prune compares (a container's
// creation, an image config's "created" unless set later, an image record's creation, a build-cache
// record's last use), and everything made after the call is younger, so a test that needs "old"
// objects on both stores makes them, waits, and passes the cutoff as an RFC 3339 until.
func waitPastCutoff() time.Time {
	cutoff := time.Now().Truncate(time.Second).Add(time.Second)
	time.Sleep(time.Until(cutoff) + 100*time.Millisecond)
	return cutoff
}

// rfc3339 is a cutoff as an until setting.
func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// loadImage builds an image with go-containerregistry, loads it with POST /images/load and returns
// the ID the engine lists it under (fixtures.Load finds it by a label unique to it). Its config's
// "created" is spec.created, which the image prune's `until` compares on the classic store; on the
// containerd store it compares the load time (see containerdStore).
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

// leaveDangling makes the image tagged tag dangling now, by moving the tag to the sleeper image
// and removing it from there. The containerd store records the image as dangling (a
// moby-dangling@ record) at this moment, which is what its `until` compares; the classic store
// keeps comparing the config's "created".
func leaveDangling(t testing.TB, tag string) {
	t.Helper()
	ensureSleeperImage(t)
	must(t, api.ImageTag(ctx(), sleeperImage, tag))
	_, err := api.ImageRemove(ctx(), tag, image.RemoveOptions{})
	must(t, err)
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

// makeContainer creates the container (and starts it with spec.start), removed at cleanup.
func makeContainer(t testing.TB, spec containerSpec) string {
	t.Helper()
	ensureSleeperImage(t)
	id, err := createContainer(spec)
	if id != "" {
		t.Cleanup(func() { _ = api.ContainerRemove(ctx(), id, container.RemoveOptions{Force: true}) })
	}
	must(t, err)
	return id
}

// createContainer creates the container (and starts it with spec.start) and returns its ID, also
// when starting it failed. It touches no testing.TB, so it may run off the test goroutine; the
// caller loads the sleeper image first and removes the container.
func createContainer(spec containerSpec) (string, error) {
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
	if err != nil {
		return "", fmt.Errorf("creating container %s: %w", spec.name, err)
	}
	if spec.start {
		if err := api.ContainerStart(ctx(), created.ID, container.StartOptions{}); err != nil {
			return created.ID, fmt.Errorf("starting container %s: %w", spec.name, err)
		}
	}
	return created.ID, nil
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
// It returns once BuildKit has released the build's records (waitCacheReleased).
func buildCache(t testing.TB) (tag string) {
	t.Helper()
	tag = "dgp-built:" + randomHex(4)
	must(t, fixtures.Build(ctx(), api, tag))
	t.Cleanup(func() { _, _ = api.ImageRemove(ctx(), tag, image.RemoveOptions{Force: true}) })
	waitCacheReleased(t)
	return tag
}

// buildCacheIDs lists the IDs of every build-cache record the engine reports, in use or not.
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
	// labels is each image's labels.
	labels map[string]map[string]string
}

func takeInventory(t testing.TB) inventory {
	t.Helper()
	inv := inventory{images: map[string]bool{}, containers: map[string]bool{}, volumes: map[string]bool{}, networks: map[string]bool{}, labels: map[string]map[string]string{}}
	imgs, err := api.ImageList(ctx(), image.ListOptions{All: true})
	must(t, err)
	for _, i := range imgs {
		inv.images[i.ID] = true
		inv.labels[i.ID] = i.Labels
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

// exists says whether the engine has the object (by ID, or name or tag where the engine accepts
// one). Only the engine's "no such object" counts as absent: any other answer (daemon unreachable,
// a server error) fails the test, and so does an empty ID, which the client itself reports as not
// found, so neither can pass for a removed object.
func exists(t testing.TB, kind string, id string) bool {
	t.Helper()
	if strings.TrimSpace(id) == "" {
		t.Fatalf("exists: no %s ID given", kind)
	}
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
	default:
		t.Fatalf("exists: unknown kind %q", kind)
	}
	switch {
	case err == nil:
		return true
	case cerrdefs.IsNotFound(err):
		return false
	}
	t.Fatalf("asking the engine whether %s %s exists: %v", kind, id, err)
	return false
}

// serviceSpec describes a swarm service running the sleeper: replicated with replicas, unless mode
// is set.
type serviceSpec struct {
	name        string
	labels      map[string]string
	replicas    uint64
	constraints []string
	cmd         []string // default /sleeper
	mode        *swarm.ServiceMode
	update      *swarm.UpdateConfig
}

func makeService(t testing.TB, spec serviceSpec) string {
	t.Helper()
	ensureSleeperImage(t)
	replicas := spec.replicas
	labels := withFixtureLabel(spec.labels)
	cmd := spec.cmd
	if len(cmd) == 0 {
		cmd = []string{"/sleeper"}
	}
	mode := swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &replicas}}
	if spec.mode != nil {
		mode = *spec.mode
	}
	s := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: spec.name, Labels: labels},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: sleeperImage, Command: cmd, Labels: labels},
			Placement:     &swarm.Placement{Constraints: spec.constraints},
		},
		Mode:         mode,
		UpdateConfig: spec.update,
	}
	resp, err := api.ServiceCreate(ctx(), s, swarm.ServiceCreateOptions{QueryRegistry: false})
	must(t, err)
	t.Cleanup(func() {
		if err := api.ServiceRemove(ctx(), resp.ID); err != nil {
			t.Errorf("removing service %s: %v", spec.name, err)
			return
		}
		// Task containers go away asynchronously; wait so the next test starts clean. A job's
		// completed task container stays when its service is removed: remove what has exited.
		waitFor(t, 30*time.Second, "the task containers of removed service "+spec.name+" are gone", func() (bool, error) {
			cs, err := api.ContainerList(ctx(), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "com.docker.swarm.service.id="+resp.ID))})
			for _, c := range cs {
				if c.State == "exited" {
					_ = api.ContainerRemove(ctx(), c.ID, container.RemoveOptions{})
				}
			}
			return len(cs) == 0, err
		})
	})
	return resp.ID
}

// waitFor polls cond every 200 ms until it holds or limit passes. If it never holds, or cond
// returns an error, the test fails with what (the thing that did not happen) and waitFor returns
// false; a caller that cannot go on without it stops with t.FailNow.
func waitFor(t testing.TB, limit time.Duration, what string, cond func() (bool, error)) bool {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, err := cond()
		if err != nil {
			t.Errorf("waiting until %s: %v", what, err)
			return false
		}
		if ok {
			return true
		}
		if !time.Now().Before(deadline) {
			t.Errorf("did not happen within %s: %s", limit, what)
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
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

// runPlugin runs the built binary (execPlugin) and fails the test if it could not be run or its
// JSON summary could not be read.
func runPlugin(t testing.TB, env map[string]string, args ...string) result {
	t.Helper()
	r, err := execPlugin(t.TempDir(), env, args...)
	logRun(t, r)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// execPlugin runs the built binary with only the given environment (plus PATH and HOME, and
// DOCKER_HOST from the test's environment unless env sets it), so no setting leaks in from the
// environment of `go test`. Unless env names a summary_file, the plugin writes its JSON summary
// into dir, and execPlugin reads it into the result. A non-zero exit is a result, not an error.
// It touches no testing.TB, so it may run off the test goroutine.
func execPlugin(dir string, env map[string]string, args ...string) (result, error) {
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
		return r, fmt.Errorf("running %s: %w", pluginBin, err)
	}
	if data, err := os.ReadFile(summary); err == nil {
		if err := json.Unmarshal(data, &r.report); err != nil {
			return r, fmt.Errorf("reading the summary file %s: %w", summary, err)
		}
	}
	return r, nil
}

// logRun logs a run's exit, duration and output.
func logRun(t testing.TB, r result) {
	t.Helper()
	t.Logf("plugin exit %d in %s\nstdout:\n%s\nstderr:\n%s", r.code, r.elapsed.Round(time.Millisecond), r.stdout, r.stderr)
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
