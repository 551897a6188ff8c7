package plugin

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/drone-gated-prune/drone-gated-prune/internal/engine"
	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// Invocation is one start of the plugin, as the command wires it: the settings' raw values (key →
// value, only those given), the environment's reader for the CI variables, where output goes, and
// the version stamped at build time.
type Invocation struct {
	Raw     map[string]string
	Getenv  func(string) string
	Stdout  io.Writer
	Stderr  io.Writer
	Version string
	// Signals, when not nil, stops the run when a value arrives (the command passes SIGTERM and
	// SIGINT; tests pass their own channel).
	Signals <-chan os.Signal
}

// Main validates the settings, runs the gated prune against the engine named by the environment
// (DOCKER_HOST and friends), always emits the summary, and returns the exit code.
func Main(ctx context.Context, inv Invocation) int {
	cfg, err := ParseConfig(inv.Raw, time.Now())
	if err != nil {
		fmt.Fprintln(inv.Stderr, "drone-gated-prune:", err)
		return outcome.ExitCode(err)
	}
	cfg.ApplyCI(ReadCIEnvironment(inv.Getenv))
	if err := cfg.CheckCIDestinations(); err != nil {
		fmt.Fprintln(inv.Stderr, "drone-gated-prune:", err)
		return outcome.ExitCode(err)
	}
	log := newLogger(inv.Stderr, cfg)

	client, err := engine.New(nil)
	if err != nil {
		return emit(inv, cfg, log, failedReport(inv.Version, cfg, err), err)
	}
	defer client.Close()

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if inv.Signals != nil {
		go func() {
			select {
			case sig := <-inv.Signals:
				cancel(&outcome.StopCause{Reason: fmt.Sprintf("received %s", sig)})
			case <-ctx.Done():
			}
		}()
	}
	r := &Run{Config: cfg, Engine: client, Log: log, Version: inv.Version, PollInterval: DefaultPollInterval,
		FleetPoll: DefaultFleetPoll, FleetPrepareLimit: DefaultFleetPrepareLimit}
	rep, err := r.Execute(ctx)
	return emit(inv, cfg, log, rep, err)
}

// TerminationSignals is the channel the command hands to Main: SIGTERM (docker stop, a cancelled
// build) and SIGINT stop the run between calls.
func TerminationSignals() <-chan os.Signal {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	return ch
}

func newLogger(w io.Writer, cfg Config) *logrus.Logger {
	log := logrus.New()
	log.SetOutput(w)
	log.SetLevel(cfg.LogLevel)
	if cfg.LogFormat == "json" {
		log.SetFormatter(&logrus.JSONFormatter{})
	}
	return log
}

// emit writes every summary and the one line saying what failed, and returns the exit code. A
// summary that cannot be written fails a run that had not failed otherwise.
func emit(inv Invocation, cfg Config, log *logrus.Logger, rep *report.Report, runErr error) int {
	if err := report.Emit(inv.Stdout, cfg.Destinations(), rep); err != nil {
		log.WithError(err).Error("writing the summary")
		if runErr == nil {
			runErr = &outcome.RuntimeError{What: "writing the summary", Err: err}
			rep.ExitCode = outcome.ExitCode(runErr)
		}
	}
	if runErr != nil {
		fmt.Fprintln(inv.Stderr, "drone-gated-prune:", runErr)
	}
	return rep.ExitCode
}

// failedReport is the report of a run that could not start (no engine client could be made): the
// summary is still written.
func failedReport(version string, cfg Config, err error) *report.Report {
	return &report.Report{Version: version, Decision: report.DecisionError, Error: err.Error(), ExitCode: outcome.ExitCode(err), StartedAt: time.Now().UTC(),
		DryRun: cfg.DryRun, Forced: cfg.Disk.Force, Until: cfg.Until.Raw, FailAbove: cfg.FailAbove}
}
