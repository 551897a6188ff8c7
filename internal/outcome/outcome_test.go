package outcome

import (
	"errors"
	"fmt"
	"testing"
)

// Every error maps to its code, wrapped or not; an error that carries none is a runtime error.
func TestExitCode(t *testing.T) {
	for err, want := range map[error]int{
		nil:                       ExitOK,
		&PolicyError{Reason: "x"}: ExitPolicy,
		&RuntimeError{What: "x", Err: errors.New("y")}: ExitRuntime,
		fmt.Errorf("wrapped: %w", &PolicyError{}):      ExitPolicy,
		errors.New("plain"):                            ExitRuntime,
	} {
		if got := ExitCode(err); got != want {
			t.Errorf("ExitCode(%v) = %d, want %d", err, got, want)
		}
	}
}
