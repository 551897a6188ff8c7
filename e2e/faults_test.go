package e2e

import (
	"bytes"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// A socket that accepts and never answers: the run ends within timeout plus a second, exit 1.
// Proves SPEC "Settings" timeout and "The run" 8 (timeout); docs/reliability.md "Silent socket".
func TestSilentSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "silent.sock")
	ln, err := net.Listen("unix", sock)
	harness.Must(t, err)
	defer ln.Close()
	var held []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	r := runPlugin(t, map[string]string{"DOCKER_HOST": "unix://" + sock, "PLUGIN_TIMEOUT": "3s", "PLUGIN_FORCE": "true"})
	if r.code != outcome.ExitRuntime || r.elapsed > 4*time.Second {
		t.Fatalf("exit %d after %s; want 1 within timeout (3s) plus a second", r.code, r.elapsed)
	}
	if !strings.Contains(r.stderr, "timeout 3s reached") {
		t.Errorf("stderr does not say the timeout was reached: %q", r.stderr)
	}
}

// An API error while evaluating the gates prunes nothing and exits 1 with one line.
// Proves SPEC "The run" 8 (an API failure fails closed); docs/reliability.md "API error during
// gate evaluation".
func TestAPIErrorDuringGates(t *testing.T) {
	old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	stopped := harness.MakeContainer(t, harness.Container{})
	time.Sleep(2100 * time.Millisecond)
	p := startProxy(t, &faultProxy{fail: regexp.MustCompile(`^GET /services$`)})
	r := runPlugin(t, map[string]string{"DOCKER_HOST": p.host, "PLUGIN_FORCE": "true", "PLUGIN_UNTIL": "1s"})
	if r.code != outcome.ExitRuntime || !harness.Exists(t, "image", old) || !harness.Exists(t, "container", stopped) {
		t.Fatalf("exit %d; image kept %v container kept %v; want 1 and nothing removed", r.code, harness.Exists(t, "image", old), harness.Exists(t, "container", stopped))
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	last := lines[len(lines)-1]
	if !strings.Contains(last, "listing swarm services") || !strings.Contains(last, "injected fault") {
		t.Errorf("last stderr line does not say what failed: %q", last)
	}
}

// A live run that appears between two prune phases stops the later phases.
// Proves SPEC "The run" 6 (the gates re-checked before each phase); docs/usage.md "What it
// does" 6.
func TestStackAppearsBetweenPhases(t *testing.T) {
	old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	stopped := harness.MakeContainer(t, harness.Container{})
	buildCache(t)
	time.Sleep(2100 * time.Millisecond)
	r := runWithLateRun(t, "ci-run-99-late", regexp.MustCompile(`^POST /containers/prune$`))
	if r.code != 0 || r.report.Decision != "stopped: "+gates.NoRunGate+" closed before "+report.PhaseImages {
		t.Fatalf("exit %d decision %q", r.code, r.report.Decision)
	}
	if harness.Exists(t, "container", stopped) || !harness.Exists(t, "image", old) {
		t.Errorf("containers phase should have run (container gone: %v) and images not (image kept: %v)", !harness.Exists(t, "container", stopped), harness.Exists(t, "image", old))
	}
	for _, ph := range []string{report.PhaseImages, report.PhaseBuildCache} {
		if p, _ := r.report.Phase(ph); p.Status != report.StatusNotRun {
			t.Errorf("%s phase %+v, want not run", ph, p)
		}
	}
	if !strings.Contains(r.stdout, `container "ci-run-99-late"`) {
		t.Errorf("summary does not name the run that appeared")
	}
}

// signalDuringPrune runs the plugin through a proxy that holds the engine's answer to the
// container prune for hold (the engine has already pruned), sends SIGTERM while it is held, and
// returns the plugin's exit, output and how long it took to exit after the signal.
func signalDuringPrune(t *testing.T, hold time.Duration) (*exec.ExitError, string, time.Duration) {
	t.Helper()
	p := startProxy(t, &faultProxy{})
	p.beforeResponse = func(rt string) {
		if rt == "POST /containers/prune" {
			time.Sleep(hold)
		}
	}
	cmd := exec.Command(harness.PluginBin)
	cmd.Env = []string{"DOCKER_HOST=" + p.host, "PLUGIN_FORCE=true", "PLUGIN_UNTIL=1s"}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	harness.Must(t, cmd.Start())
	p.waitSeen(t, regexp.MustCompile(`^POST /containers/prune$`), 20*time.Second)
	time.Sleep(200 * time.Millisecond)
	signalled := time.Now()
	harness.Must(t, cmd.Process.Signal(syscall.SIGTERM))
	err := cmd.Wait()
	took := time.Since(signalled)
	t.Logf("exit after %s: %v\nstdout:\n%s\nstderr:\n%s", took, err, stdout.String(), stderr.String())
	exit, ok := err.(*exec.ExitError)
	if !ok {
		t.Fatalf("want an exit status, got %v", err)
	}
	return exit, stdout.String(), took
}

// SIGTERM while the engine is pruning: the prune's answer, which comes within the grace period
// (3 s), is awaited, the summary says what it removed, and the later phases do not run.
// Proves SPEC "The run" 8 (signal: stop between calls, report what was done, exit 1);
// docs/reliability.md "SIGTERM in the middle of a prune".
func TestSignalLetsPruneFinish(t *testing.T) {
	old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	stopped := harness.MakeContainer(t, harness.Container{})
	time.Sleep(2100 * time.Millisecond)
	exit, out, took := signalDuringPrune(t, 1500*time.Millisecond)
	if exit.ExitCode() != outcome.ExitRuntime || took > 3*time.Second {
		t.Fatalf("want exit 1 once the held answer arrives, got %d after %s", exit.ExitCode(), took)
	}
	for _, want := range []string{"decision: error", "stopped after the containers phase: received terminated", "containers   removed", "images       not run"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q", want)
		}
	}
	if harness.Exists(t, "container", stopped) || !harness.Exists(t, "image", old) {
		t.Errorf("the container phase should have removed %s and the image phase not run", stopped)
	}
}

