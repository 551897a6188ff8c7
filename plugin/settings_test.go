package plugin

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
	"golang.org/x/sys/unix"
)

var now = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func TestDefaults(t *testing.T) {
	c, err := ParseConfig(map[string]string{}, now)
	if err != nil {
		t.Fatal(err)
	}
	if c.Disk.ThresholdPercent != 80 || c.FailAbove != 90 || c.Until.Age != 24*time.Hour || c.Timeout != 10*time.Minute ||
		c.Wait != 0 || c.DryRun || c.Disk.Force || c.LogFormat != "text" || c.LogLevel.String() != "info" || c.DiskPath != "" {
		t.Fatalf("defaults differ from SPEC: %+v", c)
	}
}

func TestParseConfigValues(t *testing.T) {
	dir := t.TempDir()
	c, err := ParseConfig(map[string]string{
		"threshold": "75%", "min_free": "20GiB", "min_free_inodes": "5%", "disk_path": dir, "until": "2026-11-25T00:00:00Z",
		"stack_pattern": "^ci-,-run$", "run_labels": "io.drone,tier=ci", "labels": "ci.prune=ok", "wait": "2m",
		"dry_run": "true", "force": "1", "fail_above": "95", "timeout": "15m", "log_level": "debug", "log_format": "json",
		"summary_file": filepath.Join(dir, "s.json"), "metrics_file": filepath.Join(dir, "m.prom"),
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	if c.Disk.ThresholdPercent != 75 || c.Disk.MinFreeBytes != 20<<30 || !c.Disk.MinFreeInodes.IsPercent || c.Disk.MinFreeInodes.Percent != 5 ||
		c.DiskPath != dir || !c.Until.At.Equal(time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)) || len(c.Runs.Patterns) != 2 ||
		len(c.Runs.Labels) != 2 || c.Runs.Labels[1].Value != "ci" || len(c.Labels) != 1 || c.Wait != 2*time.Minute || !c.DryRun ||
		!c.Disk.Force || c.FailAbove != 95 || c.Timeout != 15*time.Minute || c.LogFormat != "json" {
		t.Fatalf("parsed %+v", c)
	}
}

func TestSizesAndUntil(t *testing.T) {
	for in, want := range map[string]uint64{"500MB": 500e6, "20GB": 20e9, "20GiB": 20 << 30, "1024": 1024, "1.5KiB": 1536} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for in, want := range map[string]time.Time{
		"24h":                  {},
		"1700000000":           time.Unix(1700000000, 0),
		"1700000000.5":         time.Unix(1700000000, 5e8),
		"2026-11-01T10:00:00Z": time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC),
	} {
		u, err := ParseUntil(in, now)
		if err != nil || !u.At.Equal(want) {
			t.Errorf("ParseUntil(%q) = %+v, %v", in, u, err)
		}
	}
	u, _ := ParseUntil("24h", now)
	if got := u.Cutoff(now.Add(500 * time.Millisecond)); !got.Equal(now.Add(-24 * time.Hour)) {
		t.Errorf("cutoff %s, want whole seconds 24h before the daemon's clock", got)
	}
}

// Each invalid value exits 2 with one line naming the setting, the value and what is accepted.
func TestInvalidSettings(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]string{
		"threshold": "abc", "min_free": "12XB", "min_free_inodes": "-3", "disk_path": "relative/path", "until": "yesterday",
		"stack_pattern": "ci-(", "run_labels": "=x", "labels": "a,,b", "wait": "-1s", "dry_run": "yes please", "force": "maybe",
		"fail_above": "101", "timeout": "0", "log_level": "loud", "log_format": "xml", "summary_file": filepath.Join(dir, "nope", "s.json"),
	}
	for key, value := range cases {
		t.Run(key, func(t *testing.T) {
			_, err := ParseConfig(map[string]string{key: value}, now)
			var se *SettingError
			if !errors.As(err, &se) || se.Key != key || se.ExitCode() != outcome.ExitInvalid {
				t.Fatalf("got %v, want a SettingError for %s", err, key)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") || !strings.Contains(msg, key) || !strings.Contains(msg, value) || !strings.Contains(msg, "expected") {
				t.Errorf("message %q must be one line naming %s, %q and what is accepted", msg, key, value)
			}
		})
	}
}

func TestFailAboveIndependentOfThreshold(t *testing.T) {
	if _, err := ParseConfig(map[string]string{"threshold": "95"}, now); err != nil {
		t.Errorf("threshold above the default fail_above refused: %v", err)
	}
}

func TestConflictsAndEmpty(t *testing.T) {
	for name, raw := range map[string]map[string]string{
		"wait not shorter than timeout": {"wait": "10m", "timeout": "10m"},
		"empty value":                   {"disk_path": ""},
		"until in the future":           {"until": "2030-01-01T00:00:00Z"},
		"until zero":                    {"until": "0"},
		"until negative":                {"until": "-1h"},
	} {
		if _, err := ParseConfig(raw, now); err == nil {
			t.Errorf("%s: accepted %v", name, raw)
		}
	}
}

