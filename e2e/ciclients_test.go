package e2e

// The plugin image run by the real CI clients, not by a test imitating them: drone-runner-docker
// v1.8.3 (`exec`, which compiles and runs one pipeline of a .drone.yml exactly as a runner does:
// settings encoded as PLUGIN_*, the io.drone.* labels, a network per build, host volumes) and
// woodpecker-cli v1.0.5 (`exec` with the docker backend). scripts/ci-clients.sh builds both from Go
// module source once and caches them; the plugin image is built here and pinned to a local tag,
// since nothing can be pulled.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"gopkg.in/yaml.v2"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/plugin"
)

const (
	ciDroneClient      = "drone-runner-docker"
	ciWoodpeckerClient = "woodpecker-cli"
	// The image name the repository's .drone.yml uses; the tests run pluginImageTag in its place.
	ciPublishedImage = "dronegatedprune/drone-gated-prune"
	// Where a step finds the host socket, and where the plugin writes its JSON summary.
	ciStepSocket  = "/var/run/docker.sock"
	ciStepOutDir  = "/dgp-out"
	ciSummaryName = "summary.json"
	// The only label Woodpecker 1.0.5's docker backend puts on a step container (its step UUID).
	ciWoodpeckerStepLabel = "wp_uuid"
	// The cc-ci run-stack pattern: its {1,4} holds a comma.
	ciCCCIPattern = "^[a-z0-9]{1,4}-[0-9a-f]{6}_ci_commoninternet_net_"
)

// ciClients holds what scripts/ci-clients.sh answered, once per test binary.
var ciClients struct {
	once  sync.Once
	paths map[string]string
	err   error
	took  time.Duration
}

// ciClient returns the path of a CI client binary, building it on the first call (minutes) and
// reusing the cached binary after. A build that fails skips the test, or fails it under
// DGP_REQUIRE_ENGINE=1.
func ciClient(t *testing.T, name string) string {
	t.Helper()
	ciClients.once.Do(func() {
		start := time.Now()
		cmd := exec.Command("sh", "../scripts/ci-clients.sh", ciDroneClient, ciWoodpeckerClient)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		ciClients.took = time.Since(start)
		ciClients.paths = map[string]string{}
		sc := bufio.NewScanner(&stdout)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), "="); ok {
				ciClients.paths[k] = v
			}
		}
		if err != nil {
			ciClients.err = fmt.Errorf("scripts/ci-clients.sh: %v\n%s", err, stderr.String())
		}
	})
	path := ciClients.paths[name]
	if path != "" {
		if _, err := os.Stat(path); err == nil {
			t.Logf("%s: %s (scripts/ci-clients.sh took %s)", name, path, ciClients.took.Round(time.Millisecond))
			return path
		}
	}
	msg := fmt.Sprintf("no %s binary: %v", name, ciClients.err)
	if os.Getenv("DGP_REQUIRE_ENGINE") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// ciHostSocket is the path of the engine's unix socket on this host, which the pipelines mount
// into their steps: the tests' engine, wherever DOCKER_HOST points.
func ciHostSocket(t *testing.T) string {
	t.Helper()
	host := api.DaemonHost()
	path, ok := strings.CutPrefix(host, "unix://")
	if !ok {
		t.Skipf("the CI clients mount the engine's socket into the plugin step; the engine is at %s, not a unix socket", host)
	}
	return path
}