// SIGTERM while the engine's answer does not come: abandoned after the grace period, exit 1,
// the phase reported interrupted. Proves SPEC "The run" 8 (signal); docs/reliability.md "SIGTERM
// in the middle of a prune".
func TestSignalDuringPrune(t *testing.T) {
	old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	harness.MakeContainer(t, harness.Container{})
	time.Sleep(2100 * time.Millisecond)
	exit, out, took := signalDuringPrune(t, 20*time.Second)
	if exit.ExitCode() != outcome.ExitRuntime || took > 4500*time.Millisecond {
		t.Fatalf("want exit 1 within the 3 s grace (plus start-up), got %d after %s", exit.ExitCode(), took)
	}
	for _, want := range []string{"decision: error", "stopped during the containers phase: received terminated", "containers   interrupted", "images       not run"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q", want)
		}
	}
	if !harness.Exists(t, "image", old) {
		t.Errorf("the image phase ran after the signal")
	}
}

// A manager whose GET /services answers 503 "not a swarm manager" (as after a demotion between
// GET /info and GET /services; the proxy injects the answer) is judged as a worker, the run goes on,
// and the summary says so. Proves SPEC "The run" 4 (worker fallback) as far as one node can show
// it; docs/reliability.md "Not a swarm manager".
func TestWorkerFallback(t *testing.T) {
	p := startProxy(t, &faultProxy{fail: regexp.MustCompile(`^GET /services$`), failStatus: 503,
		failMessage: "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state."})
	r := runPlugin(t, map[string]string{"DOCKER_HOST": p.host, "PLUGIN_FORCE": "true", "PLUGIN_DRY_RUN": "true"})
	if r.code != 0 || r.report.Decision != report.DecisionDryRun || !strings.Contains(r.stdout, "worker node") {
		t.Fatalf("exit %d decision %q; want a dry run that says it judged a worker node", r.code, r.report.Decision)
	}
}

// imagePhaseRoute matches the image phase's removing requests on either store: the engine's prune
// on the classic store, one delete per image on the containerd store.
var imagePhaseRoute = regexp.MustCompile(`^(POST /images/prune|DELETE /images/.+)$`)

