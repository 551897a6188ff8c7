package ciclients

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
	"gopkg.in/yaml.v2"

	"github.com/drone-gated-prune/drone-gated-prune/internal/droneenv"
	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
	"github.com/drone-gated-prune/drone-gated-prune/plugin"
)

// droneDoc is one pipeline of a .drone.yml, as far as the tests read it.
type droneDoc struct {
	Name  string `yaml:"name"`
	Steps []struct {
		Name        string            `yaml:"name"`
		Image       string            `yaml:"image"`
		Settings    map[any]any       `yaml:"settings"`
		Environment map[string]string `yaml:"environment"`
	} `yaml:"steps"`
}

// dronePipelines reads every document of a .drone.yml.
func dronePipelines(t *testing.T, data []byte) []droneDoc {
	t.Helper()
	var docs []droneDoc
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc droneDoc
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			return docs
		} else {
			harness.Must(t, err)
		}
		docs = append(docs, doc)
	}
}

// stepSettings reads one plugin step's settings from .drone.yml and encodes them by Drone's rules.
func stepSettings(t *testing.T, pipeline string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(harness.Root, ".drone.yml"))
	harness.Must(t, err)
	for _, doc := range dronePipelines(t, data) {
		if doc.Name != pipeline {
			continue
		}
		for _, s := range doc.Steps {
			if strings.Contains(s.Image, "drone-gated-prune") {
				env, err := droneenv.Encode(s.Settings, nil)
				harness.Must(t, err)
				return env
			}
		}
	}
	t.Fatalf("no plugin step in pipeline %s", pipeline)
	return nil
}

// containerRun is one run of the plugin image.
type containerRun struct {
	code           int
	stdout, stderr string
	report         report.Report
}

// runImage runs the plugin image as drone-runner-docker runs a plugin step: the host socket
// bind-mounted, settings and DRONE_* variables in the environment, the runner's labels on the
// container. outDir is mounted at /out for the summary and outputs files.
func runImage(t *testing.T, env map[string]string, labels map[string]string, outDir string) containerRun {
	t.Helper()
	return runImageAs(t, "", "", env, labels, outDir)
}

