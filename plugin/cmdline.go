package plugin

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/joho/godotenv"

	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
)

// ArgFlag is one flag as the command line gives it, in any form the flag library accepts:
// --name value, --name=value, -name=value, -name value (a value is read from the next argument
// only for flags that take one).
type ArgFlag struct {
	// Arg is the flag as written (for messages); Name has no dashes before it.
	Arg  string
	Name string
	// Value is the flag's value; HasValue is false for a bare boolean flag.
	Value    string
	HasValue bool
}

// ScanArgs reads the flags of a command line (without the program name) the way the flag library
// does: one or two dashes, a value after = or, for a flag that is not boolean, in the next
// argument. Scanning stops at "--" and at the first argument that is not a flag; rest holds what
// follows.
func ScanArgs(args []string) (flags []ArgFlag, rest []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return flags, args[i+1:]
		}
		if len(a) < 2 || a[0] != '-' {
			return flags, args[i:]
		}
		body := strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		name, value, hasValue := strings.Cut(body, "=")
		f := ArgFlag{Arg: a, Name: name, Value: value, HasValue: hasValue}
		if !hasValue && takesValue(name) && i+1 < len(args) {
			i++
			f.Value, f.HasValue = args[i], true
		}
		flags = append(flags, f)
	}
	return flags, nil
}

// takesValue reports whether a flag reads its value from the next argument: the settings that are
// not booleans. Unknown names do not (the flag library refuses them anyway).
func takesValue(name string) bool {
	s, ok := settingByKey(strings.ReplaceAll(name, "-", "_"))
	return ok && !s.Bool && FlagName(s.Key) == name
}

// CheckArgs refuses command-line flags that ask to widen the scope (--all, --volumes, ...) as a
// policy violation, like their PLUGIN_* forms, and arguments that are not flags (the plugin takes
// none, and a flag after one would be silently ignored).
func CheckArgs(args []string) error {
	flags, rest := ScanArgs(args)
	for _, f := range flags {
		if err := scopeRequest("flag "+f.Arg, f.Name); err != nil {
			return err
		}
	}
	for _, a := range rest {
		if err := scopeRequest("argument "+a, strings.TrimLeft(a, "-")); err != nil {
			return err
		}
	}
	if len(rest) > 0 {
		return &UsageError{Problem: fmt.Sprintf("unexpected argument %q: every setting is a flag like --threshold 80 or a PLUGIN_* variable", rest[0])}
	}
	return nil
}

// EnvFilePath is the env file named on the command line (the last env-file flag, as the flag
// library keeps the last value) or, failing that, by PLUGIN_ENV_FILE.
func EnvFilePath(args []string, getenv func(string) string) string {
	path := getenv(EnvName("env_file"))
	flags, _ := ScanArgs(args)
	for _, f := range flags {
		if f.Name == FlagName("env_file") && f.HasValue {
			path = f.Value
		}
	}
	return path
}

// LoadEnvFile loads the env file named by the command line or PLUGIN_ENV_FILE into the process
// environment (values already set win), before the settings are read from it.
func LoadEnvFile(args []string, getenv func(string) string) error {
	path := EnvFilePath(args, getenv)
	if path == "" {
		return nil
	}
	if err := godotenv.Load(path); err != nil {
		return &SettingError{Key: "env_file", Value: path, Accepted: "a readable env file (" + err.Error() + ")"}
	}
	return nil
}

// Prepare does what must happen before the flag library reads anything: load the env file, then
// refuse scope-widening flags, stray arguments and any PLUGIN_* variable that is unknown or
// invalid. args excludes the program name.
func Prepare(args []string, getenv func(string) string, environ func() []string) error {
	if err := LoadEnvFile(args, getenv); err != nil {
		return err
	}
	if err := CheckArgs(args); err != nil {
		return err
	}
	return CheckEnvironment(environ())
}

// Refuse reports a command line or environment that cannot be run, in one line, and returns its
// exit code. Whatever the flag library refuses is a usage error.
func Refuse(stderr io.Writer, err error) int {
	var coder interface{ ExitCode() int }
	if !errors.As(err, &coder) {
		err = &UsageError{Problem: err.Error()}
	}
	fmt.Fprintln(stderr, "drone-gated-prune:", err)
	return outcome.ExitCode(err)
}