func TestCheckEnvironment(t *testing.T) {
	err := CheckEnvironment([]string{"PLUGIN_TRESHOLD=70", "HOME=/root"})
	var se *SettingError
	if !errors.As(err, &se) || !se.Unknown || se.Suggest != "threshold" || !strings.Contains(err.Error(), "did you mean threshold?") {
		t.Fatalf("typo: %v", err)
	}
	if strings.Contains(err.Error(), "70") {
		t.Errorf("an unknown key's value may be a secret and must not be printed: %v", err)
	}
	for _, kv := range []string{"PLUGIN_ALL=true", "PLUGIN_VOLUMES=true", "PLUGIN_NETWORKS=1", "PLUGIN_FILTERS=dangling=false", "PLUGIN_PRUNE_ALL=yes"} {
		var pe *outcome.PolicyError
		if err := CheckEnvironment([]string{kv}); !errors.As(err, &pe) || pe.ExitCode() != outcome.ExitPolicy {
			t.Errorf("%s: got %v, want a policy violation", kv, err)
		}
	}
	for _, kv := range []string{"PLUGIN_DRY_RUN=", "PLUGIN_FORCE=yes", "PLUGIN_THRESHOLD=abc"} {
		var se *SettingError
		if err := CheckEnvironment([]string{kv}); !errors.As(err, &se) || se.Unknown {
			t.Errorf("%s: got %v, want an invalid-value error", kv, err)
		}
	}
	if err := CheckEnvironment([]string{"PLUGIN_THRESHOLD=80", "PLUGIN_DRY_RUN=true", "DRONE_REPO=a/b"}); err != nil {
		t.Errorf("known keys refused: %v", err)
	}
}

// Every form the flag library accepts names the env file and the scope flags the same way.
func TestScanArgsForms(t *testing.T) {
	get := func(string) string { return "/from/env" }
	cases := []struct {
		args    []string
		envFile string
		policy  bool
	}{
		{[]string{"--env-file", "/a"}, "/a", false},
		{[]string{"--env-file=/b"}, "/b", false},
		{[]string{"-env-file=/c"}, "/c", false},
		{[]string{"-env-file", "/d"}, "/d", false},
		{[]string{"--dry-run", "--env-file", "/e", "--threshold=5"}, "/e", false},
		{[]string{"--threshold", "--env-file"}, "/from/env", false}, // "--env-file" is threshold's value
		{[]string{"--env-file=/f", "--env-file=/g"}, "/g", false},   // the last one wins, as in the flag library
		{[]string{}, "/from/env", false},
		{[]string{"--all"}, "/from/env", true},
		{[]string{"-all"}, "/from/env", true},
		{[]string{"--all=true"}, "/from/env", true},
		{[]string{"-volumes=1"}, "/from/env", true},
		{[]string{"--prune-all"}, "/from/env", true},
		{[]string{"--dry-run", "--networks"}, "/from/env", true},
		{[]string{"--threshold", "80", "--filter", "dangling=false"}, "/from/env", true},
		{[]string{"--threshold", "--all"}, "/from/env", false}, // "--all" is threshold's value, refused later as a percent
		{[]string{"--", "--all"}, "/from/env", true},           // after "--" it is an argument, still refused
		{[]string{"stray", "--all"}, "/from/env", true},
	}
	for _, c := range cases {
		if got := EnvFilePath(c.args, get); got != c.envFile {
			t.Errorf("%q: env file %q, want %q", c.args, got, c.envFile)
		}
		err := CheckArgs(c.args)
		var pe *outcome.PolicyError
		if errors.As(err, &pe) != c.policy {
			t.Errorf("%q: CheckArgs = %v, want policy violation %v", c.args, err, c.policy)
		}
	}
	if err := CheckArgs([]string{"--threshold", "80", "extra"}); outcome.ExitCode(err) != outcome.ExitInvalid || !strings.Contains(err.Error(), `"extra"`) {
		t.Errorf("a stray argument must be a usage error naming it: %v", err)
	}
}

func TestReadCIEnvironment(t *testing.T) {
	// Woodpecker 1.x also sets DRONE_BUILD_NUMBER; it must be recognised as Woodpecker. Its own
	// workflow is read off the plugin's container, whatever CI_STEP_NAME says (TestCIDefaults).
	env := map[string]string{"CI": "woodpecker", "CI_REPO": "wp/repo", "CI_PIPELINE_NUMBER": "12", "DRONE_BUILD_NUMBER": "12", "CI_STEP_NAME": "plan"}
	ci := ReadCIEnvironment(func(k string) string { return env[k] })
	if ci.System != CIWoodpecker || ci.RunLabel != "wp_uuid" || ci.Own.SelfNetwork == nil || ci.CardPath != "" {
		t.Errorf("woodpecker: %+v", ci)
	}
	env = map[string]string{"DRONE": "true", "DRONE_REPO": "d/r", "DRONE_BUILD_NUMBER": "3", "CI_REPO": "d/r", "DRONE_CARD_PATH": "/dev/stdout"}
	ci = ReadCIEnvironment(func(k string) string { return env[k] })
	if ci.System != CIDrone || ci.RunLabel != "io.drone.build.number" || ci.Own.Labels["io.drone.build.number"] != "3" ||
		ci.Own.Labels["io.drone.repo.slug"] != "d/r" || ci.CardPath != "/dev/stdout" {
		t.Errorf("drone: %+v", ci)
	}
	if ci := ReadCIEnvironment(func(string) string { return "" }); ci.System != "" || ci.RunLabel != "" {
		t.Errorf("outside any CI: %+v", ci)
	}
}