// ciClientEnv is the environment a CI client process gets: no CI_*, DRONE_* or PLUGIN_* variables
// from the environment of `go test` (woodpecker-cli reads its metadata flags from CI_*).
func ciClientEnv(extra ...string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for _, k := range []string{"DOCKER_HOST", "DOCKER_API_VERSION", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY", "DOCKER_CONFIG", "TMPDIR"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return append(env, extra...)
}

var (
	ciPublishedImageLine = regexp.MustCompile(`(?m)^(\s*image:\s*)` + regexp.QuoteMeta(ciPublishedImage) + `[ \t]*$`)
	ciHostSocketPath     = regexp.MustCompile(`(?m)^(\s*host:\s*\n\s*path:\s*)` + regexp.QuoteMeta(ciStepSocket) + `[ \t]*$`)
)

// ciLocalDroneYAML writes a copy of the repository's .drone.yml into a new directory with the plugin
// image pinned to the local tag (and the host socket path set to the tests' engine), and returns
// the file's path. The real .drone.yml is not touched.
func ciLocalDroneYAML(t *testing.T, socket string) string {
	t.Helper()
	data, err := os.ReadFile("../.drone.yml")
	must(t, err)
	if n := len(ciPublishedImageLine.FindAllIndex(data, -1)); n < 3 {
		t.Fatalf(".drone.yml names the plugin image %s in %d steps; want at least the nightly, promote and plan steps", ciPublishedImage, n)
	}
	data = ciPublishedImageLine.ReplaceAll(data, []byte("${1}"+pluginImageTag))
	if socket != ciStepSocket {
		data = ciHostSocketPath.ReplaceAll(data, []byte("${1}"+socket))
	}
	// The pipelines the tests run now name the local image in every step.
	images := map[string][]string{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc struct {
			Name  string `yaml:"name"`
			Steps []struct {
				Image string `yaml:"image"`
			} `yaml:"steps"`
		}
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else {
			must(t, err)
		}
		for _, s := range doc.Steps {
			images[doc.Name] = append(images[doc.Name], s.Image)
		}
	}
	for _, p := range []string{"prune-plan", "prune-promote", "prune-nightly"} {
		if len(images[p]) != 1 || images[p][0] != pluginImageTag {
			t.Fatalf("pipeline %s in the rewritten .drone.yml runs %q; want [%s]", p, images[p], pluginImageTag)
		}
	}
	return ciWriteFile(t, t.TempDir(), ".drone.yml", string(data))
}

func ciWriteFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	must(t, os.WriteFile(path, []byte(content), 0o644))
	return path
}

// ciDroneBuild is one `drone-runner-docker exec` of one pipeline: the repository and build it
// pretends to be, and where the plugin's summary lands.
type ciDroneBuild struct {
	bin    string
	file   string // the .drone.yml; the runner runs in its directory (exec mounts it as the workspace)
	slug   string // --repo-slug, also the io.drone.repo.slug label: unique per test
	number int    // --build-number
	outDir string // mounted at ciStepOutDir in every step
}

func newCIDroneBuild(t *testing.T, bin, file, slug string, number int) ciDroneBuild {
	t.Helper()
	b := ciDroneBuild{bin: bin, file: file, slug: slug, number: number, outDir: t.TempDir()}
	t.Cleanup(func() { ciRemoveDroneObjects(t, slug) })
	return b
}

