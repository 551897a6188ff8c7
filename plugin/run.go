package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
)

// Run is one gated prune: validate → measure → gates → prune → measure again.
type Run struct {
	Config  Config
	Engine  *Engine
	Log     *logrus.Logger
	Version string
	// PollInterval is how often closed gates are re-checked while Config.Wait lasts.
	PollInterval time.Duration
}

// Measure reads the filesystem holding path (statfs).
func Measure(path, why string) (gates.Filesystem, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return gates.Filesystem{}, &RuntimeError{What: "measuring the filesystem of " + path, Err: err}
	}
	bs := uint64(st.Bsize)
	return gates.Filesystem{
		Path: path, Why: why,
		TotalBytes: st.Blocks * bs, FreeBytes: st.Bavail * bs, UsedBytes: (st.Blocks - st.Bfree) * bs,
		TotalInodes: st.Files, FreeInodes: st.Ffree,
	}, nil
}

// Exec runs the policy and always returns a report; the error, when not nil, carries the exit code.
func (r *Run) Exec(ctx context.Context) (*Report, error) {
	start := time.Now()
	rep := &Report{Version: r.Version, DryRun: r.Config.DryRun, Forced: r.Config.Disk.Force,
		Until: r.Config.Until.Raw, FailAbove: r.Config.FailAbove, StartedAt: start.UTC(), Daemon: r.Engine.Host()}
	ctx, cancel := context.WithTimeoutCause(ctx, r.Config.Timeout, fmt.Errorf("timeout %s reached", r.Config.Timeout))
	defer cancel()
	err := r.exec(ctx, rep)
	// Every ending measures again and checks the ceiling, unless the first reading failed.
	if rep.DiskBefore != nil {
		if after, merr := Measure(rep.DiskBefore.Path, rep.DiskBefore.Why); merr == nil {
			rep.DiskAfter = &after
			rep.CeilingBreached = gates.CeilingBreached(after, r.Config.FailAbove)
		} else if err == nil {
			err = merr
		}
	}
	if err == nil && rep.CeilingBreached {
		err = &PolicyError{Reason: fmt.Sprintf("%s is still %.1f%% used, at or above fail_above %g%%",
			rep.DiskAfter.Path, rep.DiskAfter.UsedPercent(), r.Config.FailAbove)}
	}
	rep.ExitCode = ExitOK
	if err != nil {
		rep.Error = err.Error()
		rep.ExitCode = ExitRuntime
		var coder interface{ ExitCode() int }
		if errors.As(err, &coder) {
			rep.ExitCode = coder.ExitCode()
		}
		if rep.ExitCode == ExitRuntime {
			rep.Decision = DecisionError
			for i := range rep.Phases {
				if rep.Phases[i].Status == "" {
					rep.Phases[i].Status, rep.Phases[i].Reason = StatusNotRun, "the run stopped before this phase"
				}
			}
		}
	}
	rep.DurationSeconds = time.Since(start).Seconds()
	return rep, err
}

// stopped turns a cancelled context into the error that says why the run stopped.
func stopped(ctx context.Context, what string) error {
	cause := context.Cause(ctx)
	return &RuntimeError{What: "stopped " + what, Err: cause}
}

