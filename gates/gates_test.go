package gates

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

func fs(usedPct float64) Filesystem {
	// 1000 blocks of 1 byte; no reserved blocks, so used% = used/total.
	used := uint64(usedPct * 10)
	return Filesystem{Path: "/var/lib/docker", TotalBytes: 1000, UsedBytes: used, FreeBytes: 1000 - used, TotalInodes: 100, FreeInodes: 50}
}

func TestDiskPressure(t *testing.T) {
	cases := []struct {
		name   string
		fs     Filesystem
		policy DiskPolicy
		open   bool
		reason string
	}{
		{"below threshold", fs(50), DiskPolicy{ThresholdPercent: 80}, false, "below the 80% threshold: keeping local image cache"},
		{"at threshold", fs(80), DiskPolicy{ThresholdPercent: 80}, true, "at or above the 80% threshold"},
		{"above threshold", fs(95), DiskPolicy{ThresholdPercent: 80}, true, "95.0% used"},
		{"min_free breached", fs(50), DiskPolicy{ThresholdPercent: 80, MinFreeBytes: 600}, true, "below min_free"},
		{"min_free met", fs(50), DiskPolicy{ThresholdPercent: 80, MinFreeBytes: 400}, false, "below the 80%"},
		{"inode count breached", fs(10), DiskPolicy{ThresholdPercent: 80, MinFreeInodes: InodeFloor{Count: 60}}, true, "50 free inodes is below min_free_inodes 60"},
		{"inode percent breached", fs(10), DiskPolicy{ThresholdPercent: 80, MinFreeInodes: InodeFloor{Percent: 60, IsPercent: true}}, true, "min_free_inodes 60%"},
		{"inode percent met", fs(10), DiskPolicy{ThresholdPercent: 80, MinFreeInodes: InodeFloor{Percent: 40, IsPercent: true}}, false, "below"},
		{"force below threshold", fs(10), DiskPolicy{ThresholdPercent: 80, Force: true}, true, "forced"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := DiskPressure(c.fs, c.policy)
			if v.Open != c.open || !strings.Contains(v.Reason, c.reason) || v.Gate != DiskPressureGate {
				t.Fatalf("got open=%v reason %q; want open=%v reason containing %q", v.Open, v.Reason, c.open, c.reason)
			}
			if !strings.Contains(strings.Join(v.Evidence, " "), "/var/lib/docker") {
				t.Errorf("evidence does not name the filesystem: %v", v.Evidence)
			}
		})
	}
}

func TestUsedPercentLikeDf(t *testing.T) {
	// 100 blocks, 20 free of which 5 reserved for root: df shows 80/(80+15) = 84.2%.
	f := Filesystem{TotalBytes: 100, UsedBytes: 80, FreeBytes: 15}
	if got := f.UsedPercent(); got < 84.2 || got > 84.3 {
		t.Fatalf("used %.2f%%, want 84.2%%", got)
	}
	if CeilingBreached(f, 85) || !CeilingBreached(f, 84) {
		t.Fatalf("ceiling check wrong at %.2f%%", f.UsedPercent())
	}
	if (Filesystem{}).UsedPercent() != 0 {
		t.Fatal("empty filesystem should read 0%")
	}
}

func TestNoInodeTable(t *testing.T) {
	f := Filesystem{Path: "/btrfs", TotalBytes: 100, UsedBytes: 10, FreeBytes: 90}
	v := DiskPressure(f, DiskPolicy{ThresholdPercent: 80, MinFreeInodes: InodeFloor{Count: 5}})
	if v.Open || len(v.Warnings) == 0 {
		t.Fatalf("a filesystem without inode counts must not open the gate and must warn: %+v", v)
	}
}

var cutoff = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func cutoffPolicy(p RunPolicy) RunPolicy {
	p.AbandonedBefore = cutoff
	return p
}

var ciRun = RunPolicy{Patterns: []*regexp.Regexp{regexp.MustCompile(`^ci-run-\d+`)}}

