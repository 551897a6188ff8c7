package e2e

import (
	"bytes"
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

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// retagToDangling loads two images under one tag: the first loses its tag and is left dangling.
func retagToDangling(t testing.TB, created time.Time) (dangling, tagged string) {
	tag := "dgp-retag:" + fixtures.RandomHex(4)
	dangling = harness.LoadImage(t, fixtures.Image{Tag: tag, Created: created})
	tagged = harness.LoadImage(t, fixtures.Image{Tag: tag, Created: created})
	return dangling, tagged
}

// leaveDangling makes the image tagged tag dangling now, by moving the tag to the sleeper image
// and removing it from there. The containerd store records the image as dangling (a
// moby-dangling@ record) at this moment, which is what its `until` compares; the classic store
// keeps comparing the config's "created".
func leaveDangling(t testing.TB, tag string) {
	t.Helper()
	harness.EnsureSleeperImage(t)
	harness.Must(t, harness.API.ImageTag(harness.Ctx(), harness.SleeperImage, tag))
	_, err := harness.API.ImageRemove(harness.Ctx(), tag, image.RemoveOptions{})
	harness.Must(t, err)
}

func makeVolume(t testing.TB) string {
	v, err := harness.API.VolumeCreate(harness.Ctx(), volume.CreateOptions{Name: "dgp-e2e-" + fixtures.RandomHex(4), Labels: map[string]string{fixtures.Label: "true"}})
	harness.Must(t, err)
	t.Cleanup(func() { _ = harness.API.VolumeRemove(harness.Ctx(), v.Name, true) })
	return v.Name
}

func makeNetwork(t testing.TB) string {
	n, err := harness.API.NetworkCreate(harness.Ctx(), "dgp-e2e-"+fixtures.RandomHex(4), network.CreateOptions{Labels: map[string]string{fixtures.Label: "true"}})
	harness.Must(t, err)
	t.Cleanup(func() { _ = harness.API.NetworkRemove(harness.Ctx(), n.ID) })
	return n.ID
}

// buildCache runs a BuildKit build that leaves build-cache records behind, and tags the result.
// It returns once BuildKit has released the build's records (waitCacheReleased).
func buildCache(t testing.TB) (tag string) {
	t.Helper()
	tag = "dgp-built:" + fixtures.RandomHex(4)
	harness.Must(t, fixtures.Build(harness.Ctx(), harness.API, tag))
	t.Cleanup(func() { _, _ = harness.API.ImageRemove(harness.Ctx(), tag, image.RemoveOptions{Force: true}) })
	waitCacheReleased(t)
	return tag
}

// buildCacheIDs lists the IDs of every build-cache record the engine reports, in use or not.
func buildCacheIDs(t testing.TB) map[string]bool {
	du, err := harness.API.DiskUsage(harness.Ctx(), types.DiskUsageOptions{Types: []types.DiskUsageObject{types.BuildCacheObject}})
	harness.Must(t, err)
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
	imgs, err := harness.API.ImageList(harness.Ctx(), image.ListOptions{All: true})
	harness.Must(t, err)
	for _, i := range imgs {
		inv.images[i.ID] = true
		inv.labels[i.ID] = i.Labels
	}
	cs, err := harness.API.ContainerList(harness.Ctx(), container.ListOptions{All: true})
	harness.Must(t, err)
	for _, c := range cs {
		inv.containers[c.ID] = true
	}
	vs, err := harness.API.VolumeList(harness.Ctx(), volume.ListOptions{})
	harness.Must(t, err)
	for _, v := range vs.Volumes {
		inv.volumes[v.Name] = true
	}
	ns, err := harness.API.NetworkList(harness.Ctx(), network.ListOptions{})
	harness.Must(t, err)
	for _, n := range ns {
		inv.networks[n.ID] = true
	}
	inv.cache = buildCacheIDs(t)
	return inv
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
	restart     *swarm.RestartPolicy
}

func makeService(t testing.TB, spec serviceSpec) string {
	t.Helper()
	harness.EnsureSleeperImage(t)
	replicas := spec.replicas
	labels := harness.WithFixtureLabel(spec.labels)
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
			ContainerSpec: &swarm.ContainerSpec{Image: harness.SleeperImage, Command: cmd, Labels: labels},
			Placement:     &swarm.Placement{Constraints: spec.constraints},
			RestartPolicy: spec.restart,
		},
		Mode:         mode,
		UpdateConfig: spec.update,
	}
	resp, err := harness.API.ServiceCreate(harness.Ctx(), s, swarm.ServiceCreateOptions{QueryRegistry: false})
	harness.Must(t, err)
	t.Cleanup(func() {
		if err := harness.API.ServiceRemove(harness.Ctx(), resp.ID); err != nil {
			t.Errorf("removing service %s: %v", spec.name, err)
			return
		}
		// Task containers go away asynchronously; wait so the next test starts clean. A job's
		// completed task container stays when its service is removed: remove what has exited.
		harness.WaitFor(t, 30*time.Second, "the task containers of removed service "+spec.name+" are gone", func() (bool, error) {
			cs, err := harness.API.ContainerList(harness.Ctx(), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "com.docker.swarm.service.id="+resp.ID))})
			for _, c := range cs {
				if c.State == "exited" {
					_ = harness.API.ContainerRemove(harness.Ctx(), c.ID, container.RemoveOptions{})
				}
			}
			return len(cs) == 0, err
		})
	})
	return resp.ID
}

// result is one run of the plugin binary.
type result struct {
	code    int
	stdout  string
	stderr  string
	report  report.Report
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
	cmd := exec.Command(harness.PluginBin, args...)
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
		return r, fmt.Errorf("running %s: %w", harness.PluginBin, err)
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
