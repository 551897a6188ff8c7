package plugin

import (
	"strings"
	"testing"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
)

// TestCIDefaults runs each CI's default live-run policy over a workload shaped as that CI leaves
// it: the plugin's own container (Self), its own run's other containers, and another run's. Each
// default must ignore the own run without a warning, see the other run, and name its source.
func TestCIDefaults(t *testing.T) {
	const selfID = "0123456789abcdef0123"
	self := func(name string, nets ...string) gates.Container {
		return gates.Container{ID: selfID, Name: name, State: "running", Networks: nets}
	}
	other := func(name string, labels map[string]string, nets ...string) gates.Container {
		return gates.Container{ID: "ffff" + name, Name: name, State: "running", Labels: labels, Networks: nets}
	}
	wp := map[string]string{gates.WoodpeckerStepLabel: "01J"}
	const sha = "e86f0e333bbca920efcb965559e5824907ca366be5dd21b080d2289af21a5776"
	const actJob = "act-wf-one-plan-a86f9f6a7bdae2e2c3b814e3c40f92a6daa5771b61b7ca242e30bf668492a762"
	cases := []struct {
		name   string
		env    map[string]string
		own    []gates.Container // the plugin's container first
		others []gates.Container
		system string
		seen   string // evidence naming the other run
	}{
		{"woodpecker 1.0.5", map[string]string{"CI": "woodpecker", "CI_STEP_NAME": "wp_a_step_1", "DRONE_BUILD_NUMBER": "3"},
			[]gates.Container{self("wp_a_step_1", "wp_a_default"), other("wp_a_services_0", wp, "wp_a_default")},
			[]gates.Container{other("wp_b_step_0", wp, "wp_b_default")}, CIWoodpecker, `"wp_b_step_0" carries run label wp_uuid`},
		{"woodpecker 3.17", map[string]string{"CI": "woodpecker", "CI_SYSTEM_NAME": "woodpecker", "CI_STEP_NAME": "plan"},
			[]gates.Container{self("wp_01JA", "wp_01J0_default"), other("wp_01JB", wp, "wp_01J0_default")},
			[]gates.Container{other("wp_01JC", wp, "wp_01J1_default")}, CIWoodpecker, `"wp_01JC" carries run label wp_uuid`},
		// The step shares the job container's network: the own container found is the job's.
		{"gitea act_runner", map[string]string{"GITHUB_ACTIONS": "true", "GITEA_ACTIONS": "true", "ACT": "true"},
			[]gates.Container{self("GITEA-ACTIONS-TASK-17_WORKFLOW-ci_JOB-cleanup"), other("GITEA-ACTIONS-TASK-17-WORKFLOW-ci-JOB-cleanup_STEP-2", nil)},
			[]gates.Container{other("GITEA-ACTIONS-TASK-171_WORKFLOW-ci_JOB-build", nil)}, CIGitea, `"GITEA-ACTIONS-TASK-171_WORKFLOW-ci_JOB-build"`},
		{"forgejo runner", map[string]string{"GITHUB_ACTIONS": "true", "GITEA_ACTIONS": "true", "FORGEJO_ACTIONS": "true", "ACT": "true"},
			[]gates.Container{self("FORGEJO-ACTIONS-TASK-9_WORKFLOW-" + sha + "_JOB-prune"), other("FORGEJO-ACTIONS-TASK-9-WORKFLOW-"+sha+"-JOB-prune_STEP-1", nil)},
			[]gates.Container{other("FORGEJO-ACTIONS-TASK-10_WORKFLOW-"+sha+"_JOB-build", nil)}, CIForgejo, `"FORGEJO-ACTIONS-TASK-10_WORKFLOW-` + sha + `_JOB-build"`},
		// Names as act v0.2.89 made them for workflow "wf one", jobs plan and build (docs/usage.md).
		{"act", map[string]string{"GITHUB_ACTIONS": "true", "ACT": "true", "CI": "true"},
			[]gates.Container{self(actJob), other(actJob[:63]+"-0d20fe4f376062a6c4df3939fbb860734f73b312861f20e22b320f583bf09f72", nil)},
			[]gates.Container{other("act-wf-one-build-"+sha, nil)}, CIAct, `"act-wf-one-build-` + sha + `"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ci := ReadCIEnvironment(func(k string) string { return c.env[k] })
			if ci.System != c.system {
				t.Fatalf("system %q, want %q", ci.System, c.system)
			}
			cfg, err := ParseConfig(map[string]string{}, now)
			if err != nil {
				t.Fatal(err)
			}
			cfg.ApplyCI(ci)
			if !strings.Contains(cfg.Runs.Source, c.system) {
				t.Errorf("the policy's source %q does not name %s", cfg.Runs.Source, c.system)
			}
			w := gates.Workload{Self: []string{selfID[:12]}, Containers: c.own}
			v := gates.LiveRuns(w, cfg.Runs)
			if !v.Open || len(v.Warnings) > 0 {
				t.Fatalf("own run alone: open %v, %s %q, warnings %q; want open, no warning", v.Open, v.Reason, v.Evidence, v.Warnings)
			}
			w.Containers = append(w.Containers, c.others...)
			v = gates.LiveRuns(w, cfg.Runs)
			if v.Open || len(v.Evidence) != 1 || !strings.Contains(v.Evidence[0], c.seen) {
				t.Fatalf("with another run: open %v, evidence %q; want closed by %s only", v.Open, v.Evidence, c.seen)
			}
			// Not in its container (hostname unknown to the engine): the own run cannot be told
			// apart, which is said, and its containers hold the gate (prune less).
			w.Self = []string{"not-a-container-id"}
			w.Containers = c.own[1:]
			if v := gates.LiveRuns(w, cfg.Runs); v.Open || len(v.Warnings) == 0 {
				t.Errorf("without its own container: open %v, warnings %q; want closed with a warning", v.Open, v.Warnings)
			}
		})
	}
}
