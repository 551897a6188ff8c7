package ciclients

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
	"github.com/drone-gated-prune/drone-gated-prune/plugin"
)

const (
	ciDroneClient      = "drone-runner-docker"
	ciWoodpeckerClient = "woodpecker-cli"
	// woodpecker-cli 3.x, carried in ../shared/ci-clients (scripts/ci-clients.sh).
	ciWoodpecker3Client = "woodpecker-cli-3"
	ciActClient         = "act"
	// The image name the repository's .drone.yml uses; the tests run harness.PluginImageTag in its place.
	ciPublishedImage = "dronegatedprune/drone-gated-prune"
	// Where a step finds the host socket, and where the plugin writes its JSON summary.
	ciStepSocket  = "/var/run/docker.sock"
	ciStepOutDir  = "/dgp-out"
	ciSummaryName = "summary.json"
	// The only label Woodpecker 1.0.5's docker backend puts on a step container (its step UUID).
	ciWoodpeckerStepLabel = "wp_uuid"
	// The cc-ci run-stack pattern: its {1,4} holds a comma.
	ciCCCIPattern = "^[a-z0-9]{1,4}-[0-9a-f]{6}_ci_commoninternet_net_"
	// A label every container, network and volume of one exec carries (exec --labels), so that a
	// killed exec's leftovers are found without touching any other build of the same repository.
	ciExecLabel = "dgp.e2e.exec"
)

// ciOtherBuildNumber is a build number other than own, for a concurrent build of the same
// repository that the plugin must see as a live run.
func ciOtherBuildNumber(own int) int {
	if own > 1 {
		return own - 1
	}
	return own + 1
}

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
		cmd := exec.Command("sh", filepath.Join(harness.Root, "scripts", "ci-clients.sh"), ciDroneClient, ciWoodpeckerClient, ciWoodpecker3Client, ciActClient)
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
	host := harness.API.DaemonHost()
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
	ciPublishedImageLine = regexp.MustCompile(`(?m)^(\s*image:\s*)` + regexp.QuoteMeta(ciPublishedImage) + `(:[\w][\w.-]*)?[ \t]*$`)
	ciHostSocketPath     = regexp.MustCompile(`(?m)^(\s*host:\s*\n\s*path:\s*)` + regexp.QuoteMeta(ciStepSocket) + `[ \t]*$`)
)

// ciLocalDroneYAML writes a copy of the repository's .drone.yml into a new directory with the plugin
// image (pinned in .drone.yml to a release, which is not this tree's build) replaced by the local
// tag of the image built from this tree, and the host socket path set to the tests' engine; it
// returns the file's path. The real .drone.yml is not touched, and no other image is replaced.
func ciLocalDroneYAML(t *testing.T, socket string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(harness.Root, ".drone.yml"))
	harness.Must(t, err)
	if n := len(ciPublishedImageLine.FindAllIndex(data, -1)); n < 3 {
		t.Fatalf(".drone.yml names the plugin image %s in %d steps; want at least the nightly, promote and plan steps", ciPublishedImage, n)
	}
	data = ciPublishedImageLine.ReplaceAll(data, []byte("${1}"+harness.PluginImageTag))
	if socket != ciStepSocket {
		data = ciHostSocketPath.ReplaceAll(data, []byte("${1}"+socket))
	}
	// The pipelines the tests run now name the local image in every step.
	images := map[string][]string{}
	for _, doc := range dronePipelines(t, data) {
		for _, s := range doc.Steps {
			images[doc.Name] = append(images[doc.Name], s.Image)
		}
	}
	for _, p := range []string{"prune-plan", "prune-promote", "prune-nightly"} {
		if len(images[p]) != 1 || images[p][0] != harness.PluginImageTag {
			t.Fatalf("pipeline %s in the rewritten .drone.yml runs %q; want [%s]", p, images[p], harness.PluginImageTag)
		}
	}
	if n := len(images["ci-with-cleanup"]); n == 0 || images["ci-with-cleanup"][n-1] != harness.PluginImageTag {
		t.Fatalf("pipeline ci-with-cleanup in the rewritten .drone.yml runs %q; want the plugin (%s) last", images["ci-with-cleanup"], harness.PluginImageTag)
	}
	return ciWriteFile(t, t.TempDir(), ".drone.yml", string(data))
}

func ciWriteFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	harness.Must(t, os.WriteFile(path, []byte(content), 0o644))
	return path
}

// ciDroneBuild is one `drone-runner-docker exec` of one pipeline: the repository and build it
// pretends to be, and where the plugin's summary lands.
type ciDroneBuild struct {
	bin     string
	file    string // the .drone.yml
	dir     string // the workspace: exec runs here and mounts it into every step (default: file's directory)
	slug    string // --repo-slug, also the io.drone.repo.slug label
	number  int    // --build-number
	outDir  string // mounted at ciStepOutDir in every step; empty: no summary file
	exec    string // the value of ciExecLabel on everything this build creates
	timeout time.Duration
}

