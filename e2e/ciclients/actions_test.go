package ciclients

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/volume"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
	"github.com/drone-gated-prune/drone-gated-prune/plugin"
)

// ciActJobImage is the image act runs a job container from (`-P ubuntu-latest=`): act starts it
// as `tail -f /dev/null`, so it holds the sleeper as /usr/bin/tail, which waits for SIGTERM.
const ciActJobImage = "dgp-act-job:e2e"

// ciWantActionsDefault checks a run inside an Actions-format runner with no policy set: the no-run
// gate used that runner's default and said so, and warned of nothing.
func ciWantActionsDefault(t *testing.T, r report.Report, system string) {
	t.Helper()
	v := ciNoRunVerdict(t, r)
	if !strings.Contains(v.Reason, "default inside "+system) || len(v.Warnings) > 0 {
		t.Errorf("no-run gate %q, warnings %q; want the %s default named and no warning", v.Reason, v.Warnings, system)
	}
}

// ciWantHeldBy checks that a run was skipped by the no-run gate with evidence naming only
// containers whose names start with prefix.
func ciWantHeldBy(t *testing.T, r report.Report, prefix string) {
	t.Helper()
	v := ciNoRunVerdict(t, r)
	if r.Decision != "skipped: "+gates.NoRunGate || v.Open || len(v.Evidence) == 0 {
		t.Fatalf("decision %q, no-run gate open %v (%s, %q); want skipped by %s", r.Decision, v.Open, v.Reason, v.Evidence, gates.NoRunGate)
	}
	for _, e := range v.Evidence {
		if !strings.Contains(e, `"`+prefix) {
			t.Errorf("no-run evidence %q names no container of %s*", e, prefix)
		}
	}
}

// actRun is one `act` run of one workflow file, in its own directory (its workspace, bound into
// the step containers at the same path).
type actRun struct {
	bin, dir, file, home string
}

func newActRun(t *testing.T, bin, workflow string) actRun {
	t.Helper()
	dir := t.TempDir()
	home := t.TempDir()
	harness.Must(t, os.MkdirAll(filepath.Join(dir, ".github", "workflows"), 0o755))
	file := ciWriteFile(t, filepath.Join(dir, ".github", "workflows"), "w.yml", workflow)
	return actRun{bin: bin, dir: dir, file: file, home: home}
}