func (r *Run) exec(ctx context.Context, rep *Report) error {
	// Disk-pressure gate: the daily common case ends here with at most one daemon call.
	fs, err := r.measureDisk(ctx)
	if err != nil {
		return err
	}
	rep.DiskBefore = &fs
	disk := gates.DiskPressure(fs, r.Config.Disk)
	rep.Gates = append(rep.Gates, disk)
	r.logVerdict(disk)
	if !disk.Open {
		rep.Decision = DecisionKeptCache
		return nil
	}

	snap, closed, err := r.waitForGates(ctx, rep)
	if err != nil {
		return err
	}
	rep.APIVersion = snap.APIVersion
	if len(closed) > 0 {
		rep.Decision = "skipped: " + strings.Join(closed, ", ")
		return nil
	}
	cutoff := r.Config.Until.Cutoff(snap.DaemonTime)
	rep.Cutoff = &cutoff
	// The daemon's clock, read again from the local one, for the build-cache phase's age.
	clockOffset := snap.DaemonTime.Sub(snap.LocalTime)

	rep.Phases = []PhaseReport{{Phase: PhaseContainers}, {Phase: PhaseImages}, {Phase: PhaseBuildCache}}
	var removedContainers map[string]bool
	for i := range rep.Phases {
		ph := &rep.Phases[i]
		ph.Clock = phaseClocks[ph.Phase]
		if i > 0 {
			// Re-check immediately before each later phase: a run may have started meanwhile.
			if closed, err := r.recheck(ctx, rep); err != nil {
				return err
			} else if len(closed) > 0 {
				for j := i; j < len(rep.Phases); j++ {
					rep.Phases[j].Status = StatusNotRun
					rep.Phases[j].Reason = "gate " + strings.Join(closed, ", ") + " closed before this phase"
					rep.Phases[j].Clock = phaseClocks[rep.Phases[j].Phase]
				}
				rep.Decision = fmt.Sprintf("stopped: %s closed before %s", strings.Join(closed, ", "), ph.Phase)
				return nil
			}
		}
		if err := ctx.Err(); err != nil {
			return stopped(ctx, "before the "+ph.Phase+" phase")
		}
		var err error
		switch ph.Phase {
		case PhaseContainers:
			removedContainers, err = r.containers(ctx, cutoff, ph)
		case PhaseImages:
			err = r.images(ctx, cutoff, removedContainers, ph)
		case PhaseBuildCache:
			err = r.buildCache(ctx, cutoff, time.Now().Add(clockOffset), ph)
		}
		if errors.Is(err, ErrPruneRunning) {
			ph.Status, ph.Reason = StatusSkipped, err.Error()
			r.Log.WithField("phase", ph.Phase).Warn(ph.Reason)
			continue
		}
		if err != nil {
			ph.Status = StatusFailed
			if ctx.Err() != nil {
				ph.Status = StatusInterrupted
				ph.Reason = "the run was stopped while the engine was pruning and its answer did not come within the grace period; it may have removed some objects"
				return stopped(ctx, "during the "+ph.Phase+" phase")
			}
			ph.Reason = err.Error()
			return err
		}
		r.Log.WithFields(logrus.Fields{"phase": ph.Phase, "status": ph.Status, "objects": ph.Count, "bytes": ph.Bytes}).Info("phase done")
		if ctx.Err() != nil {
			// Stopped while this phase's prune ran: it is reported in full, the rest does not run.
			return stopped(ctx, "after the "+ph.Phase+" phase")
		}
	}
	rep.Decision = DecisionPruned
	if r.Config.DryRun {
		rep.Decision = DecisionDryRun
	}
	return nil
}

// measureDisk picks the path (the setting, else the daemon's data root when visible here, else /)
// and measures it.
func (r *Run) measureDisk(ctx context.Context) (gates.Filesystem, error) {
	if r.Config.DiskPath != "" {
		return Measure(r.Config.DiskPath, "disk_path setting")
	}
	root, err := r.Engine.DataRoot(ctx)
	if err != nil {
		return gates.Filesystem{}, err
	}
	if st, err := os.Stat(root); err == nil && st.IsDir() {
		return Measure(root, "the daemon's data root, visible here")
	}
	return Measure("/", fmt.Sprintf("the daemon's data root %s is not visible here, so / is measured: in a container on overlay storage that is the filesystem holding the container's writable layer, normally the data root's", root))
}

// verdicts evaluates the no-run and no-converge gates on one snapshot.
func (r *Run) verdicts(snap Snapshot) (runs, converge gates.Verdict) {
	return gates.LiveRuns(snap.Workload, r.Config.Runs), gates.Unconverged(snap.Workload)
}

