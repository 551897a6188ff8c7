// Package outcome is how a run ends: the exit codes SPEC's table gives, the errors that carry
// them, and the one function that maps an error to its code.
package outcome

import "errors"

// Exit codes, as SPEC's table gives them.
const (
	ExitOK      = 0
	ExitRuntime = 1
	ExitInvalid = 2
	ExitPolicy  = 3
)

// PolicyError is a policy violation: a request to widen the scope, or the disk still at or above
// fail_above when the run ends. Exit 3.
type PolicyError struct{ Reason string }

func (e *PolicyError) Error() string { return "policy violation: " + e.Reason }

// ExitCode is 3.
func (e *PolicyError) ExitCode() int { return ExitPolicy }

// RuntimeError is a failure while running: the daemon, an API call, a timeout or a signal. Exit 1.
type RuntimeError struct {
	// What says what was being done ("listing services for the no-converge gate").
	What string
	Err  error
}

func (e *RuntimeError) Error() string { return e.What + ": " + e.Err.Error() }

// Unwrap exposes the cause.
func (e *RuntimeError) Unwrap() error { return e.Err }

// ExitCode is 1.
func (e *RuntimeError) ExitCode() int { return ExitRuntime }

// StopCause is why a run was stopped from outside its calls: its timeout, or a signal. An Engine
// API call cut short by it is reported as stopped, not as a daemon that did not answer.
type StopCause struct{ Reason string }

func (e *StopCause) Error() string { return e.Reason }

// ExitCode maps an outcome to the process's exit code, the one place that does: no error is 0, an
// error that carries its code (settings 2, policy 3, runtime 1) gives it, and any other error is a
// runtime error.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var coder interface{ ExitCode() int }
	if errors.As(err, &coder) {
		return coder.ExitCode()
	}
	return ExitRuntime
}