func newCIDroneBuild(t *testing.T, bin, file, slug string, number int) ciDroneBuild {
	t.Helper()
	b := ciDroneBuild{bin: bin, file: file, slug: slug, number: number, outDir: t.TempDir(), exec: fixtures.RandomHex(6), timeout: 3 * time.Minute}
	t.Cleanup(func() { ciRemoveDroneObjects(t, b.exec) })
	return b
}

// newCIDroneBuildAs is newCIDroneBuild for a build whose plugin must see no other build of this
// host as live: a new repository slug with number on a host, the enclosing build inside a Drone
// step (harness.DroneBuildAs).
func newCIDroneBuildAs(t *testing.T, bin, file string, number int) ciDroneBuild {
	t.Helper()
	slug, n := harness.DroneBuildAs("dgp-e2e/"+fixtures.RandomHex(4), number)
	return newCIDroneBuild(t, bin, file, slug, n)
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
		"--labels", ciExecLabel + "=" + b.exec,
		"--dump",
	}
	if b.outDir != "" {
		args = append(args, "--volumes", b.outDir+":"+ciStepOutDir,
			"--environ", "PLUGIN_SUMMARY_FILE="+ciStepOutDir+"/"+ciSummaryName)
	}
	args = append(args, extra...)
	args = append(args, b.file)
	cmd := exec.CommandContext(ctx, b.bin, args...)
	cmd.Dir = b.dir
	if cmd.Dir == "" {
		cmd.Dir = filepath.Dir(b.file)
	}
	cmd.Env = ciClientEnv()
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// ciDroneStep is one step of the runner's --dump.
type ciDroneStep struct {
	Name      string `json:"name"`
	Status    string `json:"status"`
	ExitCode  int    `json:"exit_code"`
	ErrIgnore bool   `json:"errignore"`
	Started   int64  `json:"started"`
	Stopped   int64  `json:"stopped"`
}

// ciDroneResult is what one exec reported: the runner's exit status, the steps' log lines, the
// state it dumped, and the plugin's JSON summary when it wrote one.
type ciDroneResult struct {
	code      int
	logs      string
	steps     []ciDroneStep
	report    report.Report
	hasReport bool
	elapsed   time.Duration
}

// run execs one stage to its end.
func (b ciDroneBuild) run(t *testing.T, stage string, extra ...string) ciDroneResult {
	t.Helper()
	c, cancel := context.WithTimeout(harness.Ctx(), b.timeout)
	defer cancel()
	if b.outDir != "" {
		_ = os.Remove(filepath.Join(b.outDir, ciSummaryName))
	}
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
	if b.outDir == "" {
		return r
	}
	if data, err := os.ReadFile(filepath.Join(b.outDir, ciSummaryName)); err == nil {
		harness.Must(t, json.Unmarshal(data, &r.report))
		r.hasReport = true
	}
	return r
}

