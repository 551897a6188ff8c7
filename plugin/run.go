package plugin

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/engine"
	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// The intervals and the limit the command runs with (Main); the run's unit tests set shorter ones.
const (
	DefaultPollInterval      = 5 * time.Second
	DefaultFleetPoll         = 2 * time.Second
	DefaultFleetPrepareLimit = 45 * time.Second
)

// Run is one gated prune of valid settings: measure → gates → prune in order, the gates
// re-checked before each phase → measure again.
type Run struct {
	Config  Config
	Engine  Engine
	Log     *logrus.Logger
	Version string
	// PollInterval is how often closed gates are re-checked while Config.Wait lasts.
	PollInterval time.Duration
	// FleetPoll is the longest interval between a fleet run's looks at its nodes' tasks (the first
	// looks come sooner: fleetPollFirst).
	FleetPoll time.Duration
	// FleetPrepareLimit is how long a node's task may take to start running (the node getting the
	// fleet image, for one) before that node is reported as unable to run it.
	FleetPrepareLimit time.Duration
}

// Execute runs the policy and always returns a report; the error, when not nil, carries the exit
// code (outcome.ExitCode).
func (r *Run) Execute(ctx context.Context) (*report.Report, error) {
	start := time.Now()
	rep := &report.Report{Version: r.Version, DryRun: r.Config.DryRun, Forced: r.Config.Disk.Force,
		Until: r.Config.Until.Raw, FailAbove: r.Config.FailAbove, StartedAt: start.UTC(), Daemon: r.Engine.Host()}
	ctx, cancel := context.WithTimeoutCause(ctx, r.Config.Timeout, &outcome.StopCause{Reason: fmt.Sprintf("timeout %s reached", r.Config.Timeout)})
	defer cancel()
	measured, err := r.gateAndPrune(ctx, rep)
	err = r.finish(ctx, rep, measured, err)
	rep.DurationSeconds = time.Since(start).Seconds()
	return rep, err
}

// finish is every ending: measure again what was measured and check the ceiling (unless the
// first reading failed), say what holds the space if the phases ran and the disk is still under
// pressure, then record the outcome and its exit code.
func (r *Run) finish(ctx context.Context, rep *report.Report, measured []dataPath, err error) error {
	if rep.DiskBefore != nil {
		if after, merr := measureAll(measured); merr == nil {
			rep.FilesystemsAfter = after
			r.compareDisk(rep)
		} else if err == nil {
			err = merr
		}
	}
	if err == nil && len(rep.Phases) > 0 && r.underPressure(rep.DiskAfter) {
		// Advice only: a failure to get it is logged, and the run's outcome stands.
		if du, aerr := r.Engine.DiskUsage(ctx); aerr != nil {
			r.Log.WithError(aerr).Warn("could not tell what holds the space")
		} else {
			rep.Advice = spaceAdvice(du)
		}
	}
	if err == nil && rep.CeilingBreached {
		worst := rep.FilesystemsAfter[0]
		err = &outcome.PolicyError{Reason: fmt.Sprintf("%s is still %.1f%% used, at or above fail_above %g%%",
			worst.Path, worst.UsedPercent(), r.Config.FailAbove)}
	}
	rep.ExitCode = outcome.ExitCode(err)
	if err != nil {
		rep.Error = err.Error()
	}
	if rep.ExitCode == outcome.ExitRuntime {
		rep.Decision = report.DecisionError
		markNotRun(rep.Phases, "the run stopped before this phase")
	}
	return err
}

// compareDisk reads the second measurement: the reading of the filesystem the gate decided on, the
// ceiling on the worst filesystem, and the growth of free space on all of them (what a prune
// really freed, beside what the engine reports).
func (r *Run) compareDisk(rep *report.Report) {
	before := map[string]gates.Filesystem{}
	for _, fs := range rep.Filesystems {
		before[fs.Path] = fs
	}
	for _, fs := range rep.FilesystemsAfter {
		if fs.Path == rep.DiskBefore.Path {
			rep.DiskAfter = &fs
		}
		rep.FreedBytes += int64(fs.FreeBytes) - int64(before[fs.Path].FreeBytes)
	}
	rep.CeilingBreached = gates.CeilingBreached(rep.FilesystemsAfter[0], r.Config.FailAbove)
}

// underPressure reports whether the filesystem after the run still opens the disk gate by its
// measure (force aside).
func (r *Run) underPressure(fs *gates.Filesystem) bool {
	if fs == nil {
		return false
	}
	policy := r.Config.Disk
	policy.Force = false
	return gates.DiskPressure(*fs, policy).Open
}