// command is the runner's command line for stage with extra flags (--build-event and so on).
// Like a runner configured with DRONE_RUNNER_VOLUMES and DRONE_RUNNER_ENVIRON, exec mounts outDir
// into every step and tells the plugin to write its summary there; the pipeline is unchanged.
func (b ciDroneBuild) command(ctx context.Context, stage string, extra ...string) *exec.Cmd {
	args := []string{"exec",
		"--stage-name", stage,
		"--repo-trusted",
		"--repo-slug", b.slug,
		"--repo-namespace", strings.Split(b.slug, "/")[0],
		"--repo-name", strings.Split(b.slug, "/")[1],
		"--build-number", fmt.Sprint(b.number),
		"--volumes", b.outDir + ":" + ciStepOutDir,
		"--environ", "PLUGIN_SUMMARY_FILE=" + ciStepOutDir + "/" + ciSummaryName,
		"--dump",
	}
	args = append(args, extra...)
	args = append(args, b.file)
	cmd := exec.CommandContext(ctx, b.bin, args...)
	cmd.Dir = filepath.Dir(b.file)
	cmd.Env = ciClientEnv()
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// ciDroneStep is one step of the runner's --dump.
type ciDroneStep struct {
	Name     string `json:"name"`
	Status   string `json:"status"`
	ExitCode int    `json:"exit_code"`
}

// ciDroneResult is what one exec reported: the runner's exit status, the steps' log lines, the
// state it dumped, and the plugin's JSON summary when it wrote one.
type ciDroneResult struct {
	code      int
	logs      string
	steps     []ciDroneStep
	report    plugin.Report
	hasReport bool
	elapsed   time.Duration
}

// run execs one stage to its end.
func (b ciDroneBuild) run(t *testing.T, stage string, extra ...string) ciDroneResult {
	t.Helper()
	c, cancel := context.WithTimeout(ctx(), 3*time.Minute)
	defer cancel()
	_ = os.Remove(filepath.Join(b.outDir, ciSummaryName))
	cmd := b.command(c, stage, extra...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	return b.result(t, stage, err, stdout.String(), stderr.String(), time.Since(start))
}

func (b ciDroneBuild) result(t *testing.T, stage string, err error, stdout, stderr string, elapsed time.Duration) ciDroneResult {
	t.Helper()
	r := ciDroneResult{elapsed: elapsed}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	case err != nil:
		t.Fatalf("running %s exec %s: %v\n%s%s", ciDroneClient, stage, err, stdout, stderr)
	}
	// --dump prints the state as indented JSON after the step logs.
	i := strings.LastIndex(stdout, "{\n  \"Build\":")
	if i < 0 {
		t.Fatalf("%s exec %s (exit %d) dumped no state:\nstdout:\n%s\nstderr:\n%s", ciDroneClient, stage, r.code, stdout, stderr)
	}
	r.logs = stdout[:i]
	var state struct {
		Stage struct {
			Steps []ciDroneStep `json:"steps"`
		} `json:"Stage"`
	}
	if err := json.Unmarshal([]byte(stdout[i:]), &state); err != nil {
		t.Fatalf("reading the runner's state dump: %v", err)
	}
	r.steps = state.Stage.Steps
	t.Logf("%s exec %s: exit %d in %s, steps %+v\nlogs:\n%s\nstderr:\n%s", ciDroneClient, stage, r.code, elapsed.Round(time.Millisecond), r.steps, r.logs, stderr)
	if data, err := os.ReadFile(filepath.Join(b.outDir, ciSummaryName)); err == nil {
		must(t, json.Unmarshal(data, &r.report))
		r.hasReport = true
	}
	return r
}

// wantPluginStep checks that the runner ran step, the plugin exited code in it, the runner
// reported that exit code and status for the step and exited 0 (1 when the step failed), and the
// plugin's summary went through the runner's log and to the summary file.
func (r ciDroneResult) wantPluginStep(t *testing.T, step string, code int) {
	t.Helper()
	var got *ciDroneStep
	for i := range r.steps {
		if r.steps[i].Name == step {
			got = &r.steps[i]
		}
	}
	if got == nil {
		t.Fatalf("the runner ran no step %q (steps %+v)", step, r.steps)
	}
	wantStatus, wantRunner := "success", 0
	if code != 0 {
		wantStatus, wantRunner = "failure", 1
	}
	if got.ExitCode != code || got.Status != wantStatus || r.code != wantRunner {
		t.Fatalf("runner: step %s exit %d status %q, runner exit %d; want %d, %q, %d", step, got.ExitCode, got.Status, r.code, code, wantStatus, wantRunner)
	}
	if !r.hasReport {
		t.Fatalf("the plugin wrote no summary file")
	}
	if r.report.ExitCode != code {
		t.Errorf("the summary says exit %d, the runner saw %d", r.report.ExitCode, code)
	}
	if line := fmt.Sprintf("] decision: %s\n", r.report.Decision); !strings.Contains(r.logs, "["+step+":") || !strings.Contains(r.logs, line) {
		t.Errorf("the runner's log of step %s lacks the summary line %q", step, strings.TrimPrefix(line, "] "))
	}
}

// ciRemoveDroneObjects removes what the runner left behind for the repository slug (after a killed
// exec): its containers, networks and volumes all carry io.drone.repo.slug.
func ciRemoveDroneObjects(t *testing.T, slug string) {
	f := filters.NewArgs(filters.Arg("label", "io.drone.repo.slug="+slug))
	cs, err := api.ContainerList(ctx(), container.ListOptions{All: true, Filters: f})
	if err != nil {
		t.Errorf("listing the containers of %s: %v", slug, err)
	}
	for _, c := range cs {
		_ = api.ContainerRemove(ctx(), c.ID, container.RemoveOptions{Force: true})
	}
	ns, _ := api.NetworkList(ctx(), network.ListOptions{Filters: f})
	for _, n := range ns {
		_ = api.NetworkRemove(ctx(), n.ID)
	}
	vs, _ := api.VolumeList(ctx(), volume.ListOptions{Filters: f})
	for _, v := range vs.Volumes {
		_ = api.VolumeRemove(ctx(), v.Name, true)
	}
}

// ciProcess is a CI client process left running (a busy build or workflow).
type ciProcess struct {
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan error
}

func startCIProcess(t *testing.T, cmd *exec.Cmd, cancel context.CancelFunc) *ciProcess {
	t.Helper()
	bg := &ciProcess{cmd: cmd, out: &bytes.Buffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = bg.out, bg.out
	must(t, cmd.Start())
	go func() { bg.done <- cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-bg.done:
		default:
			_ = cmd.Process.Kill()
			<-bg.done
		}
		cancel()
	})
	return bg
}

