package plugin

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/xrash/smetrics"
	"golang.org/x/sys/unix"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// Setting describes one setting: its snake_case key (PLUGIN_<KEY> in the environment,
// --key-with-dashes on the command line), its default, what it means and how its value is read
// into a Config. Settings is the one place that knows the names: the flags, the unknown-key check,
// the parsing and the docs' tables are made from it or checked against it.
type Setting struct {
	Key     string
	Default string
	Usage   string
	// Bool settings are flags that need no value on the command line.
	Bool bool
	// set parses a value into c; its error says what is accepted.
	set func(c *Config, v string, now time.Time) error
}

// Settings lists every setting in the order of SPEC's table.
var Settings = []Setting{
	{Key: "threshold", Default: "80", Usage: "disk-pressure gate opens at or above this percent used (80 or 80%)",
		set: func(c *Config, v string, _ time.Time) (err error) {
			c.Disk.ThresholdPercent, err = ParsePercent(v)
			return
		}},
	{Key: "min_free", Usage: "gate also opens when free space is below this size (20GiB, 500MB)",
		set: func(c *Config, v string, _ time.Time) (err error) { c.Disk.MinFreeBytes, err = ParseSize(v); return }},
	{Key: "min_free_inodes", Usage: "gate also opens when free inodes are below this count or percent",
		set: func(c *Config, v string, _ time.Time) (err error) {
			c.Disk.MinFreeInodes, err = ParseInodeFloor(v)
			return
		}},
	{Key: "disk_path", Usage: "path whose filesystem is measured (default: Docker's data root if visible, else /)",
		set: func(c *Config, v string, _ time.Time) (err error) { c.DiskPath, err = ParseDiskPath(v); return }},
	{Key: "until", Default: "24h", Usage: "age filter for every prune: a positive duration, a Unix timestamp or an RFC 3339 time",
		set: func(c *Config, v string, now time.Time) (err error) { c.Until, err = ParseUntil(v, now); return }},
	{Key: "stack_pattern", Usage: "regular expressions (comma-separated) naming CI run stacks, compose projects, services or containers",
		set: func(c *Config, v string, _ time.Time) (err error) { c.Runs.Patterns, err = ParsePatterns(v); return }},
	{Key: "run_labels", Usage: "label selectors (key or key=value, comma-separated); a live container carrying one is a live run (default inside Drone or Woodpecker: that CI's run label)",
		set: func(c *Config, v string, _ time.Time) (err error) {
			c.Runs.Labels, err = ParseLabelSelectors(v)
			return
		}},
	{Key: "labels", Usage: "prune only containers and images carrying these labels (key or key=value, comma-separated)",
		set: func(c *Config, v string, _ time.Time) (err error) { c.Labels, err = ParseLabelSelectors(v); return }},
	{Key: "wait", Default: "0", Usage: "keep re-checking closed no-run / no-converge gates for up to this long",
		set: func(c *Config, v string, _ time.Time) (err error) { c.Wait, err = ParseDuration(v, true); return }},
	{Key: "dry_run", Default: "false", Usage: "list what each phase would remove, remove nothing", Bool: true,
		set: func(c *Config, v string, _ time.Time) (err error) { c.DryRun, err = ParseBool(v); return }},
	{Key: "force", Default: "false", Usage: "bypass the disk-pressure gate only", Bool: true,
		set: func(c *Config, v string, _ time.Time) (err error) { c.Disk.Force, err = ParseBool(v); return }},
	{Key: "fail_above", Default: "90", Usage: "fail the step (exit 3) if the filesystem is still at or above this percent at the end",
		set: func(c *Config, v string, _ time.Time) (err error) { c.FailAbove, err = ParsePercent(v); return }},
	{Key: "timeout", Default: "10m", Usage: "bound on the whole run",
		set: func(c *Config, v string, _ time.Time) (err error) { c.Timeout, err = ParseDuration(v, false); return }},
	{Key: "log_level", Default: "info", Usage: "logrus level: panic, fatal, error, warn, info, debug, trace",
		set: func(c *Config, v string, _ time.Time) (err error) { c.LogLevel, err = ParseLogLevel(v); return }},
	{Key: "log_format", Default: "text", Usage: "text or json",
		set: func(c *Config, v string, _ time.Time) (err error) { c.LogFormat, err = ParseLogFormat(v); return }},
	{Key: "summary_file", Usage: "also write the summary as JSON to this path",
		set: func(c *Config, v string, _ time.Time) (err error) { c.SummaryFile, err = ParseOutputPath(v); return }},
	{Key: "metrics_file", Usage: "also write Prometheus text-format metrics to this path",
		set: func(c *Config, v string, _ time.Time) (err error) { c.MetricsFile, err = ParseOutputPath(v); return }},
	{Key: "build_cache_budget", Usage: "with the disk gate open, also let BuildKit remove least-recently-used unused build cache until the unused cache fits this size (20GiB, 500MB)",
		set: func(c *Config, v string, _ time.Time) (err error) { c.BuildCacheBudget, err = ParseSize(v); return }},
	{Key: "fleet", Default: "false", Usage: "on a swarm manager: judge the cluster-wide gates here, then run the gated prune on every node as a global job", Bool: true,
		set: func(c *Config, v string, _ time.Time) (err error) { c.Fleet, err = ParseBool(v); return }},
	{Key: "fleet_image", Usage: "with fleet: the plugin image the nodes run (default: the image of the plugin's own container)",
		set: func(c *Config, v string, _ time.Time) error { c.FleetImage = strings.TrimSpace(v); return nil }},
	{Key: "fleet_socket", Default: "/var/run/docker.sock", Usage: "with fleet: the path of the Docker socket on every node",
		set: func(c *Config, v string, _ time.Time) (err error) { c.FleetSocket, err = ParseSocketPath(v); return }},
	// The env file is loaded before the settings are read (LoadEnvFile); here it only has to be given.
	{Key: "env_file", Usage: "load settings from this env file first (values already in the environment win)",
		set: func(*Config, string, time.Time) error { return nil }},
}

