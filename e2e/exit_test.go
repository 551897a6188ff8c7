package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

func containerStopOptions() container.StopOptions { t := 1; return container.StopOptions{Timeout: &t} }

// A dead socket is exit 1 within seconds, with one clear line and a summary.
// Proves SPEC "The run" 8 (daemon unreachable) and "Exit codes" 1; docs/usage.md "Exit codes".
func TestDeadSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "dead.sock")
	r := runPlugin(t, map[string]string{"DOCKER_HOST": "unix://" + sock, "PLUGIN_FORCE": "true"})
	if r.code != outcome.ExitRuntime {
		t.Fatalf("exit %d, want 1", r.code)
	}
	if r.elapsed > 5*time.Second {
		t.Errorf("took %s to give up on a dead socket", r.elapsed)
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], "daemon unreachable at unix://"+sock) {
		t.Errorf("stderr is not one clear line: %q", r.stderr)
	}
	if !strings.Contains(r.stdout, "decision: error") {
		t.Errorf("no summary on stdout")
	}
}

// Exit codes 2 and 3 as SPEC's table gives them (0 and 1 are reached by the other tests: see
// docs/testing.md). Proves SPEC "Exit codes", "The run" 1 (one line, nothing contacted) and 7
// (the fail_above ceiling, also at a kept-cache ending), and SPEC "Settings" (a typo names the
// closest setting; widening the scope is refused); docs/usage.md "Why the gates cannot be switched
// off" and "Exit codes".
func TestExitCodes(t *testing.T) {
	// 2: an invalid value names the setting and contacts no daemon.
	watch, err := fixtures.WatchSocket(filepath.Join(t.TempDir(), "watch.sock"))
	harness.Must(t, err)
	defer watch.Close()
	r := runPlugin(t, map[string]string{"DOCKER_HOST": watch.Host(), "PLUGIN_THRESHOLD": "120"})
	if r.code != outcome.ExitInvalid || !strings.Contains(r.stderr, `invalid setting threshold="120"`) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Errorf("threshold 120: exit %d stderr %q", r.code, r.stderr)
	}
	r = runPlugin(t, map[string]string{"DOCKER_HOST": watch.Host(), "PLUGIN_TRESHOLD": "70"})
	if r.code != outcome.ExitInvalid || !strings.Contains(r.stderr, "did you mean threshold?") {
		t.Errorf("typo: exit %d stderr %q", r.code, r.stderr)
	}
	if watch.Connections() != 0 {
		t.Errorf("invalid settings contacted the daemon socket")
	}
	// 3: a scope-widening request.
	for _, key := range []string{"PLUGIN_ALL", "PLUGIN_VOLUMES", "PLUGIN_NETWORKS", "PLUGIN_FILTERS"} {
		value := "true"
		if key == "PLUGIN_FILTERS" {
			value = "dangling=false"
		}
		r = runPlugin(t, map[string]string{key: value})
		if r.code != outcome.ExitPolicy || !strings.Contains(r.stderr, "never prunes tagged images, volumes or networks") {
			t.Errorf("%s: exit %d stderr %q", key, r.code, r.stderr)
		}
	}
	// 3: the ceiling still breached after the run (any real disk is above 0.1% used).
	r = runPlugin(t, map[string]string{"PLUGIN_THRESHOLD": "0.1", "PLUGIN_FAIL_ABOVE": "0.1", "PLUGIN_DRY_RUN": "true"})
	if r.code != outcome.ExitPolicy || !r.report.CeilingBreached || !strings.Contains(r.stderr, "fail_above") {
		t.Errorf("ceiling: exit %d breached %v stderr %q", r.code, r.report.CeilingBreached, r.stderr)
	}
	// 3 also below threshold: the ceiling is an alert level checked at every ending.
	r = runPlugin(t, map[string]string{"PLUGIN_THRESHOLD": "100", "PLUGIN_FAIL_ABOVE": "0.1", "PLUGIN_DISK_PATH": "/"})
	if r.code != outcome.ExitPolicy || r.report.Decision != report.DecisionKeptCache || !r.report.CeilingBreached {
		t.Errorf("kept cache above the ceiling: exit %d decision %q breached %v", r.code, r.report.Decision, r.report.CeilingBreached)
	}
	// 3 also when a live run skipped the prune: the skip is not a way round the alert.
	name := "dgp-ceiling-" + fixtures.RandomHex(4)
	harness.MakeContainer(t, harness.Container{Name: name, Start: true})
	r = runPlugin(t, map[string]string{"PLUGIN_THRESHOLD": "0.1", "PLUGIN_FAIL_ABOVE": "0.1", "PLUGIN_STACK_PATTERN": "^" + name + "$", "PLUGIN_DRY_RUN": "true"})
	if r.code != outcome.ExitPolicy || r.report.Decision != "skipped: no_run" || !r.report.CeilingBreached {
		t.Errorf("skipped above the ceiling: exit %d decision %q breached %v", r.code, r.report.Decision, r.report.CeilingBreached)
	}
}

