package plugin

import (
	"fmt"

	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
)

// SettingError is an invalid or unknown setting: exit 2, nothing contacted.
type SettingError struct {
	Key      string
	Value    string
	Accepted string
	// Unknown marks a PLUGIN_* variable that names no setting; Suggest is the closest one.
	Unknown bool
	Suggest string
}

func (e *SettingError) Error() string {
	if e.Unknown {
		msg := fmt.Sprintf("unknown setting %s (from %s)", e.Key, EnvName(e.Key))
		if e.Suggest != "" {
			msg += fmt.Sprintf(": did you mean %s?", e.Suggest)
		}
		return msg
	}
	return fmt.Sprintf("invalid setting %s=%q: expected %s", e.Key, e.Value, e.Accepted)
}

// ExitCode is 2.
func (e *SettingError) ExitCode() int { return outcome.ExitInvalid }

// UsageError is a command line that cannot be read (an unknown flag, a stray argument): exit 2,
// nothing contacted.
type UsageError struct{ Problem string }

func (e *UsageError) Error() string { return "invalid command line: " + e.Problem + " (see --help)" }

// ExitCode is 2.
func (e *UsageError) ExitCode() int { return outcome.ExitInvalid }
