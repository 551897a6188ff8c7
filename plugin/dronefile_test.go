package plugin

import (
	"bytes"
	"errors"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v2"

	"github.com/drone-gated-prune/drone-gated-prune/internal/droneenv"
)

// pluginImage is the image name the examples use for this plugin.
const pluginImage = "dronegatedprune/drone-gated-prune"

type droneStep struct {
	Name        string            `yaml:"name"`
	Image       string            `yaml:"image"`
	Settings    map[any]any       `yaml:"settings"`
	Environment map[string]string `yaml:"environment"`
	NetworkMode string            `yaml:"network_mode"`
	DependsOn   []string          `yaml:"depends_on"`
	Failure     string            `yaml:"failure"`
	When        map[string]any    `yaml:"when"`
	Volumes     []struct {
		Name string `yaml:"name"`
		Path string `yaml:"path"`
	} `yaml:"volumes"`
}

type dronePipeline struct {
	Kind    string         `yaml:"kind"`
	Name    string         `yaml:"name"`
	Steps   []droneStep    `yaml:"steps"`
	Trigger map[string]any `yaml:"trigger"`
	Volumes []struct {
		Name string `yaml:"name"`
		Host *struct {
			Path string `yaml:"path"`
		} `yaml:"host"`
	} `yaml:"volumes"`
}

