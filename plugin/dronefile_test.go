package plugin

import (
	"bytes"
	"errors"
	"io"
	"os"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v2"

	"github.com/drone-gated-prune/drone-gated-prune/internal/droneenv"
)

// pluginImage is the image name the examples use for this plugin.
const pluginImage = "dronegatedprune/drone-gated-prune"

type droneStep struct {
	Name     string         `yaml:"name"`
	Image    string         `yaml:"image"`
	Settings map[any]any    `yaml:"settings"`
	When     map[string]any `yaml:"when"`
	Volumes  []struct {
		Name string `yaml:"name"`
		Path string `yaml:"path"`
	} `yaml:"volumes"`
}

type dronePipeline struct {
	Kind    string         `yaml:"kind"`
	Name    string         `yaml:"name"`
	Steps   []droneStep    `yaml:"steps"`
	Trigger map[string]any `yaml:"trigger"`
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