// runImageAs is runImage with the container's name and network mode set, as a CI that names its
// step containers (and may share a job container's network) would.
func runImageAs(t *testing.T, name, networkMode string, env map[string]string, labels map[string]string, outDir string) containerRun {
	t.Helper()
	var environ []string
	for k, v := range env {
		environ = append(environ, k+"="+v)
	}
	environ = append(environ, "PLUGIN_SUMMARY_FILE=/out/summary.json")
	labels[fixtures.Label] = "true"
	created, err := harness.API.ContainerCreate(harness.Ctx(), &container.Config{Image: harness.PluginImageTag, Env: environ, Labels: labels},
		&container.HostConfig{Binds: []string{"/var/run/docker.sock:/var/run/docker.sock", outDir + ":/out"}, NetworkMode: container.NetworkMode(networkMode)}, nil, nil, name)
	harness.Must(t, err)
	defer func() {
		_ = harness.API.ContainerRemove(harness.Ctx(), created.ID, container.RemoveOptions{Force: true})
	}()
	harness.Must(t, harness.API.ContainerStart(harness.Ctx(), created.ID, container.StartOptions{}))
	waitC, errC := harness.API.ContainerWait(harness.Ctx(), created.ID, container.WaitConditionNotRunning)
	var r containerRun
	select {
	case w := <-waitC:
		r.code = int(w.StatusCode)
	case err := <-errC:
		t.Fatal(err)
	case <-time.After(2 * time.Minute):
		t.Fatal("plugin container did not finish")
	}
	logs, err := harness.API.ContainerLogs(harness.Ctx(), created.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	harness.Must(t, err)
	var stdout, stderr bytes.Buffer
	_, err = stdcopy.StdCopy(&stdout, &stderr, logs)
	logs.Close()
	harness.Must(t, err)
	r.stdout, r.stderr = stdout.String(), stderr.String()
	if data, err := os.ReadFile(filepath.Join(outDir, "summary.json")); err == nil {
		harness.Must(t, json.Unmarshal(data, &r.report))
	}
	t.Logf("image exit %d\nstdout:\n%s\nstderr:\n%s", r.code, strings.ReplaceAll(r.stdout, "\x1b", "ESC"), r.stderr)
	return r
}

// decodeCard finds the one card in a step's stdout and decodes it.
func decodeCard(t *testing.T, stdout string) map[string]any {
	t.Helper()
	if n := strings.Count(stdout, "\x1b]1338;"); n != 1 {
		t.Fatalf("want exactly one card, found %d", n)
	}
	start := strings.Index(stdout, "\x1b]1338;")
	if start > 0 && stdout[start-1] != '\n' {
		t.Errorf("the card does not start its own line")
	}
	rest := stdout[start+len("\x1b]1338;"):]
	end := strings.Index(rest, "\x1b]0m")
	if end < 0 {
		t.Fatal("card has no terminator")
	}
	raw, err := base64.StdEncoding.DecodeString(rest[:end])
	harness.Must(t, err)
	var card struct {
		Schema string         `json:"schema"`
		Data   map[string]any `json:"data"`
	}
	harness.Must(t, json.Unmarshal(raw, &card))
	if card.Schema != report.CardSchema {
		t.Errorf("card schema %q", card.Schema)
	}
	return card.Data
}

// droneEnv and droneLabels describe the plugin's step as part of build 101 of acme/ci-host, or,
// when the tests run inside a Drone step, of the enclosing build (harness.DroneBuildAs), whose running
// test step would otherwise be another build's live run.
func droneEnv(event string, extra map[string]string) map[string]string {
	slug, number := harness.DroneBuildAs("acme/ci-host", 101)
	owner, name, _ := strings.Cut(slug, "/")
	env := map[string]string{"CI": "true", "DRONE": "true", "DRONE_REPO": slug, "DRONE_REPO_OWNER": owner, "DRONE_REPO_NAME": name,
		"DRONE_BUILD_NUMBER": strconv.Itoa(number), "DRONE_BUILD_EVENT": event, "DRONE_BUILD_STATUS": "success", "DRONE_STAGE_NAME": "default",
		"DRONE_STEP_NAME": "prune", "DRONE_CARD_PATH": "/dev/stdout", "DRONE_SYSTEM_HOST": "drone.example.com"}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

func droneLabels() map[string]string {
	slug, number := harness.DroneBuildAs("acme/ci-host", 101)
	return map[string]string{"io.drone": "true", "io.drone.repo.slug": slug, "io.drone.build.number": strconv.Itoa(number), "io.drone.step.name": "prune"}
}

// The image, run as Drone runs it, for a cron build and a promote build; and under Woodpecker.
// Proves SPEC "Where it is used" (cron, manual promote, Woodpecker), "The summary" (the Drone card
// on /dev/stdout, $DRONE_OUTPUT, no card without DRONE_CARD_PATH) and "Settings" disk_path auto
// inside a container; docs/usage.md "The three pipelines", "Which daemon and which disk" and
// "Woodpecker CI".
func TestImageAsDroneRunsIt(t *testing.T) {
	if s := harness.EngineSocket(); s != "/var/run/docker.sock" {
		// runImage binds the host's /var/run/docker.sock into the plugin's container: on any other
		// engine the plugin would measure and prune the host's engine, not the tests' one.
		t.Skipf("the tests' engine is at %s; runImage binds the host's /var/run/docker.sock", s)
	}
	size := harness.BuildPluginImage(t)
	t.Logf("image size: %d bytes (%.1f MB)", size, float64(size)/1e6)
	if size > 15_000_000 {
		t.Errorf("image is %d bytes, above the 15 MB target", size)
	}

	t.Run("cron", func(t *testing.T) {
		old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
		settings := stepSettings(t, "prune-nightly")
		threshold, err := plugin.ParsePercent(settings["PLUGIN_THRESHOLD"])
		harness.Must(t, err)
		env := droneEnv("cron", map[string]string{"DRONE_BUILD_TRIGGER": "@cron"})
		for k, v := range settings {
			env[k] = v
		}
		host, err := plugin.Measure(harness.DataRoot(t), "host")
		harness.Must(t, err)
		r := runImage(t, env, droneLabels(), t.TempDir())
		if host.UsedPercent() >= threshold-1 {
			t.Skipf("this host is %.1f%% used, too close to the nightly threshold %g%% for the below-threshold check", host.UsedPercent(), threshold)
		}
		if r.code != 0 || r.report.Decision != report.DecisionKeptCache || !harness.Exists(t, "image", old) {
			t.Fatalf("exit %d decision %q old image kept %v; want 0, %q, true", r.code, r.report.Decision, harness.Exists(t, "image", old), report.DecisionKeptCache)
		}
		card := decodeCard(t, r.stdout)
		if card["decision"] != report.DecisionKeptCache {
			t.Errorf("card decision %v", card["decision"])
		}
		// Inside the container the data root is not mounted, so / is measured: on overlay storage
		// it is the filesystem holding the data root, which the figures must show.
		d := r.report.DiskBefore
		if d == nil || d.Path != "/" || !strings.Contains(d.Why, "not visible") {
			t.Fatalf("auto disk_path in the container: %+v", d)
		}
		if d.TotalBytes != host.TotalBytes || d.TotalInodes != host.TotalInodes || abs(d.UsedPercent()-host.UsedPercent()) > 0.5 {
			t.Errorf("container measured %s; host data root is %s", d, host)
		}
		t.Logf("container /: %s\nhost data root: %s", d, host)
	})

	t.Run("promote", func(t *testing.T) {
		old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
		var cutoff time.Time
		if harness.ContainerdStore {
			cutoff = harness.WaitPastCutoff()
		}
		young := harness.DanglingImage(t, time.Now().Add(-time.Hour), nil)
		settings := stepSettings(t, "prune-promote")
		env := droneEnv("promote", map[string]string{"DRONE_DEPLOY_TO": "prune", "DRONE_BUILD_PARENT": "100", "DRONE_OUTPUT": "/out/output.env"})
		for k, v := range settings {
			env[k] = v
		}
		if harness.ContainerdStore {
			// The pipeline's until (24h) compares the image records' times on this store, which no
			// fixture can backdate: until falls between the two loads instead.
			env["PLUGIN_UNTIL"] = harness.RFC3339(cutoff)
		}
		// The runner's other step containers of this build are running: not a live run.
		harness.MakeContainer(t, harness.Container{Start: true, Labels: droneLabels()})
		out := t.TempDir()
		r := runImage(t, env, droneLabels(), out)
		if r.code != 0 && r.code != outcome.ExitPolicy {
			t.Fatalf("exit %d", r.code)
		}
		if r.report.Decision != report.DecisionPruned || harness.Exists(t, "image", old) || !harness.Exists(t, "image", young) {
			t.Fatalf("decision %q; old image removed %v, young kept %v", r.report.Decision, !harness.Exists(t, "image", old), harness.Exists(t, "image", young))
		}
		card := decodeCard(t, r.stdout)
		if card["decision"] != report.DecisionPruned || card["objects"].(float64) < 1 {
			t.Errorf("card %v", card)
		}
		outputs, err := os.ReadFile(filepath.Join(out, "output.env"))
		harness.Must(t, err)
		for _, want := range []string{"DECISION=pruned\n", "IMAGES_STATUS=removed\n", "DISK_PERCENT_BEFORE="} {
			if !strings.Contains(string(outputs), want) {
				t.Errorf("DRONE_OUTPUT lacks %q:\n%s", want, outputs)
			}
		}
	})

	t.Run("woodpecker", func(t *testing.T) {
		// Woodpecker sets CI_* and a few DRONE_* copies, but no DRONE_CARD_PATH.
		env := map[string]string{"CI": "woodpecker", "CI_REPO": "acme/ci-host", "CI_PIPELINE_NUMBER": "55", "CI_PIPELINE_EVENT": "manual",
			"DRONE_BUILD_NUMBER": "55", "DRONE_BUILD_EVENT": "manual", "DRONE_BUILD_STATUS": "success",
			"PLUGIN_DRY_RUN": "true", "PLUGIN_FORCE": "true", "PLUGIN_RUN_LABELS": "wp_uuid"}
		r := runImage(t, env, map[string]string{"wp_uuid": "self", "wp_step": "prune"}, t.TempDir())
		if r.code != 0 || r.report.Decision != report.DecisionDryRun {
			t.Fatalf("exit %d decision %q", r.code, r.report.Decision)
		}
		if strings.Contains(r.stdout, "\x1b]1338;") {
			t.Errorf("a card was written without DRONE_CARD_PATH")
		}
	})
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}
