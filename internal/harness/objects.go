package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
)

// SleeperImage is the tagged image test containers and services run unless a test names another
// image; being tagged, no prune removes it.
const SleeperImage = "dgp-sleeper:e2e"

// PluginImageTag is the plugin image the tests build (BuildPluginImage).
const PluginImageTag = "dgp-plugin:e2e"

// LoadImage builds an image with go-containerregistry, loads it with POST /images/load and returns
// the ID the engine lists it under (fixtures.Load finds it by a label unique to it); it is removed
// at cleanup. Its config's "created" is spec.Created, which the image prune's `until` compares on
// the classic store; on the containerd store it compares the load time (see ContainerdStore).
func LoadImage(t testing.TB, spec fixtures.Image) string {
	t.Helper()
	ids, err := fixtures.Load(Ctx(), API, spec)
	Must(t, err)
	if spec.Tag != SleeperImage {
		t.Cleanup(func() { _, _ = API.ImageRemove(Ctx(), ids[0], image.RemoveOptions{Force: true, PruneChildren: true}) })
	}
	return ids[0]
}

// WithFixtureLabel is labels with the fixture label added, which marks every image, container,
// volume, network and service the tests create (build-cache records take no labels), so leftovers
// of an interrupted run can be found with `docker ps -a --filter label=dgp.fixture`. Cleanup
// itself goes by ID, through t.Cleanup.
func WithFixtureLabel(labels map[string]string) map[string]string {
	out := map[string]string{fixtures.Label: "true"}
	for k, v := range labels {
		out[k] = v
	}
	return out
}

// DanglingImage loads an untagged image created at created.
func DanglingImage(t testing.TB, created time.Time, labels map[string]string) string {
	return LoadImage(t, fixtures.Image{Created: created, Labels: labels})
}

// EnsureSleeperImage loads the tagged image holding the sleeper binary.
func EnsureSleeperImage(t testing.TB) {
	t.Helper()
	Must(t, fixtures.LoadSleeper(Ctx(), API, SleeperImage, SleeperBin))
}

// Container describes a test container.
type Container struct {
	Name    string
	Image   string // default SleeperImage
	Labels  map[string]string
	Start   bool
	Cmd     []string
	Restart bool   // restart policy always (with Cmd exit: keeps restarting)
	Health  bool   // a health check that stays "starting" for an hour
	Volume  string // a named volume to mount at /data
	Network string // a network to attach
}

// MakeContainer creates the container (and starts it with spec.Start), removed at cleanup.
func MakeContainer(t testing.TB, spec Container) string {
	t.Helper()
	EnsureSleeperImage(t)
	id, err := CreateContainer(spec)
	if id != "" {
		t.Cleanup(func() { _ = API.ContainerRemove(Ctx(), id, container.RemoveOptions{Force: true}) })
	}
	Must(t, err)
	return id
}

// CreateContainer creates the container (and starts it with spec.Start) and returns its ID, also
// when starting it failed. It touches no testing.TB, so it may run off the test goroutine; the
// caller loads the sleeper image first and removes the container.
func CreateContainer(spec Container) (string, error) {
	if spec.Image == "" {
		spec.Image = SleeperImage
	}
	if spec.Name == "" {
		spec.Name = "dgp-e2e-" + fixtures.RandomHex(4)
	}
	cfg := &container.Config{Image: spec.Image, Labels: WithFixtureLabel(spec.Labels), Cmd: spec.Cmd}
	if len(cfg.Cmd) == 0 {
		cfg.Cmd = []string{"/sleeper"}
	}
	host := &container.HostConfig{}
	if spec.Restart {
		host.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyAlways}
	}
	if spec.Health {
		cfg.Healthcheck = &container.HealthConfig{Test: []string{"CMD", "/sleeper", "exit"}, Interval: time.Hour, StartPeriod: time.Hour}
	}
	if spec.Volume != "" {
		host.Binds = []string{spec.Volume + ":/data"}
	}
	if spec.Network != "" {
		host.NetworkMode = container.NetworkMode(spec.Network)
	}
	created, err := API.ContainerCreate(Ctx(), cfg, host, nil, nil, spec.Name)
	if err != nil {
		return "", fmt.Errorf("creating container %s: %w", spec.Name, err)
	}
	if spec.Start {
		if err := API.ContainerStart(Ctx(), created.ID, container.StartOptions{}); err != nil {
			return created.ID, fmt.Errorf("starting container %s: %w", spec.Name, err)
		}
	}
	return created.ID, nil
}

// BuildPluginImage builds the plugin image PluginImageTag from a host-built binary
// (scripts/build-image.sh: the Dockerfile's `host` target, no pull), removed at cleanup, and
// returns its size in bytes.
func BuildPluginImage(t *testing.T) int64 {
	t.Helper()
	cmd := exec.Command("sh", filepath.Join(Root, "scripts", "build-image.sh"), PluginImageTag, "e2e-image")
	cmd.Dir = Root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the image: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		_, _ = API.ImageRemove(Ctx(), PluginImageTag, image.RemoveOptions{Force: true, PruneChildren: true})
	})
	if !ContainerdStore {
		inspect, err := API.ImageInspect(Ctx(), PluginImageTag)
		Must(t, err)
		return inspect.Size
	}
	// The containerd store's Size adds the compressed blobs it keeps beside the unpacked layers;
	// the unpacked size is the one the classic store gives.
	inspect, err := API.ImageInspect(Ctx(), PluginImageTag, client.ImageInspectWithManifests(true))
	Must(t, err)
	var unpacked int64
	for _, m := range inspect.Manifests {
		if m.Kind == image.ManifestKindImage && m.Available && m.ImageData != nil {
			unpacked += m.ImageData.Size.Unpacked
		}
	}
	t.Logf("containerd store: Size %d bytes, unpacked %d bytes", inspect.Size, unpacked)
	if unpacked <= 0 {
		t.Fatalf("the containerd store gives no unpacked size for %s: %+v", PluginImageTag, inspect.Manifests)
	}
	return unpacked
}
