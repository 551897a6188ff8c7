package plugin

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/xrash/smetrics"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
)

// Setting describes one setting: its snake_case key (PLUGIN_<KEY> in the environment,
// --key-with-dashes on the command line), its default and what it means. Settings is the one place
// that knows the names: the flags, the unknown-key check and the docs' table are made from it.
type Setting struct {
	Key     string
	Default string
	Usage   string
	// Bool settings are flags that need no value on the command line.
	Bool bool
}

// Settings lists every setting in the order of SPEC's table.
var Settings = []Setting{
	{Key: "threshold", Default: "80", Usage: "disk-pressure gate opens at or above this percent used (80 or 80%)"},
	{Key: "min_free", Usage: "gate also opens when free space is below this size (20GiB, 500MB)"},
	{Key: "min_free_inodes", Usage: "gate also opens when free inodes are below this count or percent"},
	{Key: "disk_path", Usage: "path whose filesystem is measured (default: Docker's data root if visible, else /)"},
	{Key: "until", Default: "24h", Usage: "age filter for every prune: a positive duration, a Unix timestamp or an RFC 3339 time"},
	{Key: "stack_pattern", Usage: "regular expressions (comma-separated) naming CI run stacks, compose projects, services or containers"},
	{Key: "run_labels", Usage: "label selectors (key or key=value, comma-separated); a running container carrying one is a live run"},
	{Key: "labels", Usage: "prune only containers and images carrying these labels (key or key=value, comma-separated)"},
	{Key: "wait", Default: "0", Usage: "keep re-checking closed no-run / no-converge gates for up to this long"},
	{Key: "dry_run", Default: "false", Usage: "list what each phase would remove, remove nothing", Bool: true},
	{Key: "force", Default: "false", Usage: "bypass the disk-pressure gate only", Bool: true},
	{Key: "fail_above", Default: "90", Usage: "fail the step (exit 3) if the filesystem is still at or above this percent at the end"},
	{Key: "timeout", Default: "10m", Usage: "bound on the whole run"},
	{Key: "log_level", Default: "info", Usage: "logrus level: panic, fatal, error, warn, info, debug, trace"},
	{Key: "log_format", Default: "text", Usage: "text or json"},
	{Key: "summary_file", Usage: "also write the summary as JSON to this path"},
	{Key: "metrics_file", Usage: "also write Prometheus text-format metrics to this path"},
	{Key: "env_file", Usage: "load settings from this env file first (values already in the environment win)"},
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
	// SummaryFile and MetricsFile are optional outputs.
	SummaryFile string
	MetricsFile string
	// CI carries what the CI system told the step about itself.
	CI CIEnvironment
}

// CIEnvironment is what the CI system tells the step, read from DRONE_* / CI_* variables.
type CIEnvironment struct {
	// CardPath is DRONE_CARD_PATH: /dev/stdout gets an encoded card, any other path plain JSON.
	CardPath string
	// OutputFile is DRONE_OUTPUT (Harness CI): KEY=value lines.
	OutputFile string
}

// ReadCIEnvironment reads the plugin's own build and output targets from the environment.
func ReadCIEnvironment(getenv func(string) string) (gates.OwnBuild, CIEnvironment) {
	own := gates.OwnBuild{Repo: getenv("DRONE_REPO"), Number: getenv("DRONE_BUILD_NUMBER")}
	if own.Repo == "" || own.Number == "" {
		own = gates.OwnBuild{Repo: getenv("CI_REPO"), Number: getenv("CI_PIPELINE_NUMBER")}
	}
	return own, CIEnvironment{CardPath: getenv("DRONE_CARD_PATH"), OutputFile: getenv("DRONE_OUTPUT")}
}