// waitForGates evaluates the no-run and no-converge gates, re-checking closed ones every
// PollInterval while Config.Wait lasts. It returns the names of the gates still closed.
func (r *Run) waitForGates(ctx context.Context, rep *Report) (Snapshot, []string, error) {
	deadline := time.Now().Add(r.Config.Wait)
	for {
		snap, err := r.Engine.Workload(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return snap, nil, stopped(ctx, "while evaluating the gates")
			}
			return snap, nil, err
		}
		runs, converge := r.verdicts(snap)
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
func (r *Run) recheck(ctx context.Context, rep *Report) ([]string, error) {
	snap, err := r.Engine.Workload(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, stopped(ctx, "while re-checking the gates")
		}
		return nil, err
	}
	runs, converge := r.verdicts(snap)
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

// containers runs (or lists) the stopped-container phase and returns the IDs it removes.
func (r *Run) containers(ctx context.Context, cutoff time.Time, ph *PhaseReport) (map[string]bool, error) {
	removed := map[string]bool{}
	if r.Config.DryRun {
		objs, err := r.Engine.StoppedContainers(ctx, cutoff, r.Config.Labels)
		if err != nil {
			return nil, err
		}
		for _, o := range objs {
			removed[o.ID] = true
		}
		setObjects(ph, StatusWouldRemove, objs)
		return removed, nil
	}
	ids, bytes, err := r.Engine.PruneContainers(ctx, cutoff, r.Config.Labels)
	if err != nil {
		return removed, err
	}
	objs := make([]Object, 0, len(ids))
	for _, id := range ids {
		removed[id] = true
		objs = append(objs, Object{ID: id})
	}
	setObjects(ph, StatusRemoved, objs)
	ph.Bytes = bytes
	return removed, nil
}

// images runs (or lists) the dangling-image phase. A dry run leaves out images that a container
// surviving the container phase still uses, as the engine would.
func (r *Run) images(ctx context.Context, cutoff time.Time, removedContainers map[string]bool, ph *PhaseReport) error {
	candidates, err := r.Engine.DanglingImages(ctx, cutoff, r.Config.Labels)
	if err != nil {
		return err
	}
	if r.Config.DryRun {
		inUse, err := r.Engine.ImagesInUse(ctx, removedContainers)
		if err != nil {
			return err
		}
		var objs []Object
		for _, o := range candidates {
			if !inUse[o.ID] {
				objs = append(objs, o)
			}
		}
		setObjects(ph, StatusWouldRemove, objs)
		return nil
	}
	byID := map[string]Object{}
	for _, o := range candidates {
		byID[o.ID] = o
	}
	deleted, untagged, bytes, err := r.Engine.PruneDanglingImages(ctx, cutoff, r.Config.Labels)
	if err != nil {
		return err
	}
	var objs []Object
	for _, id := range deleted {
		if o, ok := byID[id]; ok {
			objs = append(objs, o)
		} else {
			ph.Layers++
		}
	}
	setObjects(ph, StatusRemoved, objs)
	ph.Untagged, ph.Bytes = untagged, bytes
	return nil
}

// buildCache runs (or lists) the unused build-cache phase; with labels set it is skipped, since
// the engine ignores labels there and would prune outside them.
func (r *Run) buildCache(ctx context.Context, cutoff, daemonNow time.Time, ph *PhaseReport) error {
	if len(r.Config.Labels) > 0 {
		ph.Status = StatusSkipped
		ph.Reason = "labels is set and the engine ignores labels when pruning build cache, so this phase would reach beyond them"
		return nil
	}
	if r.Config.DryRun {
		objs, err := r.Engine.UnusedBuildCache(ctx, cutoff)
		if err != nil {
			return err
		}
		setObjects(ph, StatusWouldRemove, objs)
		return nil
	}
	ids, bytes, err := r.Engine.PruneBuildCache(ctx, cutoff, daemonNow)
	if err != nil {
		return err
	}
	objs := make([]Object, 0, len(ids))
	for _, id := range ids {
		objs = append(objs, Object{ID: id})
	}
	setObjects(ph, StatusRemoved, objs)
	ph.Bytes = bytes
	return nil
}

func setObjects(ph *PhaseReport, status string, objs []Object) {
	ph.Status, ph.Objects, ph.Count = status, objs, len(objs)
	if status == StatusWouldRemove {
		for _, o := range objs {
			if o.Size > 0 {
				ph.Bytes += uint64(o.Size)
			}
		}
	}
}