// stopped turns a cancelled context into the error that says why the run stopped.
func stopped(ctx context.Context, what string) error {
	return &outcome.RuntimeError{What: "stopped " + what, Err: context.Cause(ctx)}
}

// gateAndPrune is the run's order: the disk-pressure gate, then the no-run and no-converge gates
// (waiting while Config.Wait lasts), then the prune phases. It returns what it measured, to be
// measured again at the end.
func (r *Run) gateAndPrune(ctx context.Context, rep *report.Report) ([]dataPath, error) {
	if r.Config.Fleet {
		return nil, r.runFleet(ctx, rep)
	}
	// The daily common case ends at the disk gate with at most one daemon call.
	paths, err := r.dataPaths(ctx, rep)
	if err != nil {
		return nil, err
	}
	if rep.Filesystems, err = measureAll(paths); err != nil {
		return nil, err
	}
	disk, fs := gates.DiskPressureOn(rep.Filesystems, r.Config.Disk)
	rep.DiskBefore = &fs
	disk.Warnings = append(disk.Warnings, rep.DiskWarnings...)
	rep.Gates = append(rep.Gates, disk)
	r.logVerdict(disk)
	if !disk.Open {
		rep.Decision = report.DecisionKeptCache
		return paths, nil
	}
	snap, closed, err := r.waitForGates(ctx, rep, nil)
	if err != nil {
		return paths, err
	}
	rep.APIVersion = snap.APIVersion
	if len(closed) > 0 {
		rep.Decision = "skipped: " + strings.Join(closed, ", ")
		return paths, nil
	}
	rep.Decision, err = r.pruneInOrder(ctx, rep, snap)
	return paths, err
}

// pruneInOrder runs the phases in order, re-checking the no-run and no-converge gates before each
// one after the first, and returns the decision. A phase another pruner holds (409) is skipped;
// any other failure stops the run.
func (r *Run) pruneInOrder(ctx context.Context, rep *report.Report, snap engine.Snapshot) (string, error) {
	p := &pruning{cutoff: r.Config.Until.Cutoff(snap.DaemonTime), clockOffset: snap.DaemonTime.Sub(snap.LocalTime), store: snap.Store}
	rep.Cutoff = &p.cutoff
	rep.Store = snap.Store.String()
	rep.Phases = newPhases(r.Config.BuildCacheBudget > 0, snap.Store)
	for i := range rep.Phases {
		ph := &rep.Phases[i]
		if i > 0 {
			// A run may have started since the last look.
			closed, err := r.recheck(ctx, rep)
			if err != nil {
				return "", err
			}
			if len(closed) > 0 {
				markNotRun(rep.Phases[i:], "gate "+strings.Join(closed, ", ")+" closed before this phase")
				return fmt.Sprintf("stopped: %s closed before %s", strings.Join(closed, ", "), ph.Phase), nil
			}
		}
		if ctx.Err() != nil {
			return "", stopped(ctx, "before the "+ph.Phase+" phase")
		}
		err := r.prunePhase(ctx, p, ph)
		switch {
		case errors.Is(err, engine.ErrPruneRunning):
			ph.Status, ph.Reason = report.StatusSkipped, err.Error()
			r.Log.WithField("phase", ph.Phase).Warn(ph.Reason)
			continue
		case err != nil && ctx.Err() != nil:
			ph.Status = report.StatusInterrupted
			ph.Reason = "the run was stopped while the engine was pruning and its answer did not come within the grace period; it may have removed some objects"
			return "", stopped(ctx, "during the "+ph.Phase+" phase")
		case err != nil:
			ph.Status, ph.Reason = report.StatusFailed, err.Error()
			return "", err
		}
		r.Log.WithFields(logrus.Fields{"phase": ph.Phase, "status": ph.Status, "objects": ph.Count, "bytes": ph.Bytes}).Info("phase done")
		if ctx.Err() != nil {
			// Stopped while this phase's prune ran: it is reported in full, the rest does not run.
			return "", stopped(ctx, "after the "+ph.Phase+" phase")
		}
	}
	if r.Config.DryRun {
		return report.DecisionDryRun, nil
	}
	return prunedDecision(rep.Phases), nil
}

// prunedDecision names what a real run's phases did: pruned only when one removed something
// (an object, bytes, a tag); nothing to prune when they ran and found nothing; every phase
// skipped when none ran.
func prunedDecision(phases []report.PhaseReport) string {
	ran := false
	for _, p := range phases {
		if p.Status != report.StatusRemoved {
			continue
		}
		ran = true
		if p.Count > 0 || p.Bytes > 0 || p.Layers > 0 || len(p.Untagged) > 0 {
			return report.DecisionPruned
		}
	}
	if ran {
		return report.DecisionNothingToPrune
	}
	return report.DecisionPhasesSkipped
}