// scopeKeys are requests to widen what is pruned. No setting does that, so they are refused as a
// policy violation rather than reported as unknown.
var scopeKeys = map[string]string{
	"all":       "tagged images",
	"prune_all": "tagged images",
	"volumes":   "volumes",
	"networks":  "networks",
	"filters":   "objects outside the conservative tier",
	"filter":    "objects outside the conservative tier",
}

// EnvName is the environment variable that carries a setting.
func EnvName(key string) string { return "PLUGIN_" + strings.ToUpper(key) }

// FlagName is the command-line flag that carries a setting.
func FlagName(key string) string { return strings.ReplaceAll(key, "_", "-") }

// settingByKey finds a setting by its snake_case key.
func settingByKey(key string) (Setting, bool) {
	for _, s := range Settings {
		if s.Key == key {
			return s, true
		}
	}
	return Setting{}, false
}

// Config is the validated policy for one run.
type Config struct {
	// Disk is the pressure band; Disk.Force is the force setting.
	Disk gates.DiskPolicy
	// DiskPath is the path to measure; empty means the daemon's data root, else /.
	DiskPath string
	// Until is the age filter passed to every prune.
	Until Until
	// Runs says what a live CI run looks like (stack_pattern, run_labels, own build).
	Runs gates.RunPolicy
	// Labels narrows the container and image prunes; set, it skips the build-cache phase.
	Labels []gates.LabelSelector
	// Wait is how long closed no-run / no-converge gates are re-checked.
	Wait time.Duration
	// DryRun lists instead of removing.
	DryRun bool
	// FailAbove is the policy ceiling in percent, checked at every ending.
	FailAbove float64
	// Timeout bounds the whole run.
	Timeout time.Duration
	// LogLevel and LogFormat configure logrus.
	LogLevel  logrus.Level
	LogFormat string
	// BuildCacheBudget, when not zero, is the size unused build cache may keep once the disk gate
	// is open: a phase after the build-cache phase removes the least recently used beyond it.
	BuildCacheBudget uint64
	// Fleet runs the prune on every node of the swarm (FleetImage, FleetSocket: what they run and
	// where their socket is).
	Fleet       bool
	FleetImage  string
	FleetSocket string
	// Raw is the settings as given, which a fleet run passes on to the nodes.
	Raw map[string]string
	// SummaryFile and MetricsFile are optional outputs.
	SummaryFile string
	MetricsFile string
	// CI carries what the CI system told the step about itself.
	CI CIEnvironment
}