func TestLiveRuns(t *testing.T) {
	cases := []struct {
		name     string
		w        Workload
		p        RunPolicy
		open     bool
		evidence string
	}{
		{"nothing live", Workload{Swarm: SwarmManager, Containers: []Container{{ID: "a", Name: "redis", State: "running"}}}, ciRun, true, ""},
		{"service name", Workload{Swarm: SwarmManager, Services: []Service{{Name: "ci-run-1_web"}}}, ciRun, false, `swarm service "ci-run-1_web"`},
		{"stack namespace", Workload{Swarm: SwarmManager, Services: []Service{{Name: "web", Stack: "ci-run-2"}}}, ciRun, false, `swarm stack "ci-run-2"`},
		{"compose project", Workload{Containers: []Container{{Name: "x_db_1", State: "running", Labels: map[string]string{ComposeProjectLabel: "ci-run-3"}}}}, ciRun, false, `compose project "ci-run-3"`},
		{"stack on a container", Workload{Swarm: SwarmWorker, Containers: []Container{{Name: "t.1", State: "running", Labels: map[string]string{StackNamespaceLabel: "ci-run-4"}}}}, ciRun, false, `swarm stack "ci-run-4"`},
		{"container name", Workload{Containers: []Container{{Name: "ci-run-5-app", State: "running"}}}, ciRun, false, `container "ci-run-5-app"`},
		{"run label key", Workload{Containers: []Container{{Name: "step", State: "running", Labels: map[string]string{"io.drone": "true"}}}},
			RunPolicy{Labels: []LabelSelector{{Key: "io.drone"}}}, false, "carries run label io.drone"},
		{"run label value mismatch", Workload{Containers: []Container{{Name: "step", State: "running", Labels: map[string]string{"io.drone": "false"}}}},
			RunPolicy{Labels: []LabelSelector{{Key: "io.drone", Value: "true", HasValue: true}}}, true, ""},
		{"own build ignored", Workload{Containers: []Container{{Name: "step", State: "running", Labels: map[string]string{"io.drone": "true", DroneRepoLabel: "me/r", DroneBuildLabel: "4"}}}},
			RunPolicy{Labels: []LabelSelector{{Key: "io.drone"}}, Own: OwnRun{Labels: map[string]string{DroneRepoLabel: "me/r", DroneBuildLabel: "4"}}}, true, ""},
		{"other build of same repo counts", Workload{Containers: []Container{{Name: "step", State: "running", Labels: map[string]string{"io.drone": "true", DroneRepoLabel: "me/r", DroneBuildLabel: "5"}}}},
			RunPolicy{Labels: []LabelSelector{{Key: "io.drone"}}, Own: OwnRun{Labels: map[string]string{DroneRepoLabel: "me/r", DroneBuildLabel: "4"}}}, false, "io.drone"},
		{"self ignored", Workload{Self: []string{"0123456789ab"}, Containers: []Container{{ID: "0123456789abcdef", Name: "ci-run-9-prune", State: "running"}}}, ciRun, true, ""},
		{"paused counts", Workload{Containers: []Container{{Name: "ci-run-6", State: "paused"}}}, ciRun, false, `container "ci-run-6" (paused)`},
		{"restarting counts", Workload{Containers: []Container{{Name: "ci-run-6", State: "restarting"}}}, ciRun, false, "restarting"},
		{"created after the cutoff counts", Workload{Containers: []Container{{Name: "a", State: "created", Created: cutoff.Add(time.Second),
			Labels: map[string]string{ComposeProjectLabel: "ci-run-7"}}}}, cutoffPolicy(ciRun), false, `compose project "ci-run-7"`},
		{"created in the cutoff's second counts", Workload{Containers: []Container{{Name: "ci-run-7-a", State: "created", Created: cutoff}}}, cutoffPolicy(ciRun), false, "created"},
		{"created before the cutoff is abandoned", Workload{Containers: []Container{{Name: "ci-run-7-a", State: "created", Created: cutoff.Add(-time.Second)}}}, cutoffPolicy(ciRun), true, ""},
		{"exited does not count", Workload{Containers: []Container{{Name: "ci-run-8", State: "exited"}}}, ciRun, true, ""},
		{"dead does not count", Workload{Containers: []Container{{Name: "ci-run-8", State: "dead"}}}, ciRun, true, ""},
		{"run label on a young created container", Workload{Containers: []Container{{Name: "s", State: "created", Created: cutoff.Add(time.Hour), Labels: map[string]string{"io.drone": "true"}}}},
			RunPolicy{Labels: []LabelSelector{{Key: "io.drone"}}, AbandonedBefore: cutoff}, false, "io.drone"},
		{"own workflow by network", Workload{Containers: []Container{{Name: "wp_1", State: "running", Networks: []string{"bridge", "wf1_default"}, Labels: map[string]string{WoodpeckerStepLabel: "u1"}}}},
			RunPolicy{Labels: []LabelSelector{{Key: WoodpeckerStepLabel}}, Own: OwnRun{Network: "wf1_default"}}, true, ""},
		{"other workflow counts", Workload{Containers: []Container{{Name: "wp_2", State: "running", Networks: []string{"bridge", "wf2_default"}, Labels: map[string]string{WoodpeckerStepLabel: "u2"}}}},
			RunPolicy{Labels: []LabelSelector{{Key: WoodpeckerStepLabel}}, Own: OwnRun{Network: "wf1_default"}}, false, "wp_uuid"},
		{"own labels need every value", Workload{Containers: []Container{{Name: "s", State: "running", Labels: map[string]string{"io.drone": "true", DroneBuildLabel: "4"}}}},
			RunPolicy{Labels: []LabelSelector{{Key: "io.drone"}}, Own: OwnRun{Labels: map[string]string{DroneRepoLabel: "", DroneBuildLabel: "4"}}}, false, "io.drone"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := LiveRuns(c.w, c.p)
			if v.Open != c.open || v.Gate != NoRunGate {
				t.Fatalf("open=%v, want %v: %+v", v.Open, c.open, v)
			}
			if c.evidence != "" && !strings.Contains(strings.Join(v.Evidence, "\n"), c.evidence) {
				t.Errorf("evidence %v lacks %q", v.Evidence, c.evidence)
			}
		})
	}
}

