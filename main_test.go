package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
)

// Bad input: each case exits with SPEC's code, prints one line naming the setting on stderr,
// prints nothing else, and never connects to the daemon socket (DOCKER_HOST points at a socket
// this test listens on and counts connections).
func TestBadInput(t *testing.T) {
	watch, err := fixtures.WatchSocket(filepath.Join(t.TempDir(), "docker.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close()
	dir := t.TempDir()
	badEnv := filepath.Join(dir, "bad.env")
	if err := os.WriteFile(badEnv, []byte("PLUGIN_THRESHOLD=abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		env  map[string]string
		args []string
		code int
		name string // what the one line must name
	}{
		{env: map[string]string{"PLUGIN_THRESHOLD": "abc"}, code: 2, name: "threshold"},
		{env: map[string]string{"PLUGIN_THRESHOLD": "120"}, code: 2, name: "threshold"},
		{env: map[string]string{"PLUGIN_THRESHOLD": "-5"}, code: 2, name: "threshold"},
		{env: map[string]string{"PLUGIN_THRESHOLD": "80%%"}, code: 2, name: "threshold"},
		{env: map[string]string{"PLUGIN_THRESHOLD": "NaN"}, code: 2, name: "threshold"},
		{env: map[string]string{"PLUGIN_MIN_FREE": "12XB"}, code: 2, name: "min_free"},
		{env: map[string]string{"PLUGIN_MIN_FREE": "-1GiB"}, code: 2, name: "min_free"},
		{env: map[string]string{"PLUGIN_MIN_FREE": "0"}, code: 2, name: "min_free"},
		{env: map[string]string{"PLUGIN_MIN_FREE_INODES": "lots"}, code: 2, name: "min_free_inodes"},
		{env: map[string]string{"PLUGIN_MIN_FREE_INODES": "150%"}, code: 2, name: "min_free_inodes"},
		{env: map[string]string{"PLUGIN_UNTIL": "0"}, code: 2, name: "until"},
		{env: map[string]string{"PLUGIN_UNTIL": "-1h"}, code: 2, name: "until"},
		{env: map[string]string{"PLUGIN_UNTIL": "yesterday"}, code: 2, name: "until"},
		{env: map[string]string{"PLUGIN_UNTIL": "2099-01-01T00:00:00Z"}, code: 2, name: "until"},
		{env: map[string]string{"PLUGIN_STACK_PATTERN": "ci-("}, code: 2, name: "stack_pattern"},
		{env: map[string]string{"PLUGIN_STACK_PATTERN": "a,,b"}, code: 2, name: "stack_pattern"},
		{env: map[string]string{"PLUGIN_RUN_LABELS": "=value"}, code: 2, name: "run_labels"},
		{env: map[string]string{"PLUGIN_RUN_LABELS": "key with space"}, code: 2, name: "run_labels"},
		{env: map[string]string{"PLUGIN_LABELS": "!x"}, code: 2, name: "labels"},
		{env: map[string]string{"PLUGIN_DISK_PATH": ""}, code: 2, name: "disk_path"},
		{env: map[string]string{"PLUGIN_DISK_PATH": "/does/not/exist"}, code: 2, name: "disk_path"},
		{env: map[string]string{"PLUGIN_DISK_PATH": "relative/path"}, code: 2, name: "disk_path"},
		{env: map[string]string{"PLUGIN_WAIT": "forever"}, code: 2, name: "wait"},
		{env: map[string]string{"PLUGIN_WAIT": "-5s"}, code: 2, name: "wait"},
		{env: map[string]string{"PLUGIN_TIMEOUT": "0"}, code: 2, name: "timeout"},
		{env: map[string]string{"PLUGIN_DRY_RUN": "yes please"}, code: 2, name: "dry_run"},
		{env: map[string]string{"PLUGIN_DRY_RUN": ""}, code: 2, name: "dry_run"},
		{env: map[string]string{"PLUGIN_FORCE": "maybe"}, code: 2, name: "force"},
		{env: map[string]string{"PLUGIN_FAIL_ABOVE": "150"}, code: 2, name: "fail_above"},
		{env: map[string]string{"PLUGIN_LOG_LEVEL": "loud"}, code: 2, name: "log_level"},
		{env: map[string]string{"PLUGIN_LOG_FORMAT": "xml"}, code: 2, name: "log_format"},
		{env: map[string]string{"PLUGIN_SUMMARY_FILE": "/nonexistent/dir/s.json"}, code: 2, name: "summary_file"},
		{env: map[string]string{"PLUGIN_METRICS_FILE": dir}, code: 2, name: "metrics_file"},
		{env: map[string]string{"PLUGIN_METRICS_FILE": "/dev/full"}, code: 2, name: "metrics_file"},
		{env: map[string]string{"PLUGIN_SUMMARY_FILE": "/dev/null"}, code: 2, name: "summary_file"},
		{env: map[string]string{"DRONE_OUTPUT": "/dev/full"}, code: 2, name: "DRONE_OUTPUT"},
		{env: map[string]string{"PLUGIN_TRESHOLD": "70"}, code: 2, name: "did you mean threshold"},
		{env: map[string]string{"PLUGIN_DRYRUN": "true"}, code: 2, name: "did you mean dry_run"},
		{env: map[string]string{"PLUGIN_STACK_PATTERNS": "^ci-"}, code: 2, name: "did you mean stack_pattern"},
		{env: map[string]string{"PLUGIN_ALL": "true"}, code: 3, name: "all"},
		{env: map[string]string{"PLUGIN_VOLUMES": "true"}, code: 3, name: "volumes"},
		{env: map[string]string{"PLUGIN_NETWORKS": "true"}, code: 3, name: "networks"},
		{env: map[string]string{"PLUGIN_FILTERS": "dangling=false"}, code: 3, name: "filters"},
		{env: map[string]string{"PLUGIN_PRUNE_ALL": "1"}, code: 3, name: "prune_all"},
		{env: map[string]string{"PLUGIN_WAIT": "10m"}, code: 2, name: "wait"},
		{env: map[string]string{"PLUGIN_WAIT": "20m", "PLUGIN_TIMEOUT": "10m"}, code: 2, name: "wait"},
		{env: map[string]string{"PLUGIN_SUMMARY_FILE": filepath.Join(dir, "x"), "PLUGIN_METRICS_FILE": filepath.Join(dir, "x")}, code: 2, name: "metrics_file"},
		{args: []string{"--threshold", "abc"}, code: 2, name: "threshold"},
		{args: []string{"--until", "0s"}, code: 2, name: "until"},
		{args: []string{"--all"}, code: 3, name: "--all"},
		{args: []string{"--volumes=true"}, code: 3, name: "--volumes"},
		{args: []string{"--force=maybe"}, code: 2, name: "force"},
		{env: map[string]string{"PLUGIN_ENV_FILE": filepath.Join(dir, "missing.env")}, code: 2, name: "env_file"},
		// Every form the flag library accepts reaches the env file.
		{args: []string{"-env-file=" + badEnv}, code: 2, name: "threshold"},
		{args: []string{"-env-file", badEnv}, code: 2, name: "threshold"},
		{args: []string{"--env-file=" + badEnv}, code: 2, name: "threshold"},
		{args: []string{"--env-file", badEnv}, code: 2, name: "threshold"},
		{args: []string{"-all"}, code: 3, name: "-all"},
		{args: []string{"-volumes", "--dry-run"}, code: 3, name: "-volumes"},
		{args: []string{"--dry-run", "stray"}, code: 2, name: `"stray"`},
		// The single-dash form of any setting reaches its parser.
		{args: []string{"-threshold=abc"}, code: 2, name: "threshold"},
		{args: []string{"-min-free=12XB"}, code: 2, name: "min_free"},
		{args: []string{"-until", "yesterday"}, code: 2, name: "until"},
		// A pattern cut at a comma inside braces would compile and match nothing.
		{env: map[string]string{"PLUGIN_STACK_PATTERN": "^[a-z0-9]{1"}, code: 2, name: "stack_pattern"},
		{env: map[string]string{"PLUGIN_STACK_PATTERN": "4}-[0-9a-f]{6}_ci_"}, code: 2, name: "stack_pattern"},
		{env: map[string]string{"PLUGIN_STACK_PATTERN": "^ci-,^[a-z]{1,x}"}, code: 2, name: "stack_pattern"},
		// A filesystem that reports no blocks cannot be measured for pressure.
		{env: map[string]string{"PLUGIN_DISK_PATH": "/proc", "PLUGIN_MIN_FREE": "1GB"}, code: 2, name: "disk_path"},
	}
	for _, c := range cases {
		label := strings.TrimSpace(strings.Join(c.args, " ") + " " + envString(c.env))
		t.Run(label, func(t *testing.T) {
			// An env file's values go into the process environment: take them out again.
			t.Cleanup(func() { _ = os.Unsetenv("PLUGIN_THRESHOLD") })
			t.Setenv("DOCKER_HOST", watch.Host())
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"drone-gated-prune"}, c.args...), &stdout, &stderr)
			lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
			if code != c.code || len(lines) != 1 || !strings.Contains(lines[0], c.name) || stdout.Len() != 0 {
				t.Errorf("exit %d (want %d); stderr %q (want one line naming %q); stdout %q", code, c.code, stderr.String(), c.name, stdout.String())
			}
		})
	}
	if n := watch.Connections(); n != 0 {
		t.Errorf("bad input connected to the daemon socket %d time(s)", n)
	}
	t.Logf("%d bad-input cases", len(cases))
}

func envString(env map[string]string) string {
	var parts []string
	for k, v := range env {
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, " ")
}