// ParseConfig validates raw setting values (key → value; absent keys take their defaults) into a
// Config, reading each through its Setting's parser. The first invalid value is returned as a
// *SettingError; nothing is contacted.
func ParseConfig(raw map[string]string, now time.Time) (Config, error) {
	c := Config{Raw: maps.Clone(raw)}
	for _, s := range Settings {
		v, given := raw[s.Key]
		if !given {
			v = s.Default
		}
		if v == "" && !given {
			continue
		}
		if strings.TrimSpace(v) == "" {
			return Config{}, &SettingError{Key: s.Key, Value: v, Accepted: "a value (an empty value usually means a missing secret); remove the setting to use its default"}
		}
		if err := s.set(&c, v, now); err != nil {
			return Config{}, &SettingError{Key: s.Key, Value: v, Accepted: err.Error()}
		}
	}
	// Conflicts between settings that are each valid alone.
	switch {
	case c.Wait >= c.Timeout:
		return Config{}, &SettingError{Key: "wait", Value: c.Wait.String(),
			Accepted: fmt.Sprintf("a duration shorter than timeout (%s)", c.Timeout)}
	case c.FleetImage != "" && !c.Fleet:
		return Config{}, &SettingError{Key: "fleet_image", Value: c.FleetImage, Accepted: "fleet_image only with fleet: true"}
	case raw["fleet_socket"] != "" && !c.Fleet:
		return Config{}, &SettingError{Key: "fleet_socket", Value: raw["fleet_socket"], Accepted: "fleet_socket only with fleet: true"}
	case c.SummaryFile != "" && c.SummaryFile == c.MetricsFile:
		return Config{}, &SettingError{Key: "metrics_file", Value: c.MetricsFile, Accepted: "a path other than summary_file"}
	}
	return c, nil
}

// Destinations are where the run's summaries go besides stdout: the CI system's card and outputs,
// and the files the settings name.
func (c Config) Destinations() report.Destinations {
	return report.Destinations{Card: c.CI.CardPath, Outputs: c.CI.OutputFile, Summary: c.SummaryFile, Metrics: c.MetricsFile}
}

// CheckCIDestinations refuses, as invalid settings and before anything is contacted, a card path
// or $DRONE_OUTPUT the run could not write: the settings' own files are checked as they are read.
// Drone's /dev/stdout (or /dev/stderr) card goes into the log.
func (c Config) CheckCIDestinations() error {
	if p := c.CI.CardPath; p != "" && !report.CardInLog(p) {
		if _, err := ParseOutputPath(p); err != nil {
			return &SettingError{Key: "DRONE_CARD_PATH", Value: p, Accepted: err.Error()}
		}
	}
	if p := c.CI.OutputFile; p != "" {
		if _, err := ParseAppendPath(p); err != nil {
			return &SettingError{Key: "DRONE_OUTPUT", Value: p, Accepted: err.Error()}
		}
	}
	return nil
}

// ParseDirectory accepts an absolute path to an existing directory.
func ParseDirectory(v string) (string, error) {
	if !filepath.IsAbs(v) {
		return "", fmt.Errorf("an absolute path to an existing directory")
	}
	if st, err := os.Stat(v); err != nil || !st.IsDir() {
		return "", fmt.Errorf("an absolute path to an existing directory (%s)", statProblem(err))
	}
	return v, nil
}

// ParseDiskPath accepts an absolute path to an existing directory on a filesystem that reports its
// size, so that a wrong path is refused before anything is contacted.
func ParseDiskPath(v string) (string, error) {
	if _, err := ParseDirectory(v); err != nil {
		return "", err
	}
	var se *SettingError
	if _, err := Measure(v, ""); errors.As(err, &se) {
		return "", errors.New(se.Accepted)
	}
	return v, nil
}