// Inside a CI with no run policy, the CI's own run label is the default; a policy that is given
// stays as given, with a warning when it leaves the CI's own runs unwatched.
func TestApplyCI(t *testing.T) {
	drone := ReadCIEnvironment(func(k string) string { return map[string]string{"DRONE": "true", "DRONE_BUILD_NUMBER": "3"}[k] })
	c, _ := ParseConfig(map[string]string{}, now)
	c.ApplyCI(drone)
	if len(c.Runs.Labels) != 1 || c.Runs.Labels[0].Key != "io.drone.build.number" || !strings.Contains(c.Runs.Source, "Drone") {
		t.Errorf("default inside Drone: %+v", c.Runs)
	}
	c, _ = ParseConfig(map[string]string{"stack_pattern": "^ci-"}, now)
	c.ApplyCI(drone)
	if len(c.Runs.Labels) != 0 || c.Runs.Source != "" || len(c.Runs.Warnings) != 1 {
		t.Errorf("a given stack_pattern must stay alone and warn: %+v", c.Runs)
	}
	c, _ = ParseConfig(map[string]string{}, now)
	c.ApplyCI(ReadCIEnvironment(func(string) string { return "" }))
	if len(c.Runs.Labels) != 0 || len(c.Runs.Patterns) != 0 {
		t.Errorf("outside any CI the policy stays empty (the gate says it is blind): %+v", c.Runs)
	}
}

// The docs' settings tables list every setting with the default the code uses.
func TestDocsSettingsTable(t *testing.T) {
	for _, doc := range []string{"../README.md", "../docs/usage.md"} {
		data, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range Settings {
			def := s.Default
			if def == "" {
				def = "unset"
			}
			row := "| `" + s.Key + "` | `" + def + "` |"
			if !strings.Contains(string(data), row) {
				t.Errorf("%s settings table lacks the row starting %s", doc, row)
			}
		}
	}
}

// A fleet setting without fleet is refused under its own name.
func TestFleetSettingsNeedFleet(t *testing.T) {
	for key, value := range map[string]string{"fleet_image": "x:1", "fleet_socket": "/run/docker.sock"} {
		_, err := ParseConfig(map[string]string{key: value}, now)
		var se *SettingError
		if !errors.As(err, &se) || se.Key != key || se.Value != value {
			t.Errorf("%s without fleet: %v; want a setting error naming %s=%q", key, err, key, value)
		}
	}
}

// Paths the outputs go to are checked before the run: a device, a directory, a read-only
// directory are refused as invalid settings naming the setting; Drone's /dev/stdout card is not.
func TestOutputPathsCheckedBeforeTheRun(t *testing.T) {
	readOnly := t.TempDir()
	if err := unix.Mount("tmpfs", readOnly, "tmpfs", unix.MS_RDONLY, "size=1m"); err != nil {
		t.Skipf("cannot mount a read-only tmpfs here (it takes root, as the engine tests do): %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(readOnly, 0) })
	for _, c := range []struct{ key, value string }{
		{"metrics_file", "/dev/full"},
		{"summary_file", "/dev/null"},
		{"metrics_file", filepath.Join(readOnly, "prune.prom")},
		{"summary_file", t.TempDir()},
	} {
		_, err := ParseConfig(map[string]string{c.key: c.value}, now)
		var se *SettingError
		if !errors.As(err, &se) || se.Key != c.key {
			t.Errorf("%s=%s: %v; want a setting error naming %s", c.key, c.value, err, c.key)
		}
	}
	writable := filepath.Join(t.TempDir(), "out.env")
	for _, c := range []struct {
		card, output, refused string
	}{
		{"/dev/stdout", writable, ""},
		{"/dev/stderr", "", ""},
		{filepath.Join(readOnly, "card.json"), "", "DRONE_CARD_PATH"},
		{"/dev/stdout", "/dev/full", "DRONE_OUTPUT"},
		{"", filepath.Join(readOnly, "out.env"), "DRONE_OUTPUT"},
	} {
		cfg, err := ParseConfig(map[string]string{}, now)
		if err != nil {
			t.Fatal(err)
		}
		cfg.CI.CardPath, cfg.CI.OutputFile = c.card, c.output
		err = cfg.CheckCIDestinations()
		var se *SettingError
		if c.refused == "" && err != nil || c.refused != "" && (!errors.As(err, &se) || se.Key != c.refused) {
			t.Errorf("card %q output %q: %v; want refused %q", c.card, c.output, err, c.refused)
		}
	}
}