// running reports whether the process is still running (it must be, while the test relies on it).
func (bg *ciProcess) running() bool {
	select {
	case err := <-bg.done:
		bg.done <- err
		return false
	default:
		return true
	}
}

// interrupt stops the client as an operator's Ctrl-C (or a cancelled build) does, and waits for
// it to tear its build down and exit.
func (bg *ciProcess) interrupt(t *testing.T) {
	t.Helper()
	must(t, bg.cmd.Process.Signal(os.Interrupt))
	select {
	case err := <-bg.done:
		bg.done <- err
		t.Logf("interrupted %s: %v\n%s", filepath.Base(bg.cmd.Path), err, bg.out.String())
	case <-time.After(90 * time.Second):
		t.Fatalf("%s did not exit within 90s of an interrupt:\n%s", filepath.Base(bg.cmd.Path), bg.out.String())
	}
}

// ciRunningContainer waits until exactly one running container matches f and returns it.
func ciRunningContainer(t *testing.T, what string, f filters.Args) container.Summary {
	t.Helper()
	f.Add("status", "running")
	var found []container.Summary
	if !waitFor(t, 90*time.Second, what+" is running", func() (bool, error) {
		var err error
		found, err = api.ContainerList(ctx(), container.ListOptions{Filters: f})
		return len(found) > 0, err
	}) {
		t.FailNow()
	}
	if len(found) != 1 {
		t.Fatalf("%d running containers for %s; want 1", len(found), what)
	}
	return found[0]
}

func ciContainerName(c container.Summary) string {
	if len(c.Names) == 0 {
		return c.ID
	}
	return strings.TrimPrefix(c.Names[0], "/")
}

// ciNoRunVerdict is the no-run verdict of a report.
func ciNoRunVerdict(t *testing.T, r plugin.Report) gates.Verdict {
	t.Helper()
	v, ok := r.Gate(gates.NoRunGate)
	if !ok {
		t.Fatalf("the no-run gate was not evaluated (decision %q, error %q)", r.Decision, r.Error)
	}
	return v
}

// ciWantSkippedBy checks that a run was skipped by the no-run gate alone, and that its evidence
// names the container name and nothing else.
func ciWantSkippedBy(t *testing.T, r plugin.Report, name string) {
	t.Helper()
	v := ciNoRunVerdict(t, r)
	if r.Decision != "skipped: "+gates.NoRunGate || v.Open {
		t.Fatalf("decision %q, no-run gate open %v (%s); want skipped by %s", r.Decision, v.Open, v.Reason, gates.NoRunGate)
	}
	if len(v.Evidence) == 0 {
		t.Fatalf("the no-run gate closed with no evidence")
	}
	for _, e := range v.Evidence {
		if !strings.Contains(e, fmt.Sprintf("%q", name)) {
			t.Errorf("no-run evidence %q does not name the live run's container %s", e, name)
		}
	}
}

// ciWantNoRunOpen checks that the no-run gate was evaluated, found nothing and was not
// blind (it looked for something).
func ciWantNoRunOpen(t *testing.T, r plugin.Report) {
	t.Helper()
	v := ciNoRunVerdict(t, r)
	if !v.Open || len(v.Evidence) > 0 {
		t.Fatalf("no-run gate open %v: %s %q; want open with no live run", v.Open, v.Reason, v.Evidence)
	}
	for _, w := range v.Warnings {
		if strings.Contains(w, "BLIND") {
			t.Fatalf("the no-run gate is blind: %s", w)
		}
	}
	if strings.HasPrefix(r.Decision, "skipped") || r.Decision == plugin.DecisionError {
		t.Fatalf("decision %q", r.Decision)
	}
}