// runWithLateRun runs a forced plugin run with stack_pattern ^ci-run- through a proxy that starts a
// container named lateName (a live run) while it answers the first request matching when, and
// fails the test unless that container was made. The container is made on the proxy's goroutine,
// which must not fail the test: the outcome comes back over a channel and is checked here.
// Cleanup goes by name, so it also finds a container whose start failed.
func runWithLateRun(t *testing.T, lateName string, when *regexp.Regexp) result {
	t.Helper()
	t.Cleanup(func() { _ = harness.API.ContainerRemove(harness.Ctx(), lateName, container.RemoveOptions{Force: true}) })
	late := make(chan error, 1)
	var once sync.Once
	p := startProxy(t, &faultProxy{})
	p.beforeResponse = func(rt string) {
		if when.MatchString(rt) {
			once.Do(func() {
				_, err := harness.CreateContainer(harness.Container{Name: lateName, Start: true})
				late <- err
			})
		}
	}
	r := runPlugin(t, map[string]string{"DOCKER_HOST": p.host, "PLUGIN_FORCE": "true", "PLUGIN_UNTIL": "1s", "PLUGIN_STACK_PATTERN": "^ci-run-"})
	select {
	case err := <-late:
		if err != nil {
			t.Fatalf("the live run meant to appear during the run could not be made: %v", err)
		}
	default:
		t.Fatalf("no request matching %s reached the proxy, so no live run appeared (exit %d decision %q)", when, r.code, r.report.Decision)
	}
	return r
}

// An API failure in the middle of the prune phases: the phase that failed is reported failed, no
// later phase runs, exit 1, and the last line says what failed. Proves SPEC "The run" 8 (an API
// failure during a prune phase).
func TestAPIErrorDuringPrunePhase(t *testing.T) {
	old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	stopped := harness.MakeContainer(t, harness.Container{})
	buildCache(t)
	time.Sleep(2100 * time.Millisecond)
	p := startProxy(t, &faultProxy{fail: imagePhaseRoute})
	r := runPlugin(t, map[string]string{"DOCKER_HOST": p.host, "PLUGIN_FORCE": "true", "PLUGIN_UNTIL": "1s"})
	if r.code != outcome.ExitRuntime || harness.Exists(t, "container", stopped) || !harness.Exists(t, "image", old) {
		t.Fatalf("exit %d; container gone %v, image kept %v; want exit 1, the container phase done and the image kept",
			r.code, !harness.Exists(t, "container", stopped), harness.Exists(t, "image", old))
	}
	if ph, _ := r.report.Phase(report.PhaseImages); ph.Status != report.StatusFailed {
		t.Errorf("images phase %+v, want failed", ph)
	}
	if ph, _ := r.report.Phase(report.PhaseBuildCache); ph.Status != report.StatusNotRun {
		t.Errorf("build cache phase %+v, want not run after the failure", ph)
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if last := lines[len(lines)-1]; !strings.Contains(last, "injected fault") || !strings.Contains(last, "image") {
		t.Errorf("last stderr line does not say what failed: %q", last)
	}
}

// A live run that appears while the image phase runs stops the build-cache phase. Proves SPEC
// "The run" 6 (the gates re-checked before each phase, the last one included).
func TestStackAppearsBeforeBuildCachePhase(t *testing.T) {
	old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	buildCache(t)
	time.Sleep(2100 * time.Millisecond)
	const lateName = "ci-run-98-late"
	r := runWithLateRun(t, lateName, imagePhaseRoute)
	if r.code != 0 || r.report.Decision != "stopped: "+gates.NoRunGate+" closed before "+report.PhaseBuildCache {
		t.Fatalf("exit %d decision %q", r.code, r.report.Decision)
	}
	if harness.Exists(t, "image", old) {
		t.Errorf("the image phase should have run: %s is still there", old)
	}
	if ph, _ := r.report.Phase(report.PhaseBuildCache); ph.Status != report.StatusNotRun {
		t.Errorf("build cache phase %+v, want not run", ph)
	}
	if !strings.Contains(r.stdout, `container "`+lateName+`"`) {
		t.Errorf("summary does not name the run that appeared")
	}
}