// command is act as an operator runs it on a host with no registry: local images only, no
// cache server, the job image given, the workspace bound.
func (a actRun) command(ctx context.Context) *exec.Cmd {
	cmd := exec.CommandContext(ctx, a.bin, "push", "-W", a.file, "--pull=false", "--action-offline-mode",
		"--no-cache-server", "--bind", "-P", "ubuntu-latest="+ciActJobImage)
	cmd.Dir = a.dir
	cmd.Env = ciClientEnv("HOME="+a.home, "XDG_CONFIG_HOME="+filepath.Join(a.home, ".config"), "XDG_CACHE_HOME="+filepath.Join(a.home, ".cache"))
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// run runs the workflow to its end and reads the plugin's summary from the workspace.
func (a actRun) run(t *testing.T) (int, report.Report) {
	t.Helper()
	summary := filepath.Join(a.dir, ciSummaryName)
	_ = os.Remove(summary)
	c, cancel := context.WithTimeout(harness.Ctx(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := a.command(c).CombinedOutput()
	code := 0
	if exit, ok := err.(*exec.ExitError); ok {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatalf("running act: %v\n%s", err, out)
	}
	t.Logf("act %s: exit %d in %s\n%s", filepath.Base(a.dir), code, time.Since(start).Round(time.Millisecond), out)
	r := readSummary(t, summary)
	if (r.ExitCode == 0) != (code == 0) {
		t.Errorf("the plugin exited %d, act %d", r.ExitCode, code)
	}
	return code, r
}

func readSummary(t *testing.T, path string) report.Report {
	t.Helper()
	var r report.Report
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the plugin step wrote no summary: %v", err)
	}
	harness.Must(t, json.Unmarshal(data, &r))
	return r
}

// removeNamed force-removes the containers whose names start with prefix, and act's volumes of
// the same names, as an interrupted act may leave them.
func removeNamed(t *testing.T, prefix string) {
	cs, err := harness.API.ContainerList(harness.Ctx(), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", "^/"+prefix))})
	if err != nil {
		t.Errorf("listing %s* containers: %v", prefix, err)
	}
	for _, c := range cs {
		_ = harness.API.ContainerRemove(harness.Ctx(), c.ID, container.RemoveOptions{Force: true})
	}
	vs, err := harness.API.VolumeList(harness.Ctx(), volume.ListOptions{Filters: filters.NewArgs(filters.Arg("name", prefix))})
	if err == nil {
		for _, v := range vs.Volumes {
			if strings.HasPrefix(v.Name, prefix) {
				_ = harness.API.VolumeRemove(harness.Ctx(), v.Name, true)
			}
		}
	}
}

// The plugin as a `uses: docker://` step of a real act run with no policy set: it prunes beside
// its own job container, a concurrent act run's job holds it, and it prunes once that run ends.
func ciActWorkflows(t *testing.T, bin string) {
	sleeper, err := os.ReadFile(harness.SleeperBin)
	harness.Must(t, err)
	harness.LoadImage(t, fixtures.Image{Tag: ciActJobImage, Created: time.Now(), Files: map[string][]byte{"usr/bin/tail": sleeper}})
	id := fixtures.RandomHex(3)
	prune := newActRun(t, bin, fmt.Sprintf(`name: cleanup%[1]s
on: push
jobs:
  prune:
    runs-on: ubuntu-latest
    steps:
      - uses: docker://%[2]s
        env:
          PLUGIN_FORCE: "true"
          PLUGIN_SUMMARY_FILE: ${{ github.workspace }}/%[3]s
`, id, harness.PluginImageTag, ciSummaryName))
	busy := newActRun(t, bin, fmt.Sprintf(`name: busy%[1]s
on: push
jobs:
  work:
    runs-on: ubuntu-latest
    steps:
      - uses: docker://%[2]s
`, id, harness.SleeperImage))
	t.Cleanup(func() { removeNamed(t, "act-cleanup"+id); removeNamed(t, "act-busy"+id) })

	// Alone: the plugin's own job container is running and is no live run; the old image goes.
	old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	code, r := prune.run(t)
	if code != 0 || r.Decision != report.DecisionPruned || harness.Exists(t, "image", old) {
		t.Fatalf("act alone: exit %d decision %q, old image kept %v; want 0, %q, removed", code, r.Decision, harness.Exists(t, "image", old), report.DecisionPruned)
	}
	ciWantNoRunOpen(t, r)
	ciWantActionsDefault(t, r, plugin.CIAct)

	// A concurrent act run with a long step: it holds the prune.
	old = harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	c, cancel := context.WithCancel(harness.Ctx())
	bg := startCIProcess(t, busy.command(c), cancel)
	step := ciRunningContainer(t, "the busy act run's step", filters.NewArgs(filters.Arg("name", "^/act-busy"+id), filters.Arg("ancestor", harness.SleeperImage)))
	t.Logf("the busy act run's step is %s", ciContainerName(step))
	code, r = prune.run(t)
	if !bg.running() {
		t.Fatalf("the busy act run ended while the plugin ran:\n%s", bg.out.String())
	}
	if code != 0 {
		t.Errorf("act exit %d", code)
	}
	ciWantHeldBy(t, r, "act-busy"+id)
	ciWantActionsDefault(t, r, plugin.CIAct)
	if !harness.Exists(t, "image", old) {
		t.Errorf("the old dangling image was removed while the busy act run ran")
	}

	// It ends: the prune goes through again.
	bg.interrupt(t)
	removeNamed(t, "act-busy"+id)
	code, r = prune.run(t)
	if code != 0 || r.Decision != report.DecisionPruned || harness.Exists(t, "image", old) {
		t.Fatalf("act after the busy run: exit %d decision %q; want 0, %q and the old image removed", code, r.Decision, report.DecisionPruned)
	}
	ciWantNoRunOpen(t, r)
}

// The Gitea and Forgejo runners, with containers named exactly as they name them (their runners
// themselves are not run here): the job container runs the sleeper, the plugin runs as the job's
// docker:// step sharing the job container's network, with the runner's variables. Another
// task's job container holds the prune; its own job's does not, nor does a task whose number
// only starts like its own.
func ciActionsRunnerNames(t *testing.T) {
	const sha = "e86f0e333bbca920efcb965559e5824907ca366be5dd21b080d2289af21a5776"
	cases := []struct {
		system, prefix, workflow string
		env                      map[string]string
	}{
		{plugin.CIGitea, "GITEA-ACTIONS-TASK-", "WORKFLOW-cleanup", map[string]string{"GITHUB_ACTIONS": "true", "GITEA_ACTIONS": "true", "ACT": "true", "CI": "true"}},
		{plugin.CIForgejo, "FORGEJO-ACTIONS-TASK-", "WORKFLOW-" + sha, map[string]string{"GITHUB_ACTIONS": "true", "GITEA_ACTIONS": "true", "FORGEJO_ACTIONS": "true", "ACT": "true", "CI": "true"}},
	}
	for _, c := range cases {
		t.Run(c.system, func(t *testing.T) {
			task := 900 + int(fixtures.RandomHex(1)[0]%50)
			own := fmt.Sprintf("%s%d", c.prefix, task)
			job := harness.MakeContainer(t, harness.Container{Name: own + "_" + c.workflow + "_JOB-prune", Start: true})
			// A task numbered like own with one more digit is another task.
			harness.MakeContainer(t, harness.Container{Name: fmt.Sprintf("%s%d1-%s-JOB-build_STEP-0", c.prefix, task, c.workflow), Start: true})
			outDir := t.TempDir()
			stepName := own + "-" + c.workflow + "-JOB-prune_STEP-0"
			env := map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_DRY_RUN": "true"}
			for k, v := range c.env {
				env[k] = v
			}
			r := runImageAs(t, stepName, "container:"+job, env, map[string]string{}, outDir)
			ciWantHeldBy(t, r.report, fmt.Sprintf("%s%d1-", c.prefix, task))
			ciWantActionsDefault(t, r.report, c.system)

			removeNamed(t, fmt.Sprintf("%s%d1-", c.prefix, task))
			r = runImageAs(t, stepName+"b", "container:"+job, env, map[string]string{}, outDir)
			if r.code != 0 || r.report.Decision != report.DecisionDryRun {
				t.Fatalf("own job alone: exit %d decision %q; want 0, %q", r.code, r.report.Decision, report.DecisionDryRun)
			}
			ciWantNoRunOpen(t, r.report)
			ciWantActionsDefault(t, r.report, c.system)
		})
	}
}