// ParseConfig validates raw setting values (key → value; absent keys take their defaults) into a
// Config. The first invalid value is returned as a *SettingError; nothing is contacted.
func ParseConfig(raw map[string]string, now time.Time) (Config, error) {
	value := func(key string) (string, bool) {
		v, ok := raw[key]
		if !ok {
			for _, s := range Settings {
				if s.Key == key && s.Default != "" {
					return s.Default, false
				}
			}
		}
		return v, ok
	}
	var c Config
	var firstErr error
	// field runs a parser on one setting and records the first failure with the setting's name.
	field := func(key string, parse func(string) error) {
		v, given := value(key)
		if firstErr != nil || (v == "" && !given) {
			return
		}
		if strings.TrimSpace(v) == "" {
			firstErr = &SettingError{Key: key, Value: v, Accepted: "a value (an empty value usually means a missing secret); remove the setting to use its default"}
			return
		}
		if err := parse(v); err != nil {
			firstErr = &SettingError{Key: key, Value: v, Accepted: err.Error()}
		}
	}
	field("threshold", func(v string) (err error) { c.Disk.ThresholdPercent, err = ParsePercent(v); return })
	field("min_free", func(v string) (err error) { c.Disk.MinFreeBytes, err = ParseSize(v); return })
	field("min_free_inodes", func(v string) (err error) { c.Disk.MinFreeInodes, err = ParseInodeFloor(v); return })
	field("disk_path", func(v string) error {
		if !filepath.IsAbs(v) {
			return fmt.Errorf("an absolute path to an existing directory")
		}
		if st, err := os.Stat(v); err != nil || !st.IsDir() {
			return fmt.Errorf("an absolute path to an existing directory (%s)", statProblem(err))
		}
		c.DiskPath = v
		return nil
	})
	field("until", func(v string) (err error) { c.Until, err = ParseUntil(v, now); return })
	field("stack_pattern", func(v string) (err error) { c.Runs.Patterns, err = ParsePatterns(v); return })
	field("run_labels", func(v string) (err error) { c.Runs.Labels, err = ParseLabelSelectors(v); return })
	field("labels", func(v string) (err error) { c.Labels, err = ParseLabelSelectors(v); return })
	field("wait", func(v string) (err error) { c.Wait, err = ParseDuration(v, true); return })
	field("dry_run", func(v string) (err error) { c.DryRun, err = ParseBool(v); return })
	field("force", func(v string) (err error) { c.Disk.Force, err = ParseBool(v); return })
	field("fail_above", func(v string) (err error) { c.FailAbove, err = ParsePercent(v); return })
	field("timeout", func(v string) (err error) { c.Timeout, err = ParseDuration(v, false); return })
	field("log_level", func(v string) (err error) {
		c.LogLevel, err = logrus.ParseLevel(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("one of panic, fatal, error, warn, info, debug, trace")
		}
		return nil
	})
	field("log_format", func(v string) error {
		c.LogFormat = strings.TrimSpace(v)
		if c.LogFormat != "text" && c.LogFormat != "json" {
			return fmt.Errorf("text or json")
		}
		return nil
	})
	field("summary_file", func(v string) (err error) { c.SummaryFile, err = outputPath(v); return })
	field("metrics_file", func(v string) (err error) { c.MetricsFile, err = outputPath(v); return })
	field("env_file", func(string) error { return nil })
	if firstErr != nil {
		return Config{}, firstErr
	}
	// Conflicts between settings that are each valid alone.
	switch {
	case c.Wait >= c.Timeout:
		return Config{}, &SettingError{Key: "wait", Value: c.Wait.String(),
			Accepted: fmt.Sprintf("a duration shorter than timeout (%s)", c.Timeout)}
	case c.SummaryFile != "" && c.SummaryFile == c.MetricsFile:
		return Config{}, &SettingError{Key: "metrics_file", Value: c.MetricsFile, Accepted: "a path other than summary_file"}
	}
	return c, nil
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

// outputPath accepts a file path whose directory exists.
func outputPath(v string) (string, error) {
	dir := filepath.Dir(v)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return "", fmt.Errorf("a file path in an existing directory (%s: %s)", dir, statProblem(err))
	}
	if st, err := os.Stat(v); err == nil && st.IsDir() {
		return "", fmt.Errorf("a file path, not a directory")
	}
	return v, nil
}

// CheckEnvironment looks at every PLUGIN_* variable before anything else runs: a scope-widening
// key is a policy violation, an unknown key is an error that suggests the closest setting, and a
// known key's value is validated so that a bad value is reported in this project's words.
func CheckEnvironment(environ []string) error {
	known := map[string]Setting{}
	for _, s := range Settings {
		known[EnvName(s.Key)] = s
	}
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
	for _, name := range names {
		key := strings.ToLower(strings.TrimPrefix(name, "PLUGIN_"))
		if what, ok := scopeKeys[strings.ReplaceAll(key, "-", "_")]; ok {
			return &PolicyError{Reason: fmt.Sprintf("setting %s=%q asks to prune %s: this plugin never prunes tagged images, volumes or networks, and no setting changes that", key, values[name], what)}
		}
	}
	raw := map[string]string{}
	for _, name := range names {
		s, ok := known[name]
		if !ok {
			key := strings.ToLower(strings.TrimPrefix(name, "PLUGIN_"))
			return &SettingError{Key: key, Value: values[name], Unknown: true, Suggest: closestSetting(key)}
		}
		raw[s.Key] = values[name]
	}
	// The flag library would read an empty or odd boolean its own way (empty as false); every
	// value is judged here first, by the same parsers as the command line's.
	_, err := ParseConfig(raw, time.Now())
	return err
}

// CheckArgs refuses command-line flags that ask to widen the scope (--all, --volumes, ...) as a
// policy violation, like their PLUGIN_* forms.
func CheckArgs(args []string) error {
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if what, ok := scopeKeys[strings.ReplaceAll(name, "-", "_")]; ok {
			return &PolicyError{Reason: fmt.Sprintf("flag %s asks to prune %s: this plugin never prunes tagged images, volumes or networks, and no setting changes that", a, what)}
		}
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

// EnvFilePath finds the env file named by --env-file on the command line or PLUGIN_ENV_FILE,
// which must be loaded before the flags are read.
func EnvFilePath(args []string, getenv func(string) string) string {
	for i, a := range args {
		switch {
		case a == "--env-file" || a == "-env-file":
			if i+1 < len(args) {
				return args[i+1]
			}
		case strings.HasPrefix(a, "--env-file="):
			return strings.TrimPrefix(a, "--env-file=")
		}
	}
	return getenv(EnvName("env_file"))
}