func TestLiveRunsBlindWithoutPolicy(t *testing.T) {
	v := LiveRuns(Workload{Containers: []Container{{Name: "ci-run-1"}}}, RunPolicy{})
	if !v.Open || len(v.Warnings) == 0 || !strings.Contains(v.Warnings[0], "BLIND") {
		t.Fatalf("without a policy the gate must say loudly it sees nothing: %+v", v)
	}
}

func TestUnconverged(t *testing.T) {
	cases := []struct {
		name     string
		w        Workload
		open     bool
		evidence string
	}{
		{"converged", Workload{Swarm: SwarmManager, Services: []Service{{Name: "web", Mode: "replicated", Running: 3, Desired: 3}}}, true, ""},
		{"short of replicas", Workload{Swarm: SwarmManager, Services: []Service{{Name: "web", Mode: "replicated", Running: 1, Desired: 3}}}, false, "service web has 1/3 tasks running"},
		{"global short", Workload{Swarm: SwarmManager, Services: []Service{{Name: "agent", Mode: "global", Running: 0, Desired: 1}}}, false, "0/1"},
		{"scaled to zero", Workload{Swarm: SwarmManager, Services: []Service{{Name: "off", Mode: "replicated"}}}, true, ""},
		{"finished job", Workload{Swarm: SwarmManager, Services: []Service{{Name: "migrate", Mode: "replicated-job", Running: 0, Desired: 0}}}, true, ""},
		{"running job", Workload{Swarm: SwarmManager, Services: []Service{{Name: "prune", Mode: "global-job", Running: 0, Desired: 1}}}, true, ""},
		{"updating", Workload{Swarm: SwarmManager, Services: []Service{{Name: "web", Mode: "replicated", Running: 3, Desired: 3, UpdateState: "updating"}}}, false, "service web is updating"},
		{"rolling back", Workload{Swarm: SwarmManager, Services: []Service{{Name: "web", Mode: "replicated", Running: 3, Desired: 3, UpdateState: "rollback_started"}}}, false, "rollback started"},
		{"update completed", Workload{Swarm: SwarmManager, Services: []Service{{Name: "web", Mode: "replicated", Running: 3, Desired: 3, UpdateState: "completed"}}}, true, ""},
		{"restarting", Workload{Containers: []Container{{Name: "flaky", State: "restarting"}}}, false, "container flaky is restarting"},
		{"health starting", Workload{Containers: []Container{{Name: "db", State: "running", Health: "starting"}}}, false, "health is starting"},
		{"unhealthy is settled", Workload{Containers: []Container{{Name: "db", State: "running", Health: "unhealthy"}}}, true, ""},
		{"worker created task", Workload{Swarm: SwarmWorker, Containers: []Container{{Name: "web.1", State: "created", Labels: map[string]string{SwarmTaskLabel: "x"}}}}, false, "created but not started"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := Unconverged(c.w)
			if v.Open != c.open || v.Gate != NoConvergeGate {
				t.Fatalf("open=%v, want %v: %+v", v.Open, c.open, v)
			}
			if c.evidence != "" && !strings.Contains(strings.Join(v.Evidence, "\n"), c.evidence) {
				t.Errorf("evidence %v lacks %q", v.Evidence, c.evidence)
			}
		})
	}
}