// ParseSocketPath accepts an absolute path (of the socket on the nodes; it need not exist here).
func ParseSocketPath(v string) (string, error) {
	if !filepath.IsAbs(v) {
		return "", fmt.Errorf("an absolute path, like /var/run/docker.sock")
	}
	return filepath.Clean(v), nil
}

// ParseOutputPath accepts a file path whose directory exists.
func ParseOutputPath(v string) (string, error) {
	dir := filepath.Dir(v)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return "", fmt.Errorf("a file path in an existing directory (%s: %s)", dir, statProblem(err))
	}
	if st, err := os.Stat(v); err == nil && !st.Mode().IsRegular() {
		if st.IsDir() {
			return "", fmt.Errorf("a file path, not a directory")
		}
		return "", fmt.Errorf("a path to a regular file (%s is %s)", v, fileKind(st.Mode()))
	}
	// The file is replaced atomically: a new file in the directory, renamed over the old one.
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return "", fmt.Errorf("a file path in a directory this run may write (%s: %v)", dir, err)
	}
	return v, nil
}

// ParseAppendPath accepts the path of a file the run appends to ($DRONE_OUTPUT): a regular file
// it may write, or one it may create in an existing directory.
func ParseAppendPath(v string) (string, error) {
	st, err := os.Stat(v)
	switch {
	case err == nil && !st.Mode().IsRegular():
		return "", fmt.Errorf("a path to a regular file (%s is %s)", v, fileKind(st.Mode()))
	case err == nil:
		if err := unix.Access(v, unix.W_OK); err != nil {
			return "", fmt.Errorf("a file this run may write (%v)", err)
		}
		return v, nil
	}
	return ParseOutputPath(v)
}

// fileKind names a file type for messages.
func fileKind(m os.FileMode) string {
	switch {
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	case m&os.ModeNamedPipe != 0:
		return "a named pipe"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "not a regular file"
}

func statProblem(err error) string {
	if err == nil {
		return "not a directory"
	}
	if os.IsNotExist(err) {
		return "it does not exist"
	}
	return err.Error()
}

// CheckEnvironment looks at every PLUGIN_* variable before anything else runs: a scope-widening
// key is a policy violation, an unknown key is an error that suggests the closest setting, and
// every value is validated by the same parsers as the command line's, so that the flag library
// never reads a value its own way (an empty boolean as false, say).
func CheckEnvironment(environ []string) error {
	var names []string
	values := map[string]string{}
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "PLUGIN_") {
			names = append(names, name)
			values[name] = value
		}
	}
	sort.Strings(names)
	raw := map[string]string{}
	for _, name := range names {
		key := strings.ToLower(strings.TrimPrefix(name, "PLUGIN_"))
		if err := scopeRequest("setting "+key+"="+fmt.Sprintf("%q", values[name]), key); err != nil {
			return err
		}
	}
	for _, name := range names {
		key := strings.ToLower(strings.TrimPrefix(name, "PLUGIN_"))
		if _, ok := settingByKey(key); !ok || EnvName(key) != name {
			return &SettingError{Key: key, Value: values[name], Unknown: true, Suggest: closestSetting(key)}
		}
		raw[key] = values[name]
	}
	_, err := ParseConfig(raw, time.Now())
	return err
}

// scopeRequest is the policy violation for a key (a setting or a flag name) that asks to widen
// the scope, or nil.
func scopeRequest(what, key string) error {
	if scope, ok := scopeKeys[strings.ReplaceAll(key, "-", "_")]; ok {
		return &outcome.PolicyError{Reason: fmt.Sprintf("%s asks to prune %s: this plugin never prunes tagged images, volumes or networks, and no setting changes that", what, scope)}
	}
	return nil
}

// closestSetting is the known key with the smallest edit distance to key.
func closestSetting(key string) string {
	best, bestDist := "", 1<<30
	for _, s := range Settings {
		if d := smetrics.WagnerFischer(key, s.Key, 1, 1, 1); d < bestDist {
			best, bestDist = s.Key, d
		}
	}
	if bestDist > len(key)/2+2 {
		return ""
	}
	return best
}