// step is the named step of the dump; the test fails if the runner ran none.
func (r ciDroneResult) step(t *testing.T, name string) ciDroneStep {
	t.Helper()
	for _, s := range r.steps {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("the runner ran no step %q (steps %+v)", name, r.steps)
	return ciDroneStep{}
}

// wantSteps checks that the runner ran exactly these steps, in this order, each to success with
// exit code 0, and exited 0 itself.
func (r ciDroneResult) wantSteps(t *testing.T, names ...string) {
	t.Helper()
	var got []string
	for _, s := range r.steps {
		got = append(got, s.Name)
		if s.Status != "success" || s.ExitCode != 0 {
			t.Errorf("runner: step %s status %q exit %d; want success, 0", s.Name, s.Status, s.ExitCode)
		}
	}
	if !slices.Equal(got, names) {
		t.Errorf("runner ran steps %q; want %q", got, names)
	}
	if r.code != 0 {
		t.Errorf("runner exited %d; want 0", r.code)
	}
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

// ciRemoveDroneObjects removes what one exec left behind (after it was killed): its containers,
// networks and volumes all carry ciExecLabel with its value. The repository slug would not do:
// inside a Drone step the tests' builds share the enclosing build's (harness.DroneBuildAs), and that
// build's own containers, the running test step among them, must stay.
func ciRemoveDroneObjects(t *testing.T, id string) {
	f := filters.NewArgs(filters.Arg("label", ciExecLabel+"="+id))
	cs, err := harness.API.ContainerList(harness.Ctx(), container.ListOptions{All: true, Filters: f})
	if err != nil {
		t.Errorf("listing the containers of exec %s: %v", id, err)
	}
	for _, c := range cs {
		_ = harness.API.ContainerRemove(harness.Ctx(), c.ID, container.RemoveOptions{Force: true})
	}
	ns, _ := harness.API.NetworkList(harness.Ctx(), network.ListOptions{Filters: f})
	for _, n := range ns {
		_ = harness.API.NetworkRemove(harness.Ctx(), n.ID)
	}
	vs, _ := harness.API.VolumeList(harness.Ctx(), volume.ListOptions{Filters: f})
	for _, v := range vs.Volumes {
		_ = harness.API.VolumeRemove(harness.Ctx(), v.Name, true)
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
	harness.Must(t, cmd.Start())
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
	harness.Must(t, bg.cmd.Process.Signal(os.Interrupt))
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
	if !harness.WaitFor(t, 90*time.Second, what+" is running", func() (bool, error) {
		var err error
		found, err = harness.API.ContainerList(harness.Ctx(), container.ListOptions{Filters: f})
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
func ciNoRunVerdict(t *testing.T, r report.Report) gates.Verdict {
	t.Helper()
	v, ok := r.Gate(gates.NoRunGate)
	if !ok {
		t.Fatalf("the no-run gate was not evaluated (decision %q, error %q)", r.Decision, r.Error)
	}
	return v
}

// ciWantSkippedBy checks that a run was skipped by the no-run gate alone, and that its evidence
// names the container name and nothing else.
func ciWantSkippedBy(t *testing.T, r report.Report, name string) {
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
func ciWantNoRunOpen(t *testing.T, r report.Report) {
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
	if strings.HasPrefix(r.Decision, "skipped") || r.Decision == report.DecisionError {
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
	harness.BuildPluginImage(t)
	t.Logf("plugin image %s built in %s", harness.PluginImageTag, time.Since(start).Round(time.Millisecond))
	harness.EnsureSleeperImage(t)
	droneYAML := ciLocalDroneYAML(t, socket)

	t.Run("drone/prune-plan", func(t *testing.T) {
		b := newCIDroneBuildAs(t, ciClient(t, ciDroneClient), droneYAML, 20)
		old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
		young := harness.DanglingImage(t, time.Now().Add(-time.Hour), nil)
		r := b.run(t, "prune-plan", "--build-event", "promote", "--build-target", "prune-plan")
		r.wantPluginStep(t, "plan", 0)
		if r.report.Decision != report.DecisionDryRun || !r.report.DryRun || !r.report.Forced {
			t.Fatalf("decision %q dry run %v forced %v; want %q, a forced dry run", r.report.Decision, r.report.DryRun, r.report.Forced, report.DecisionDryRun)
		}
		ciWantNoRunOpen(t, r.report)
		planned := harness.PhaseIDs(r.report, report.PhaseImages)
		if !planned[old] || planned[young] {
			t.Errorf("image plan %s; want the 48h-old dangling image %s and not the 1h-old %s", harness.FmtSet(planned), old, young)
		}
		if !harness.Exists(t, "image", old) || !harness.Exists(t, "image", young) {
			t.Errorf("the plan removed an image")
		}
		if !strings.Contains(r.logs, old[len("sha256:"):][:12]) {
			t.Errorf("the plan in the runner's log does not list %s", old)
		}
	})

	t.Run("drone/prune-promote", func(t *testing.T) {
		b := newCIDroneBuildAs(t, ciClient(t, ciDroneClient), droneYAML, 21)
		old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
		young := harness.DanglingImage(t, time.Now().Add(-time.Hour), nil)
		r := b.run(t, "prune-promote", "--build-event", "promote", "--build-target", "prune")
		want := 0
		if r.report.CeilingBreached {
			want = outcome.ExitPolicy
		}
		r.wantPluginStep(t, "prune", want)
		if r.report.Decision != report.DecisionPruned || r.report.DryRun {
			t.Fatalf("decision %q dry run %v; want %q", r.report.Decision, r.report.DryRun, report.DecisionPruned)
		}
		ciWantNoRunOpen(t, r.report)
		if removed := harness.PhaseIDs(r.report, report.PhaseImages); !removed[old] || removed[young] {
			t.Errorf("images removed %s; want the 48h-old %s and not the 1h-old %s", harness.FmtSet(removed), old, young)
		}
		if harness.Exists(t, "image", old) || !harness.Exists(t, "image", young) {
			t.Errorf("old dangling image still there %v, young one kept %v; want false, true", harness.Exists(t, "image", old), harness.Exists(t, "image", young))
		}
	})

	t.Run("drone/prune-nightly", func(t *testing.T) {
		threshold := 80.0 // prune-nightly's threshold
		if !strings.Contains(string(ciReadFile(t, droneYAML)), "threshold: \"80\"") {
			t.Fatalf(".drone.yml no longer sets threshold \"80\"; update this test")
		}
		host, err := plugin.Measure(harness.DataRoot(t), "host")
		harness.Must(t, err)
		if host.UsedPercent() >= threshold-1 {
			t.Skipf("this host is %.1f%% used, too close to the nightly threshold %g%% for the below-threshold check", host.UsedPercent(), threshold)
		}
		b := newCIDroneBuildAs(t, ciClient(t, ciDroneClient), droneYAML, 22)
		old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
		r := b.run(t, "prune-nightly", "--build-event", "cron", "--build-cron", "nightly")
		r.wantPluginStep(t, "prune", 0)
		if r.report.Decision != report.DecisionKeptCache || len(r.report.Phases) != 0 {
			t.Fatalf("decision %q, %d phases; want %q and no phase", r.report.Decision, len(r.report.Phases), report.DecisionKeptCache)
		}
		if !harness.Exists(t, "image", old) {
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
`, harness.PluginImageTag, ciStepSocket, socket))
		b := newCIDroneBuildAs(t, ciClient(t, ciDroneClient), file, 23)
		r := b.run(t, "prune-ceiling", "--build-event", "custom")
		r.wantPluginStep(t, "prune", outcome.ExitPolicy)
		if !r.report.CeilingBreached || r.report.Decision != report.DecisionKeptCache {
			t.Errorf("ceiling breached %v decision %q; want true, %q", r.report.CeilingBreached, r.report.Decision, report.DecisionKeptCache)
		}
	})

	t.Run("drone/busy-build", func(t *testing.T) {
		// Two builds of one repository: the promote build (8 on a host) and a busy build (7) that
		// is still running when the promote build's plugin looks.
		bin := ciClient(t, ciDroneClient)
		busyFile := ciWriteFile(t, t.TempDir(), ".drone.yml", fmt.Sprintf(`kind: pipeline
type: docker
name: busy
clone:
  disable: true
steps:
  - name: work
    image: %s
    pull: if-not-exists
`, harness.SleeperImage))
		promote := newCIDroneBuildAs(t, bin, droneYAML, 8)
		busy := newCIDroneBuild(t, bin, busyFile, promote.slug, ciOtherBuildNumber(promote.number))
		busyLabels := filters.NewArgs(filters.Arg("label", "io.drone.repo.slug="+busy.slug), filters.Arg("label", fmt.Sprintf("io.drone.build.number=%d", busy.number)))
		c, cancel := context.WithCancel(harness.Ctx())
		bg := startCIProcess(t, busy.command(c, "busy", "--build-event", "push"), cancel)
		work := ciRunningContainer(t, fmt.Sprintf("build %d's step", busy.number), busyLabels.Clone())
		name := ciContainerName(work)
		t.Logf("build %d runs %s with labels %v", busy.number, name, work.Labels)
		if work.Labels["io.drone.stage.name"] != "busy" || work.Labels["io.drone"] != "true" {
			t.Errorf("build %d's step container labels %v", busy.number, work.Labels)
		}

		old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
		r := promote.run(t, "prune-promote", "--build-event", "promote", "--build-target", "prune")
		if !bg.running() {
			t.Fatalf("build %d ended while build %d ran:\n%s", busy.number, promote.number, bg.out.String())
		}
		r.wantPluginStep(t, "prune", 0)
		ciWantSkippedBy(t, r.report, name)
		if !harness.Exists(t, "image", old) {
			t.Fatalf("the promote build pruned while build %d ran", busy.number)
		}

		bg.interrupt(t)
		if !harness.WaitFor(t, 60*time.Second, fmt.Sprintf("build %d's containers are gone", busy.number), func() (bool, error) {
			cs, err := harness.API.ContainerList(harness.Ctx(), container.ListOptions{All: true, Filters: busyLabels})
			return len(cs) == 0, err
		}) {
			t.FailNow()
		}
		r = promote.run(t, "prune-promote", "--build-event", "promote", "--build-target", "prune")
		want := 0
		if r.report.CeilingBreached {
			want = outcome.ExitPolicy
		}
		r.wantPluginStep(t, "prune", want)
		ciWantNoRunOpen(t, r.report)
		if r.report.Decision != report.DecisionPruned || harness.Exists(t, "image", old) {
			t.Errorf("after build %d: decision %q, old image still there %v; want %q, false", busy.number, r.report.Decision, harness.Exists(t, "image", old), report.DecisionPruned)
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
`, harness.PluginImageTag, ciCCCIPattern, ciStepSocket, socket)
	patternFile := ciWriteFile(t, t.TempDir(), ".drone.yml", patternPipelines)
	for _, stage := range []string{"pattern-string", "pattern-list"} {
		t.Run("drone/"+stage, func(t *testing.T) {
			// A cc-ci run stack's container: <4 of [a-z0-9]>-<6 hex>_ci_commoninternet_net_app.
			name := fmt.Sprintf("%s-%s_ci_commoninternet_net_app", fixtures.RandomHex(2), fixtures.RandomHex(3))
			harness.MakeContainer(t, harness.Container{Name: name, Start: true})
			b := newCIDroneBuildAs(t, ciClient(t, ciDroneClient), patternFile, 30)
			r := b.run(t, stage, "--build-event", "custom")
			r.wantPluginStep(t, "prune", 0)
			ciWantSkippedBy(t, r.report, name)
			if v := ciNoRunVerdict(t, r.report); !strings.Contains(v.Reason, fmt.Sprintf("%q", ciCCCIPattern)) {
				t.Errorf("the no-run gate does not show the pattern %q as one item: %s", ciCCCIPattern, v.Reason)
			}
		})
	}

	t.Run("woodpecker/concurrent-workflows", func(t *testing.T) {
		ciWoodpeckerWorkflows(t, ciClient(t, ciWoodpeckerClient), socket, false)
	})
	t.Run("woodpecker-3/concurrent-workflows", func(t *testing.T) {
		ciWoodpeckerWorkflows(t, ciClient(t, ciWoodpecker3Client), socket, true)
	})
	t.Run("act/concurrent-jobs", func(t *testing.T) {
		ciActWorkflows(t, ciClient(t, ciActClient))
	})
	t.Run("actions/runner-names", ciActionsRunnerNames)

	// The post-run cleanup pipeline as written: its build step compiles this repository in the
	// pinned Go image, then the plugin step runs after it (depends_on), whatever the build's
	// outcome (when: status), as a step whose failure would not fail the build (failure: ignore).
	t.Run("drone/ci-with-cleanup", func(t *testing.T) {
		ciStepImages(t)
		ciWantLocalImages(t, droneYAML, "ci-with-cleanup")
		b := newCIDroneBuildAs(t, ciClient(t, ciDroneClient), droneYAML, 24)
		b.dir = ciWorkspace(t)
		b.timeout = 15 * time.Minute
		extra := []string{"--build-event", "push", "--commit-target", "main"}
		if harness.Enclosing.Slug == "" {
			// Like a runner configured with DRONE_RUNNER_VOLUMES and DRONE_RUNNER_ENVIRON that
			// shares the host's Go module cache with every step: the build step then needs no
			// network (.ci/run's Docker 29 pass runs its engine in a namespace that has none).
			// Inside a Drone step this process's module cache is not a host path, and the build
			// step downloads its modules as it would on any runner.
			extra = append(extra, "--volumes", ciGoModCache(t, b.dir)+":/go/pkg/mod", "--environ", "GOPROXY=off")
		}
		host, err := plugin.Measure(harness.DataRoot(t), "host")
		harness.Must(t, err)
		r := b.run(t, "ci-with-cleanup", extra...)

		build, cleanup := r.step(t, "build"), r.step(t, "cleanup")
		if build.Status != "success" || build.ExitCode != 0 {
			t.Errorf("step build: status %q exit %d; want success, 0", build.Status, build.ExitCode)
		}
		if cleanup.Started < build.Stopped {
			t.Errorf("step cleanup started at %d, before build stopped at %d (depends_on: build)", cleanup.Started, build.Stopped)
		}
		if !cleanup.ErrIgnore {
			t.Errorf("the runner did not compile failure: ignore for step cleanup: %+v", cleanup)
		}
		// The plugin exits 3 only with the disk at or above fail_above; failure: ignore keeps the
		// build green even then.
		want := 0
		if r.report.CeilingBreached {
			want = outcome.ExitPolicy
		}
		if !r.hasReport || r.report.ExitCode != want || cleanup.ExitCode != want {
			t.Fatalf("step cleanup: exit %d, summary written %v with exit %d; want %d", cleanup.ExitCode, r.hasReport, r.report.ExitCode, want)
		}
		if r.code != 0 {
			t.Errorf("runner exited %d; want 0 (build passed, cleanup has failure: ignore)", r.code)
		}
		if line := fmt.Sprintf("] decision: %s\n", r.report.Decision); !strings.Contains(r.logs, "[cleanup:") || !strings.Contains(r.logs, line) {
			t.Errorf("the runner's log of step cleanup lacks the summary line %q", strings.TrimPrefix(line, "] "))
		}
		if threshold := 80.0; host.UsedPercent() < threshold-1 {
			// Below the pipeline's threshold the step keeps the cache after one look at the disk.
			if r.report.Decision != report.DecisionKeptCache || len(r.report.Phases) != 0 {
				t.Errorf("decision %q, %d phases; want %q and no phase (the disk is %.1f%% used)", r.report.Decision, len(r.report.Phases), report.DecisionKeptCache, host.UsedPercent())
			}
		}
		t.Logf("ci-with-cleanup: build %ds, cleanup %ds, exec %s", build.Stopped-build.Started, cleanup.Stopped-cleanup.Started, r.elapsed.Round(time.Second))
	})

	// The project's own test pipeline as written (vet, the docker CLI, the tests against this
	// engine, the build), from a copy of this working tree: its test step runs `go test ./...`
	// inside a container of the pinned Go image against this engine, where package e2e makes its
	// short run (harness.NestedRun) and this package none.
	t.Run("drone/pipeline-test", func(t *testing.T) {
		if socket != ciStepSocket {
			t.Skipf("the test pipeline mounts the host's %s into its test step; the tests' engine is at %s", ciStepSocket, socket)
		}
		ciStepImages(t)
		ws := ciWorkspace(t)
		file := filepath.Join(ws, ".drone.yml")
		ciWantLocalImages(t, file, "test")
		b := newCIDroneBuildAs(t, ciClient(t, ciDroneClient), file, 40)
		b.outDir = "" // no plugin step; PLUGIN_SUMMARY_FILE would reach the root package's tests
		b.timeout = 20 * time.Minute
		// The short run reports into the test step's TMPDIR, a host directory mounted at its own path.
		nested := ciStepTempDir(t, file, "test")
		extra := []string{"--build-event", "push", "--commit-target", "main",
			"--environ", harness.NestedEnv + "=" + nested}
		commit := ""
		if out, err := exec.Command("git", "-C", harness.Root, "rev-parse", "HEAD").Output(); err == nil {
			commit = strings.TrimSpace(string(out))
			extra = append(extra, "--commit-after", commit)
		}
		r := b.run(t, "test", extra...)
		r.wantSteps(t, "vet", "docker-cli", "test", "build")
		// The engine tests ran inside the step, against this engine, and passed (what .ci/run
		// checks on the host).
		if !regexp.MustCompile(`(?m)^\[test:\d+\] ok\s+github\.com/drone-gated-prune/drone-gated-prune/e2e\s`).MatchString(r.logs) {
			t.Errorf("the test step's log has no passing line for package e2e")
		}
		if got, err := os.ReadFile(filepath.Join(nested, harness.NestedReport)); err != nil || string(got) != "run "+harness.NestedRun+"\nexit 0\n" {
			t.Errorf("the test step's engine tests did not report a passing short run: %q, %v", got, err)
		}
		if !regexp.MustCompile(`(?m)^\[test:\d+\] docker client 28\.2\.2, engine `).MatchString(r.logs) {
			t.Errorf("the test step did not reach the engine with the docker CLI the docker-cli step copied")
		}
		if commit != "" && !strings.Contains(r.logs, "drone-gated-prune version "+commit[:8]+"\n") {
			t.Errorf("the build step's binary does not say version %s", commit[:8])
		}
		for _, s := range r.steps {
			t.Logf("step %s: %ds", s.Name, s.Stopped-s.Started)
		}
	})
}

// ciStepTempDir makes a directory, removed at cleanup, in the TMPDIR that pipeline's test step
// of file sets: a host directory the step mounts at the same path.
func ciStepTempDir(t *testing.T, file, pipeline string) string {
	t.Helper()
	for _, doc := range dronePipelines(t, ciReadFile(t, file)) {
		if doc.Name != pipeline {
			continue
		}
		for _, s := range doc.Steps {
			if tmp := s.Environment["TMPDIR"]; s.Name == "test" && tmp != "" {
				harness.Must(t, os.MkdirAll(tmp, 0o755))
				dir, err := os.MkdirTemp(tmp, "nested-")
				harness.Must(t, err)
				t.Cleanup(func() { _ = os.RemoveAll(dir) })
				return dir
			}
		}
	}
	t.Fatalf("%s: pipeline %s has no test step with a TMPDIR", file, pipeline)
	return ""
}

// ciStepImages builds the step images the pipelines pin (scripts/ci-images.sh), once per test
// binary; a cached image is reused in well under a second. A failure skips the test, or fails it
// under DGP_REQUIRE_ENGINE=1.
func ciStepImages(t *testing.T) {
	t.Helper()
	ciImages.once.Do(func() {
		start := time.Now()
		out, err := exec.Command("sh", filepath.Join(harness.Root, "scripts", "ci-images.sh")).CombinedOutput()
		ciImages.took, ciImages.out = time.Since(start), string(out)
		if err != nil {
			ciImages.err = fmt.Errorf("scripts/ci-images.sh: %v\n%s", err, out)
		}
	})
	if ciImages.err == nil {
		t.Logf("step images (scripts/ci-images.sh, %s):\n%s", ciImages.took.Round(time.Millisecond), ciImages.out)
		return
	}
	if os.Getenv("DGP_REQUIRE_ENGINE") == "1" {
		t.Fatal(ciImages.err)
	}
	t.Skip(ciImages.err)
}

var ciImages struct {
	once sync.Once
	out  string
	err  error
	took time.Duration
}

// ciWantLocalImages checks that every step image of pipeline in file is on the engine, so that
// the runner will not try to pull it (which fails here, and would run another image elsewhere).
func ciWantLocalImages(t *testing.T, file, pipeline string) {
	t.Helper()
	for _, doc := range dronePipelines(t, ciReadFile(t, file)) {
		if doc.Name != pipeline {
			continue
		}
		for _, s := range doc.Steps {
			if !harness.Exists(t, "image", s.Image) {
				t.Fatalf("pipeline %s: step image %s is not on the engine, so the runner would pull it (scripts/ci-images.sh builds the pinned ones)", pipeline, s.Image)
			}
		}
		return
	}
	t.Fatalf("%s has no pipeline %s", file, pipeline)
}

// ciWorkspace copies this working tree (without .git, dist/ and built binaries) into a new
// directory and returns it: the workspace a pipeline that builds the repository runs in, since
// exec mounts its working directory into every step and the build writes dist/ there.
func ciWorkspace(t *testing.T) string {
	t.Helper()
	root := harness.Root
	dst := t.TempDir()
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil || rel == "." {
			return err
		}
		switch {
		case d.IsDir() && (rel == ".git" || rel == "dist"):
			return filepath.SkipDir
		case rel == "drone-gated-prune" || strings.HasSuffix(rel, ".test"):
			return nil
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.Mkdir(target, info.Mode().Perm())
		case info.Mode()&os.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case info.Mode().IsRegular():
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return os.WriteFile(target, data, info.Mode().Perm())
		}
		return nil
	})
	harness.Must(t, err)
	return dst
}

// ciGoModCache is this machine's Go module cache, holding every module a build of the
// repository at dir needs (`go list -deps ./...` there fetches what is missing).
func ciGoModCache(t *testing.T, dir string) string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "./...")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go list -deps ./... in %s: %v\n%s", dir, err, out)
	}
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	harness.Must(t, err)
	return strings.TrimSpace(string(out))
}

func ciReadFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	harness.Must(t, err)
	return data
}

// ciWatch polls the engine until stopped and returns the IDs of the containers running image that
// matched f while it polled.
func ciWatch(f filters.Args, image string) (stop func() []string) {
	done, result := make(chan struct{}), make(chan []string, 1)
	go func() {
		seen := map[string]bool{}
		f = f.Clone()
		f.Add("status", "running")
		for {
			if cs, err := harness.API.ContainerList(harness.Ctx(), container.ListOptions{Filters: f}); err == nil {
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
// workflow's network, volume and step names after a prefix. 1.0.5's exec takes it from
// WOODPECKER_PREFIX (default "woodpecker"), so each workflow here gets a unique one; 3.x's exec
// makes its own (wp_<ULID>) and labels each container with its YAML step name (wp_step), so the
// workflow's containers are found by step names unique to the test (tag).
type ciWoodpeckerWorkflow struct {
	bin, file, prefix string
	v3                bool
	tag               string
	pipeline          int
	number            int
}

func (w ciWoodpeckerWorkflow) command(ctx context.Context) *exec.Cmd {
	trusted := "--repo-trusted"
	if w.v3 {
		trusted = "--repo-trusted-volumes"
	}
	cmd := exec.CommandContext(ctx, w.bin, "exec", trusted, "--backend-engine", "docker",
		"--pipeline-number", fmt.Sprint(w.pipeline), "--workflow-number", fmt.Sprint(w.number), w.file)
	cmd.Dir = filepath.Dir(w.file)
	cmd.Env = ciClientEnv("WOODPECKER_PREFIX=" + w.prefix)
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// step is the filter for the workflow's container of one YAML step or service (name+tag).
func (w ciWoodpeckerWorkflow) step(name string) filters.Args {
	if w.v3 {
		return filters.NewArgs(filters.Arg("label", "wp_step="+name+w.tag))
	}
	return filters.NewArgs(filters.Arg("network", w.prefix+"_default"), filters.Arg("label", ciWoodpeckerStepLabel))
}

// cleanup removes what a killed exec left: the workflow's containers, its networks and the
// volumes named after them.
func (w ciWoodpeckerWorkflow) cleanup(t *testing.T) {
	cs, err := harness.API.ContainerList(harness.Ctx(), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", ciWoodpeckerStepLabel))})
	if err != nil {
		t.Errorf("listing Woodpecker containers: %v", err)
	}
	nets := map[string]bool{w.prefix + "_default": !w.v3}
	for _, c := range cs {
		if c.NetworkSettings == nil {
			continue
		}
		mine := w.v3 && strings.HasSuffix(c.Labels["wp_step"], w.tag)
		for n := range c.NetworkSettings.Networks {
			mine = mine || (!w.v3 && n == w.prefix+"_default")
		}
		if !mine {
			continue
		}
		for n := range c.NetworkSettings.Networks {
			nets[n] = strings.HasSuffix(n, "_default")
		}
		_ = harness.API.ContainerRemove(harness.Ctx(), c.ID, container.RemoveOptions{Force: true})
	}
	for n, ok := range nets {
		if ok {
			_ = harness.API.NetworkRemove(harness.Ctx(), n)
			_ = harness.API.VolumeRemove(harness.Ctx(), n, true)
		}
	}
}

// run execs the workflow to its end and reads the plugin's summary from outDir.
func (w ciWoodpeckerWorkflow) run(t *testing.T, outDir string) (int, report.Report) {
	t.Helper()
	_ = os.Remove(filepath.Join(outDir, ciSummaryName))
	c, cancel := context.WithTimeout(harness.Ctx(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := w.command(c).CombinedOutput()
	code := 0
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("running %s exec: %v\n%s", w.bin, err, out)
	}
	t.Logf("%s exec %s (prefix %s): exit %d in %s\n%s", filepath.Base(w.bin), filepath.Base(w.file), w.prefix, code, time.Since(start).Round(time.Millisecond), out)
	data, err := os.ReadFile(filepath.Join(outDir, ciSummaryName))
	if err != nil {
		t.Fatalf("the plugin step wrote no summary: %v", err)
	}
	var r report.Report
	harness.Must(t, json.Unmarshal(data, &r))
	if r.ExitCode != code {
		t.Errorf("the plugin exited %d, woodpecker-cli %d", r.ExitCode, code)
	}
	return code, r
}

// Two workflows of one Woodpecker pipeline at once: A holds a long step; B has a service of its
// own running and a plugin step with neither stack_pattern nor run_labels. B's plugin must prune
// beside its own service with no warning, must see A (and skip), and must prune once A is gone.
// v3 runs woodpecker-cli 3.x, whose CI_STEP_NAME no longer names the workflow.
func ciWoodpeckerWorkflows(t *testing.T, bin, socket string, v3 bool) {
	dir := t.TempDir()
	outDir := t.TempDir()
	id := fixtures.RandomHex(3)
	a := ciWoodpeckerWorkflow{bin: bin, v3: v3, tag: id + "a", prefix: "wp_dgp" + id + "a", pipeline: 42, number: 1,
		file: ciWriteFile(t, dir, "a.yml", fmt.Sprintf(`skip_clone: true
steps:
  work%sa:
    image: %s
    pull: false
`, id, harness.SleeperImage))}
	b := ciWoodpeckerWorkflow{bin: bin, v3: v3, tag: id + "b", prefix: "wp_dgp" + id + "b", pipeline: 42, number: 2,
		file: ciWriteFile(t, dir, "b.yml", fmt.Sprintf(`skip_clone: true
services:
  helper%[1]sb:
    image: %[2]s
    pull: false
steps:
  prune%[1]sb:
    image: %[3]s
    pull: false
    settings:
      force: true
      summary_file: %[4]s/%[5]s
    volumes:
      - %[6]s:%[7]s
      - %[8]s:%[4]s
`, id, harness.SleeperImage, harness.PluginImageTag, ciStepOutDir, ciSummaryName, socket, ciStepSocket, outDir))}
	t.Cleanup(func() { a.cleanup(t); b.cleanup(t) })

	// B alone: its own service container runs while its plugin step does, is no live run, and
	// the old dangling image goes.
	old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	stop := ciWatch(b.step("helper"), harness.SleeperImage)
	code, r := b.run(t, outDir)
	if helpers := stop(); len(helpers) != 1 {
		t.Fatalf("saw %d running %s containers of workflow B's service; want its one service", len(helpers), harness.SleeperImage)
	}
	if code != 0 || r.Decision != report.DecisionPruned || harness.Exists(t, "image", old) {
		t.Fatalf("workflow B alone: exit %d decision %q, old dangling image kept %v; want 0, %q, removed", code, r.Decision, harness.Exists(t, "image", old), report.DecisionPruned)
	}
	ciWantNoRunOpen(t, r)
	if v := ciNoRunVerdict(t, r); len(v.Warnings) > 0 || !strings.Contains(v.Reason, "own run ignored: network ") {
		t.Errorf("workflow B alone: no-run gate %q with warnings %q; want its own network ignored and no warning", v.Reason, v.Warnings)
	}

	// A running: B skips, naming A's step container, and the old dangling image stays.
	old = harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	c, cancel := context.WithCancel(harness.Ctx())
	bg := startCIProcess(t, a.command(c), cancel)
	work := ciRunningContainer(t, "workflow A's step", a.step("work"))
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
	if !harness.Exists(t, "image", old) {
		t.Errorf("the old dangling image was removed while workflow A ran")
	}

	// A gone: the gate opens again and B prunes. woodpecker-cli 3.17's exec stops its containers
	// on Ctrl-C with the context the signal has just cancelled, so now and then it leaves the
	// step container running ("could not stop container …: received signal"); a cancelled
	// workflow's leftovers are then removed here, as the agent of a server would.
	bg.interrupt(t)
	for end := time.Now().Add(20 * time.Second); harness.Exists(t, "container", work.ID) && time.Now().Before(end); {
		time.Sleep(200 * time.Millisecond)
	}
	if harness.Exists(t, "container", work.ID) {
		t.Logf("%s left workflow A's step container after its interrupt: removing workflow A's containers", filepath.Base(a.bin))
		a.cleanup(t)
	}
	if !harness.WaitFor(t, 60*time.Second, "workflow A's containers are gone", func() (bool, error) {
		return !harness.Exists(t, "container", work.ID), nil
	}) {
		t.FailNow()
	}
	code, r = b.run(t, outDir)
	if code != 0 || r.Decision != report.DecisionPruned || harness.Exists(t, "image", old) {
		t.Fatalf("workflow B after A: exit %d decision %q; want 0, %q and the old dangling image removed", code, r.Decision, report.DecisionPruned)
	}
	ciWantNoRunOpen(t, r)
}