// newPhases is the phases in the order they run, none run yet.
func newPhases(budget bool, store engine.Store) []report.PhaseReport {
	names := []string{report.PhaseContainers, report.PhaseImages, report.PhaseBuildCache}
	if budget {
		names = append(names, report.PhaseBuildCacheBudget)
	}
	var out []report.PhaseReport
	for _, name := range names {
		clock := report.PhaseClocks[name]
		if name == report.PhaseImages {
			clock = store.ImageClock()
		}
		out = append(out, report.PhaseReport{Phase: name, Clock: clock})
	}
	return out
}

// markNotRun gives every phase that has no status yet the status "not run" and the reason.
func markNotRun(phases []report.PhaseReport, reason string) {
	for i := range phases {
		if phases[i].Status == "" {
			phases[i].Status, phases[i].Reason = report.StatusNotRun, reason
		}
	}
}

// verdicts evaluates the no-run and no-converge gates on one snapshot. A created container counts
// as a live run until it is as old as the prune's cutoff, on the daemon's clock.
func (r *Run) verdicts(snap engine.Snapshot, view func(gates.Workload) gates.Workload) (runs, converge gates.Verdict) {
	policy := r.Config.Runs
	policy.AbandonedBefore = r.Config.Until.Cutoff(snap.DaemonTime)
	w := snap.Workload
	if view != nil {
		w = view(w)
	}
	return gates.LiveRuns(w, policy), gates.Unconverged(w)
}

// waitForGates evaluates the no-run and no-converge gates, re-checking closed ones every
// PollInterval while Config.Wait lasts, on the part of each snapshot that view keeps (nil: all of
// it). It returns the names of the gates still closed.
func (r *Run) waitForGates(ctx context.Context, rep *report.Report, view func(gates.Workload) gates.Workload) (engine.Snapshot, []string, error) {
	deadline := time.Now().Add(r.Config.Wait)
	for {
		snap, err := r.Engine.Snapshot(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return snap, nil, stopped(ctx, "while evaluating the gates")
			}
			return snap, nil, err
		}
		runs, converge := r.verdicts(snap, view)
		closed := closedGates(runs, converge)
		remaining := time.Until(deadline)
		if len(closed) == 0 || remaining <= 0 {
			rep.Gates = append(rep.Gates, runs, converge)
			r.logVerdict(runs)
			r.logVerdict(converge)
			return snap, closed, nil
		}
		r.Log.WithField("closed", strings.Join(closed, ",")).Infof("gates closed, re-checking for up to %s more", remaining.Round(time.Second))
		select {
		case <-ctx.Done():
			rep.Gates = append(rep.Gates, runs, converge)
			return snap, nil, stopped(ctx, "while waiting for the gates")
		case <-time.After(min(r.PollInterval, remaining)):
		}
	}
}

// recheck evaluates both gates again before a phase and records the verdicts when one closed.
func (r *Run) recheck(ctx context.Context, rep *report.Report) ([]string, error) {
	snap, err := r.Engine.Snapshot(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, stopped(ctx, "while re-checking the gates")
		}
		return nil, err
	}
	runs, converge := r.verdicts(snap, nil)
	closed := closedGates(runs, converge)
	if len(closed) > 0 {
		// The summary shows what closed it, in place of the verdicts from the start.
		for i, v := range rep.Gates {
			switch v.Gate {
			case gates.NoRunGate:
				rep.Gates[i] = runs
			case gates.NoConvergeGate:
				rep.Gates[i] = converge
			}
		}
		r.logVerdict(runs)
		r.logVerdict(converge)
	}
	return closed, nil
}

func closedGates(vs ...gates.Verdict) []string {
	var closed []string
	for _, v := range vs {
		if !v.Open {
			closed = append(closed, v.Gate)
		}
	}
	return closed
}

func (r *Run) logVerdict(v gates.Verdict) {
	entry := r.Log.WithFields(logrus.Fields{"gate": v.Gate, "open": v.Open})
	if len(v.Evidence) > 0 {
		entry = entry.WithField("evidence", strings.Join(v.Evidence, "; "))
	}
	entry.Info(v.Reason)
	for _, w := range v.Warnings {
		r.Log.WithField("gate", v.Gate).Warn(w)
	}
}