func (p dronePipeline) step(t *testing.T, name string) droneStep {
	t.Helper()
	for _, s := range p.Steps {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("pipeline %s has no step %s", p.Name, name)
	return droneStep{}
}

func pipelineNamed(t *testing.T, ps []dronePipeline, name string) dronePipeline {
	t.Helper()
	for _, p := range ps {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf(".drone.yml has no pipeline %s", name)
	return dronePipeline{}
}

// pinnedImage is an image reference with a version tag: not untagged, not :latest. A runner pulls
// an untagged or :latest image on every run (and fails where it cannot pull), but uses a pinned
// tag that is present on the host.
var pinnedImage = regexp.MustCompile(`^[a-z0-9][a-z0-9._/-]*:[A-Za-z0-9_][A-Za-z0-9_.-]*$`)

func isPinned(image string) bool {
	return pinnedImage.MatchString(image) && !strings.HasSuffix(image, ":latest")
}

func readDroneFile(t *testing.T, path string) []dronePipeline {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var out []dronePipeline
	for {
		var p dronePipeline
		err := dec.Decode(&p)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if p.Kind == "pipeline" {
			out = append(out, p)
		}
	}
}

// Every step in .drone.yml that uses the plugin passes the plugin's own settings
// validation once its settings are encoded by Drone's rules; a wrong key or value fails here.
func TestDroneFileSettingsValidate(t *testing.T) {
	checked := map[string]map[string]string{}
	for _, p := range readDroneFile(t, "../.drone.yml") {
		for _, s := range p.Steps {
			if !strings.HasPrefix(s.Image, pluginImage) {
				continue
			}
			env, err := droneenv.Encode(s.Settings, map[string]string{})
			if err != nil {
				t.Fatalf("%s/%s: %v", p.Name, s.Name, err)
			}
			var environ []string
			for k, v := range env {
				environ = append(environ, k+"="+v)
			}
			sort.Strings(environ)
			if err := CheckEnvironment(environ); err != nil {
				t.Errorf("pipeline %s step %s: %v", p.Name, s.Name, err)
			}
			mounted := false
			for _, v := range s.Volumes {
				mounted = mounted || v.Path == "/var/run/docker.sock"
			}
			if !mounted {
				t.Errorf("pipeline %s step %s does not mount the Docker socket", p.Name, s.Name)
			}
			checked[p.Name] = env
		}
	}
	// The three ways operators use it.
	if env, ok := checked["prune-nightly"]; !ok || env["PLUGIN_FORCE"] == "true" || env["PLUGIN_DRY_RUN"] == "true" {
		t.Errorf("prune-nightly: want the default policy, got %v", env)
	}
	if env, ok := checked["prune-promote"]; !ok || env["PLUGIN_FORCE"] != "true" {
		t.Errorf("prune-promote: want force, got %v", env)
	}
	if env, ok := checked["prune-plan"]; !ok || env["PLUGIN_DRY_RUN"] != "true" {
		t.Errorf("prune-plan: want dry_run, got %v", env)
	}
	cleanup := false
	for name, env := range checked {
		if env["PLUGIN_WAIT"] != "" && !strings.HasPrefix(name, "prune-") {
			cleanup = true
		}
	}
	if !cleanup {
		t.Errorf("no post-run cleanup step with wait in .drone.yml")
	}
}

// A wrong key or value in an example fails the check above: the check itself is tested here.
func TestDroneFileCheckCatchesMistakes(t *testing.T) {
	for _, settings := range []map[any]any{{"treshold": "80"}, {"until": "forever"}, {"all": true}, {"dry_run": "sometimes"}} {
		env, _ := droneenv.Encode(settings, nil)
		var environ []string
		for k, v := range env {
			environ = append(environ, k+"="+v)
		}
		if CheckEnvironment(environ) == nil {
			t.Errorf("settings %v passed validation", settings)
		}
	}
}

// Every step image in .drone.yml and in the pipelines of docs/usage.md is pinned to a version tag,
// the plugin to a full release (MAJOR.MINOR.PATCH), the same one everywhere.
func TestDroneFileImagesPinned(t *testing.T) {
	release := regexp.MustCompile(`^` + regexp.QuoteMeta(pluginImage) + `:[0-9]+\.[0-9]+\.[0-9]+$`)
	plugins := map[string]bool{}
	n := 0
	for _, p := range readDroneFile(t, "../.drone.yml") {
		for _, s := range p.Steps {
			n++
			if !isPinned(s.Image) {
				t.Errorf("pipeline %s step %s: image %q is not pinned to a version tag", p.Name, s.Name, s.Image)
			}
			if strings.HasPrefix(s.Image, pluginImage) {
				plugins[s.Image] = true
				if !release.MatchString(s.Image) {
					t.Errorf("pipeline %s step %s: the plugin image %q is not pinned to a release", p.Name, s.Name, s.Image)
				}
			}
		}
	}
	if n == 0 || len(plugins) != 1 {
		t.Fatalf("%d steps, plugin images %v; want one plugin release throughout", n, plugins)
	}
	docs, err := os.ReadFile("../docs/usage.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`(?m)^\s*(?:- )?image:\s*(\S+)\s*$`).FindAllStringSubmatch(string(docs), -1) {
		if !isPinned(m[1]) || (strings.HasPrefix(m[1], pluginImage) && !plugins[m[1]]) {
			t.Errorf("docs/usage.md: image %q is not pinned, or is another plugin release than .drone.yml's %v", m[1], plugins)
		}
	}
}

func TestPinnedImage(t *testing.T) {
	for image, want := range map[string]bool{
		"golang:1.26.8-bookworm": true, "plugins/docker:20.18.7": true, "dronegatedprune/drone-gated-prune:1.0.0": true,
		"golang": false, "golang:latest": false, "dronegatedprune/drone-gated-prune": false, "plugins/manifest:": false,
	} {
		if isPinned(image) != want {
			t.Errorf("isPinned(%q) = %v, want %v", image, !want, want)
		}
	}
}

// The post-run cleanup runs after the build (depends_on), whatever its outcome (when: status), and
// its failure does not fail the build (failure: ignore; docs/usage.md "2. Post-run cleanup").
func TestDroneFileCleanupStep(t *testing.T) {
	p := pipelineNamed(t, readDroneFile(t, "../.drone.yml"), "ci-with-cleanup")
	cleanup := p.step(t, "cleanup")
	p.step(t, "build")
	if len(cleanup.DependsOn) != 1 || cleanup.DependsOn[0] != "build" {
		t.Errorf("cleanup depends_on %v; want [build]", cleanup.DependsOn)
	}
	if cleanup.Failure != "ignore" {
		t.Errorf("cleanup failure %q; want ignore", cleanup.Failure)
	}
	status, _ := cleanup.When["status"].([]any)
	if len(status) != 2 || status[0] != "success" || status[1] != "failure" {
		t.Errorf("cleanup when.status %v; want [success failure]", cleanup.When["status"])
	}
}

// The project's test step runs the engine tests against the host's engine from inside a container:
// engine tests required, the host socket, the host's network (the loopback registry of the warmth
// test), the data root at its own path (the tests measure it), and TMPDIR and DGP_CACHE on host
// directories mounted at the same paths (tests bind-mount their temporary directories into
// containers the host's engine starts; the CI clients are cached across builds).
func TestDroneFileTestStep(t *testing.T) {
	p := pipelineNamed(t, readDroneFile(t, "../.drone.yml"), "test")
	hostPaths := map[string]string{}
	for _, v := range p.Volumes {
		if v.Host != nil {
			hostPaths[v.Name] = v.Host.Path
		}
	}
	s := p.step(t, "test")
	if s.Environment["DGP_REQUIRE_ENGINE"] != "1" || s.NetworkMode != "host" {
		t.Errorf("test step: DGP_REQUIRE_ENGINE %q, network_mode %q; want 1, host", s.Environment["DGP_REQUIRE_ENGINE"], s.NetworkMode)
	}
	mounted := map[string]string{}
	for _, v := range s.Volumes {
		mounted[v.Path] = hostPaths[v.Name]
	}
	if mounted["/var/run/docker.sock"] != "/var/run/docker.sock" || mounted["/var/lib/docker"] != "/var/lib/docker" {
		t.Errorf("test step does not mount the host's Docker socket and data root at their own paths: %v", mounted)
	}
	for _, dir := range []string{s.Environment["TMPDIR"], s.Environment["DGP_CACHE"]} {
		if dir == "" || mounted[dir] != dir {
			t.Errorf("test step: %q is not a host directory mounted at the same path (mounts %v)", dir, mounted)
		}
	}
}