// min_free and min_free_inodes open the disk gate on the engine's own data root while the disk is
// below threshold; a floor the disk clears keeps the cache.
func TestFreeFloorsOpenDiskGate(t *testing.T) {
	base := map[string]string{"PLUGIN_THRESHOLD": "100", "PLUGIN_FAIL_ABOVE": "100", "PLUGIN_DRY_RUN": "true"}
	cases := []struct {
		key, value string
		open       bool
		reason     string
	}{
		{"PLUGIN_MIN_FREE", "1000TB", true, "is below min_free"},
		{"PLUGIN_MIN_FREE", "1B", false, "below the 100% threshold"},
		{"PLUGIN_MIN_FREE_INODES", "100%", true, "is below min_free_inodes"},
		{"PLUGIN_MIN_FREE_INODES", "1", false, "below the 100% threshold"},
	}
	for _, c := range cases {
		env := map[string]string{c.key: c.value}
		for k, v := range base {
			env[k] = v
		}
		r := runPlugin(t, env)
		v, _ := r.report.Gate("disk_pressure")
		want := report.DecisionKeptCache
		if c.open {
			want = report.DecisionDryRun
		}
		if r.code != 0 || r.report.Decision != want || v.Open != c.open || !strings.Contains(v.Reason, c.reason) {
			t.Errorf("%s=%s: exit %d, decision %q, disk gate open %v (%q); want exit 0, %q, open %v, a reason with %q",
				c.key, c.value, r.code, r.report.Decision, v.Open, v.Reason, want, c.open, c.reason)
		}
	}
}

// Settings arrive from an env file too, flags override the env file's values, and with disk_path
// set a below-threshold run contacts no daemon at all. Proves SPEC "Settings" (sources: env file,
// flags) and "The run" 2 (the common case makes no daemon call beyond finding the data root);
// docs/usage.md "Outside CI" and "What it does" 2.
func TestEnvFileAndFlags(t *testing.T) {
	watch, err := fixtures.WatchSocket(filepath.Join(t.TempDir(), "watch.sock"))
	harness.Must(t, err)
	defer watch.Close()
	file := filepath.Join(t.TempDir(), "prune.env")
	harness.Must(t, os.WriteFile(file, []byte("PLUGIN_THRESHOLD=100\nPLUGIN_FAIL_ABOVE=100\nPLUGIN_DISK_PATH=/\nPLUGIN_UNTIL=12h\n"), 0o644))
	r := runPlugin(t, map[string]string{"PLUGIN_ENV_FILE": file, "DOCKER_HOST": watch.Host()})
	if r.code != 0 || r.report.Decision != report.DecisionKeptCache || r.report.Until != "12h" || watch.Connections() != 0 {
		t.Errorf("env file: exit %d decision %q until %q, %d daemon connections (want 0)", r.code, r.report.Decision, r.report.Until, watch.Connections())
	}
	r = runPlugin(t, map[string]string{"PLUGIN_ENV_FILE": file}, "--force", "--dry-run", "--until", "48h")
	if r.code != 0 || r.report.Decision != report.DecisionDryRun || r.report.Until != "48h" {
		t.Errorf("flags over the env file: exit %d decision %q until %q", r.code, r.report.Decision, r.report.Until)
	}
}