func TestCIClients(t *testing.T) {
	socket := ciHostSocket(t)
	// Both clients before the image: without them (and without DGP_REQUIRE_ENGINE) there is
	// nothing to build the image for.
	ciClient(t, ciDroneClient)
	ciClient(t, ciWoodpeckerClient)
	start := time.Now()
	buildPluginImage(t)
	t.Logf("plugin image %s built in %s", pluginImageTag, time.Since(start).Round(time.Millisecond))
	ensureSleeperImage(t)
	droneYAML := ciLocalDroneYAML(t, socket)

	t.Run("drone/prune-plan", func(t *testing.T) {
		b := newCIDroneBuild(t, ciClient(t, ciDroneClient), droneYAML, "dgp-e2e/"+randomHex(4), 20)
		old := danglingImage(t, time.Now().Add(-48*time.Hour), nil)
		young := danglingImage(t, time.Now().Add(-time.Hour), nil)
		r := b.run(t, "prune-plan", "--build-event", "promote", "--build-target", "prune-plan")
		r.wantPluginStep(t, "plan", 0)
		if r.report.Decision != plugin.DecisionDryRun || !r.report.DryRun || !r.report.Forced {
			t.Fatalf("decision %q dry run %v forced %v; want %q, a forced dry run", r.report.Decision, r.report.DryRun, r.report.Forced, plugin.DecisionDryRun)
		}
		ciWantNoRunOpen(t, r.report)
		planned := phaseIDs(r.report, plugin.PhaseImages)
		if !planned[old] || planned[young] {
			t.Errorf("image plan %s; want the 48h-old dangling image %s and not the 1h-old %s", fmtSet(planned), old, young)
		}
		if !exists(t, "image", old) || !exists(t, "image", young) {
			t.Errorf("the plan removed an image")
		}
		if !strings.Contains(r.logs, old[len("sha256:"):][:12]) {
			t.Errorf("the plan in the runner's log does not list %s", old)
		}
	})

	t.Run("drone/prune-promote", func(t *testing.T) {
		b := newCIDroneBuild(t, ciClient(t, ciDroneClient), droneYAML, "dgp-e2e/"+randomHex(4), 21)
		old := danglingImage(t, time.Now().Add(-48*time.Hour), nil)
		young := danglingImage(t, time.Now().Add(-time.Hour), nil)
		r := b.run(t, "prune-promote", "--build-event", "promote", "--build-target", "prune")
		want := 0
		if r.report.CeilingBreached {
			want = plugin.ExitPolicy
		}
		r.wantPluginStep(t, "prune", want)
		if r.report.Decision != plugin.DecisionPruned || r.report.DryRun {
			t.Fatalf("decision %q dry run %v; want %q", r.report.Decision, r.report.DryRun, plugin.DecisionPruned)
		}
		ciWantNoRunOpen(t, r.report)
		if removed := phaseIDs(r.report, plugin.PhaseImages); !removed[old] || removed[young] {
			t.Errorf("images removed %s; want the 48h-old %s and not the 1h-old %s", fmtSet(removed), old, young)
		}
		if exists(t, "image", old) || !exists(t, "image", young) {
			t.Errorf("old dangling image still there %v, young one kept %v; want false, true", exists(t, "image", old), exists(t, "image", young))
		}
	})

	t.Run("drone/prune-nightly", func(t *testing.T) {
		threshold := 80.0 // prune-nightly's threshold
		if !strings.Contains(string(ciReadFile(t, droneYAML)), "threshold: \"80\"") {
			t.Fatalf(".drone.yml no longer sets threshold \"80\"; update this test")
		}
		host, err := plugin.Measure(dataRoot(t), "host")
		must(t, err)
		if host.UsedPercent() >= threshold-1 {
			t.Skipf("this host is %.1f%% used, too close to the nightly threshold %g%% for the below-threshold check", host.UsedPercent(), threshold)
		}
		b := newCIDroneBuild(t, ciClient(t, ciDroneClient), droneYAML, "dgp-e2e/"+randomHex(4), 22)
		old := danglingImage(t, time.Now().Add(-48*time.Hour), nil)
		r := b.run(t, "prune-nightly", "--build-event", "cron", "--build-cron", "nightly")
		r.wantPluginStep(t, "prune", 0)
		if r.report.Decision != plugin.DecisionKeptCache || len(r.report.Phases) != 0 {
			t.Fatalf("decision %q, %d phases; want %q and no phase", r.report.Decision, len(r.report.Phases), plugin.DecisionKeptCache)
		}
		if !exists(t, "image", old) {
			t.Errorf("the nightly run below threshold removed %s", old)
		}
	})

	t.Run("drone/exit-status", func(t *testing.T) {
		// The fail_above ceiling breached: the plugin exits 3, the runner fails the step with it.
		dir := t.TempDir()
		file := ciWriteFile(t, dir, ".drone.yml", fmt.Sprintf(`kind: pipeline
type: docker
name: prune-ceiling
clone:
  disable: true
steps:
  - name: prune
    image: %s
    settings:
      threshold: "100"
      fail_above: "1"
      stack_pattern:
        - "^ci-"
    volumes:
      - name: docker_sock
        path: %s
volumes:
  - name: docker_sock
    host:
      path: %s
`, pluginImageTag, ciStepSocket, socket))
		b := newCIDroneBuild(t, ciClient(t, ciDroneClient), file, "dgp-e2e/"+randomHex(4), 23)
		r := b.run(t, "prune-ceiling", "--build-event", "custom")
		r.wantPluginStep(t, "prune", plugin.ExitPolicy)
		if !r.report.CeilingBreached || r.report.Decision != plugin.DecisionKeptCache {
			t.Errorf("ceiling breached %v decision %q; want true, %q", r.report.CeilingBreached, r.report.Decision, plugin.DecisionKeptCache)
		}
	})

	t.Run("drone/busy-build", func(t *testing.T) {
		bin := ciClient(t, ciDroneClient)
		slug := "dgp-e2e/" + randomHex(4)
		busyFile := ciWriteFile(t, t.TempDir(), ".drone.yml", fmt.Sprintf(`kind: pipeline
type: docker
name: busy
clone:
  disable: true
steps:
  - name: work
    image: %s
    pull: if-not-exists
`, sleeperImage))
		busy := newCIDroneBuild(t, bin, busyFile, slug, 7)
		promote := newCIDroneBuild(t, bin, droneYAML, slug, 8)
		c, cancel := context.WithCancel(ctx())
		bg := startCIProcess(t, busy.command(c, "busy", "--build-event", "push"), cancel)
		work := ciRunningContainer(t, "build 7's step", filters.NewArgs(
			filters.Arg("label", "io.drone.repo.slug="+slug), filters.Arg("label", "io.drone.build.number=7")))
		name := ciContainerName(work)
		t.Logf("build 7 runs %s with labels %v", name, work.Labels)
		if work.Labels["io.drone.stage.name"] != "busy" || work.Labels["io.drone"] != "true" {
			t.Errorf("build 7's step container labels %v", work.Labels)
		}

		old := danglingImage(t, time.Now().Add(-48*time.Hour), nil)
		r := promote.run(t, "prune-promote", "--build-event", "promote", "--build-target", "prune")
		if !bg.running() {
			t.Fatalf("build 7 ended while build 8 ran:\n%s", bg.out.String())
		}
		r.wantPluginStep(t, "prune", 0)
		ciWantSkippedBy(t, r.report, name)
		if !exists(t, "image", old) {
			t.Fatalf("the promote build pruned while build 7 ran")
		}

		bg.interrupt(t)
		if !waitFor(t, 60*time.Second, "build 7's containers are gone", func() (bool, error) {
			cs, err := api.ContainerList(ctx(), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "io.drone.build.number=7"), filters.Arg("label", "io.drone.repo.slug="+slug))})
			return len(cs) == 0, err
		}) {
			t.FailNow()
		}
		r = promote.run(t, "prune-promote", "--build-event", "promote", "--build-target", "prune")
		want := 0
		if r.report.CeilingBreached {
			want = plugin.ExitPolicy
		}
		r.wantPluginStep(t, "prune", want)
		ciWantNoRunOpen(t, r.report)
		if r.report.Decision != plugin.DecisionPruned || exists(t, "image", old) {
			t.Errorf("after build 7: decision %q, old image still there %v; want %q, false", r.report.Decision, exists(t, "image", old), plugin.DecisionPruned)
		}
	})

	// stack_pattern with a comma inside {1,4}: as one YAML string and as a one-item list (Drone
	// joins a list with commas, so both reach the plugin as the same PLUGIN_STACK_PATTERN).
	patternPipelines := fmt.Sprintf(`kind: pipeline
type: docker
name: pattern-string
clone:
  disable: true
steps:
  - name: prune
    image: %[1]s
    settings:
      dry_run: "true"
      force: "true"
      stack_pattern: "%[2]s"
    volumes:
      - name: docker_sock
        path: %[3]s
volumes:
  - name: docker_sock
    host:
      path: %[4]s
---
kind: pipeline
type: docker
name: pattern-list
clone:
  disable: true
steps:
  - name: prune
    image: %[1]s
    settings:
      dry_run: "true"
      force: "true"
      stack_pattern:
        - "%[2]s"
    volumes:
      - name: docker_sock
        path: %[3]s
volumes:
  - name: docker_sock
    host:
      path: %[4]s
`, pluginImageTag, ciCCCIPattern, ciStepSocket, socket)
	patternFile := ciWriteFile(t, t.TempDir(), ".drone.yml", patternPipelines)
	for _, stage := range []string{"pattern-string", "pattern-list"} {
		t.Run("drone/"+stage, func(t *testing.T) {
			// A cc-ci run stack's container: <4 of [a-z0-9]>-<6 hex>_ci_commoninternet_net_app.
			name := fmt.Sprintf("%s-%s_ci_commoninternet_net_app", randomHex(2), randomHex(3))
			makeContainer(t, containerSpec{name: name, start: true})
			b := newCIDroneBuild(t, ciClient(t, ciDroneClient), patternFile, "dgp-e2e/"+randomHex(4), 30)
			r := b.run(t, stage, "--build-event", "custom")
			r.wantPluginStep(t, "prune", 0)
			ciWantSkippedBy(t, r.report, name)
			if v := ciNoRunVerdict(t, r.report); !strings.Contains(v.Reason, fmt.Sprintf("%q", ciCCCIPattern)) {
				t.Errorf("the no-run gate does not show the pattern %q as one item: %s", ciCCCIPattern, v.Reason)
			}
		})
	}

	t.Run("woodpecker/concurrent-workflows", func(t *testing.T) {
		ciWoodpeckerWorkflows(t, ciClient(t, ciWoodpeckerClient), socket)
	})
}

func ciReadFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	must(t, err)
	return data
}

// ciWatchNetwork polls the engine until stopped and returns the IDs of the containers running
// image that it saw attached to the network (so a test knows a workflow's service really ran).
// It touches no testing.TB.
func ciWatchNetwork(network, image string) (stop func() []string) {
	done, result := make(chan struct{}), make(chan []string, 1)
	go func() {
		seen := map[string]bool{}
		f := filters.NewArgs(filters.Arg("network", network), filters.Arg("status", "running"))
		for {
			if cs, err := api.ContainerList(ctx(), container.ListOptions{Filters: f}); err == nil {
				for _, c := range cs {
					if c.Image == image {
						seen[c.ID] = true
					}
				}
			}
			select {
			case <-done:
				ids := make([]string, 0, len(seen))
				for id := range seen {
					ids = append(ids, id)
				}
				result <- ids
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return func() []string { close(done); return <-result }
}

// ciWoodpeckerWorkflow is one `woodpecker-cli exec` of one workflow file. Woodpecker names a
// workflow's network, volume and step names after a prefix (the server gives every workflow its
// own; exec uses "woodpecker" unless told), so each workflow here gets a unique one.
type ciWoodpeckerWorkflow struct {
	bin, file, prefix string
	pipeline          int
	number            int
}

func (w ciWoodpeckerWorkflow) command(ctx context.Context) *exec.Cmd {
	cmd := exec.CommandContext(ctx, w.bin, "exec", "--repo-trusted", "--backend-engine", "docker",
		"--pipeline-number", fmt.Sprint(w.pipeline), "--workflow-number", fmt.Sprint(w.number), w.file)
	cmd.Dir = filepath.Dir(w.file)
	cmd.Env = ciClientEnv("WOODPECKER_PREFIX=" + w.prefix)
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// network is the workflow's default network, which every step and service joins.
func (w ciWoodpeckerWorkflow) network() string { return w.prefix + "_default" }

// cleanup removes what a killed exec left: containers on the workflow's network, the network
// and the workspace volume.
func (w ciWoodpeckerWorkflow) cleanup(t *testing.T) {
	cs, err := api.ContainerList(ctx(), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", ciWoodpeckerStepLabel))})
	if err != nil {
		t.Errorf("listing Woodpecker containers: %v", err)
	}
	for _, c := range cs {
		if c.NetworkSettings != nil && c.NetworkSettings.Networks[w.network()] != nil {
			_ = api.ContainerRemove(ctx(), c.ID, container.RemoveOptions{Force: true})
		}
	}
	_ = api.NetworkRemove(ctx(), w.network())
	_ = api.VolumeRemove(ctx(), w.network(), true)
}

// run execs the workflow to its end and reads the plugin's summary from outDir.
func (w ciWoodpeckerWorkflow) run(t *testing.T, outDir string) (int, plugin.Report) {
	t.Helper()
	_ = os.Remove(filepath.Join(outDir, ciSummaryName))
	c, cancel := context.WithTimeout(ctx(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := w.command(c).CombinedOutput()
	code := 0
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("running %s exec: %v\n%s", ciWoodpeckerClient, err, out)
	}
	t.Logf("%s exec %s (prefix %s): exit %d in %s\n%s", ciWoodpeckerClient, filepath.Base(w.file), w.prefix, code, time.Since(start).Round(time.Millisecond), out)
	data, err := os.ReadFile(filepath.Join(outDir, ciSummaryName))
	if err != nil {
		t.Fatalf("the plugin step wrote no summary: %v", err)
	}
	var r plugin.Report
	must(t, json.Unmarshal(data, &r))
	if r.ExitCode != code {
		t.Errorf("the plugin exited %d, woodpecker-cli %d", r.ExitCode, code)
	}
	return code, r
}

// Two workflows of one Woodpecker pipeline at once: A holds a long step; B has a service of its
// own running and a plugin step with neither stack_pattern nor run_labels. B's plugin must see A
// (and skip), must not see its own service, and must let the prune through once A is gone.
func ciWoodpeckerWorkflows(t *testing.T, bin, socket string) {
	dir := t.TempDir()
	outDir := t.TempDir()
	id := randomHex(3)
	a := ciWoodpeckerWorkflow{bin: bin, prefix: "wp_dgp" + id + "a", pipeline: 42, number: 1,
		file: ciWriteFile(t, dir, "a.yml", fmt.Sprintf(`skip_clone: true
steps:
  work:
    image: %s
    pull: false
`, sleeperImage))}
	b := ciWoodpeckerWorkflow{bin: bin, prefix: "wp_dgp" + id + "b", pipeline: 42, number: 2,
		file: ciWriteFile(t, dir, "b.yml", fmt.Sprintf(`skip_clone: true
services:
  helper:
    image: %s
    pull: false
steps:
  prune:
    image: %s
    pull: false
    settings:
      force: true
      dry_run: true
      summary_file: %s/%s
    volumes:
      - %s:%s
      - %s:%s
`, sleeperImage, pluginImageTag, ciStepOutDir, ciSummaryName, socket, ciStepSocket, outDir, ciStepOutDir))}
	t.Cleanup(func() { a.cleanup(t); b.cleanup(t) })

	// B alone: its own service container runs while its plugin step does, and is no live run.
	stop := ciWatchNetwork(b.network(), sleeperImage)
	code, r := b.run(t, outDir)
	if helpers := stop(); len(helpers) != 1 {
		t.Fatalf("saw %d running %s containers on workflow B's network %s; want its one service", len(helpers), sleeperImage, b.network())
	}
	if code != 0 || r.Decision != plugin.DecisionDryRun {
		t.Fatalf("workflow B alone: exit %d decision %q; want 0, %q", code, r.Decision, plugin.DecisionDryRun)
	}
	ciWantNoRunOpen(t, r)

	// A running: B skips, naming A's step container.
	c, cancel := context.WithCancel(ctx())
	bg := startCIProcess(t, a.command(c), cancel)
	work := ciRunningContainer(t, "workflow A's step", filters.NewArgs(filters.Arg("network", a.network())))
	name := ciContainerName(work)
	t.Logf("workflow A runs %s with labels %v", name, work.Labels)
	if _, ok := work.Labels[ciWoodpeckerStepLabel]; !ok {
		t.Errorf("workflow A's step container has no %s label: %v", ciWoodpeckerStepLabel, work.Labels)
	}
	code, r = b.run(t, outDir)
	if !bg.running() {
		t.Fatalf("workflow A ended while B ran:\n%s", bg.out.String())
	}
	if code != 0 {
		t.Errorf("workflow B exit %d", code)
	}
	ciWantSkippedBy(t, r, name)

	// A gone: the gate opens again.
	bg.interrupt(t)
	if !waitFor(t, 60*time.Second, "workflow A's containers are gone", func() (bool, error) {
		return !exists(t, "container", work.ID), nil
	}) {
		t.FailNow()
	}
	code, r = b.run(t, outDir)
	if code != 0 || r.Decision != plugin.DecisionDryRun {
		t.Fatalf("workflow B after A: exit %d decision %q; want 0, %q", code, r.Decision, plugin.DecisionDryRun)
	}
	ciWantNoRunOpen(t, r)
}