func TestUnconvergedSaysWhatItCouldSee(t *testing.T) {
	if v := Unconverged(Workload{Swarm: SwarmWorker}); !v.Open || !strings.Contains(strings.Join(v.Warnings, " "), "worker node") {
		t.Errorf("worker fallback not reported: %+v", v)
	}
	if v := Unconverged(Workload{Swarm: SwarmNone}); !strings.Contains(strings.Join(v.Warnings, " "), "not in a swarm") {
		t.Errorf("no-swarm case not reported: %+v", v)
	}
}

// A service that had a task fail within CrashLoopWindow is converging even with its task count
// met (a crash loop between failures); one whose restart attempts are spent is reported as not
// converging on its own and holds nothing; an old failure is history.
func TestCrashLoops(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	failed := func(ago time.Duration) []FailedTask {
		return []FailedTask{{ID: "t1", At: now.Add(-ago), Exit: 1, Message: "task: non-zero exit (1)"}}
	}
	for _, c := range []struct {
		name     string
		s        Service
		open     bool
		evidence string
		warning  string
	}{
		{"looping, a replacement running", Service{Name: "loop", Mode: "replicated", Running: 1, Desired: 1, Unended: 1, FailedTasks: failed(time.Minute)},
			false, "service loop restarted a failed task in the last 10m0s (1/1 running): task t1 failed at 2026-12-04T11:59:00Z, exit 1: task: non-zero exit (1)", ""},
		{"looping, between tasks", Service{Name: "loop", Mode: "replicated", Running: 0, Desired: 1, Unended: 1, FailedTasks: failed(time.Second)},
			false, "restarted a failed task", ""},
		{"failed long ago, running since", Service{Name: "ok", Mode: "replicated", Running: 1, Desired: 1, Unended: 1, FailedTasks: failed(time.Hour)},
			true, "", ""},
		{"restart limit spent", Service{Name: "dead", Mode: "replicated", Running: 0, Desired: 1, RestartLimit: 2, FailedTasks: append(failed(time.Minute), FailedTask{ID: "t2", At: now.Add(-30 * time.Second), Exit: 1}, FailedTask{ID: "t3", At: now.Add(-10 * time.Second), Exit: 1})},
			true, "", "service dead will not converge on its own: 3 failed task(s), restart limit reached (0/1 running; last: task t3 at 2026-12-04T11:59:50Z, exit 1)"},
		{"no restart policy, failed", Service{Name: "once", Mode: "replicated", Running: 0, Desired: 1, NoRestart: true, FailedTasks: failed(time.Minute)},
			true, "", "service once will not converge on its own"},
		{"a job whose task failed", Service{Name: "job", Mode: "replicated-job", Running: 0, Desired: 1, FailedTasks: failed(time.Minute)},
			true, "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := Unconverged(Workload{Swarm: SwarmManager, Now: now, Services: []Service{c.s}})
			if v.Open != c.open {
				t.Fatalf("open %v, want %v: %+v", v.Open, c.open, v)
			}
			if c.evidence != "" && !strings.Contains(strings.Join(v.Evidence, "\n"), c.evidence) {
				t.Errorf("evidence %q lacks %q", v.Evidence, c.evidence)
			}
			if got := strings.Join(v.Warnings, "\n"); c.warning != "" && !strings.Contains(got, c.warning) || c.warning == "" && strings.Contains(got, "will not converge") {
				t.Errorf("warnings %q, want %q", v.Warnings, c.warning)
			}
		})
	}
}
