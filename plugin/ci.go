package plugin

import (
	"fmt"
	"regexp"
	"slices"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
)

// CI systems the plugin recognises from its environment.
const (
	CIDrone      = "Drone"
	CIWoodpecker = "Woodpecker"
	CIGitea      = "Gitea Actions"
	CIForgejo    = "Forgejo Actions"
	CIAct        = "act"
)

// CIEnvironment is what the CI system tells the step about itself, read from DRONE_* / CI_* /
// GITHUB_ACTIONS and its kin.
type CIEnvironment struct {
	// System is one of the CI* names above, or "" outside any CI the plugin knows.
	System string
	// Own identifies the build, workflow or job the step belongs to.
	Own gates.OwnRun
	// RunLabel is the label every step container of this CI carries: the default run_labels.
	RunLabel string
	// JobNames matches the names of this CI's job containers, which carry no label (the
	// Actions-format runners): the default live run there.
	JobNames *regexp.Regexp
	// CardPath is DRONE_CARD_PATH: /dev/stdout gets an encoded card, any other path plain JSON.
	CardPath string
	// OutputFile is DRONE_OUTPUT (Harness CI): KEY=value lines.
	OutputFile string
	// Environ holds the variables that say which CI run this is (ciIdentity), for a fleet run to
	// pass on to the nodes.
	Environ map[string]string
}

// ciIdentity are the variables from which ReadCIEnvironment tells the CI and the own run.
var ciIdentity = []string{"CI", "CI_SYSTEM_NAME", "DRONE", "DRONE_REPO", "DRONE_BUILD_NUMBER",
	"GITHUB_ACTIONS", "GITEA_ACTIONS", "FORGEJO_ACTIONS", "ACT"}

// woodpeckerNetwork is the network Woodpecker gives every workflow, <prefix>_default, from 1.x to
// 3.x; every step and service of the workflow joins it. (CI_STEP_NAME carried the prefix in 1.x
// only: since 2.2 it is the step's YAML name.)
var woodpeckerNetwork = regexp.MustCompile(`_default$`)

// actionsRunner is how one GitHub-Actions-format runner names its job containers: every container
// of one job (the job container, its services, its docker:// steps) starts with the prefix that
// own's first submatch takes from the plugin's own container name, and any name matching jobs is a
// job of that runner.
type actionsRunner struct {
	system, env string
	jobs, own   *regexp.Regexp
}

// actionsRunners are checked in order: act_runner and the Forgejo runner are built on act and set
// ACT=true as well (the Forgejo runner also GITEA_ACTIONS=true). How each names a job's containers
// (docs/usage.md has the sources):
//   - Gitea act_runner: the job container GITEA-ACTIONS-TASK-<task>_WORKFLOW-<name>_JOB-<job>, a
//     docker:// step GITEA-ACTIONS-TASK-<task>-WORKFLOW-<name>-JOB-<job>_STEP-<n>;
//   - Forgejo runner: the same with FORGEJO-ACTIONS-TASK-<task> and the workflow part a sha256;
//   - act: the job container act-<workflow>-<job> cut to 63 characters, then -<sha256>; a docker://
//     step the job container's first 63 characters, then -<sha256>.
//
// A step shares its job container's network and so its hostname and /etc files: the own
// container found is the job container, and the own prefix is read from its name.
var actionsRunners = []actionsRunner{
	{CIForgejo, "FORGEJO_ACTIONS", regexp.MustCompile(`^FORGEJO-ACTIONS-TASK-`), regexp.MustCompile(`^(FORGEJO-ACTIONS-TASK-[0-9]+)[-_]`)},
	{CIGitea, "GITEA_ACTIONS", regexp.MustCompile(`^GITEA-ACTIONS-TASK-`), regexp.MustCompile(`^(GITEA-ACTIONS-TASK-[0-9]+)[-_]`)},
	{CIAct, "ACT", regexp.MustCompile(`^act-`), regexp.MustCompile(`^(act-[A-Za-z0-9-]{0,58}[A-Za-z0-9])`)},
}

// ReadCIEnvironment reads which CI the step runs in and how its own containers are recognised.
// Woodpecker is checked first: it also sets Drone's DRONE_BUILD_NUMBER for compatibility.
func ReadCIEnvironment(getenv func(string) string) CIEnvironment {
	ci := CIEnvironment{CardPath: getenv("DRONE_CARD_PATH"), OutputFile: getenv("DRONE_OUTPUT"), Environ: map[string]string{}}
	for _, k := range ciIdentity {
		ci.Environ[k] = getenv(k)
	}
	switch {
	case getenv("CI") == "woodpecker" || getenv("CI_SYSTEM_NAME") == "woodpecker":
		// Every step, service and clone container carries wp_uuid (its own UUID); what the
		// containers of one workflow share is the workflow's network, read off the plugin's own
		// container when the gate looks.
		ci.System, ci.RunLabel = CIWoodpecker, gates.WoodpeckerStepLabel
		ci.Own.SelfNetwork = woodpeckerNetwork
	case getenv("DRONE") == "true" || getenv("DRONE_BUILD_NUMBER") != "":
		ci.System, ci.RunLabel = CIDrone, gates.DroneBuildLabel
		ci.Own.Labels = map[string]string{gates.DroneRepoLabel: getenv("DRONE_REPO"), gates.DroneBuildLabel: getenv("DRONE_BUILD_NUMBER")}
	case getenv("GITHUB_ACTIONS") == "true":
		for _, r := range actionsRunners {
			if getenv(r.env) == "true" {
				ci.System, ci.JobNames = r.system, r.jobs
				ci.Own.SelfName = r.own
				break
			}
		}
	}
	return ci
}

// ApplyCI completes the run policy from the CI environment: the own run is always ignored, and
// with neither stack_pattern nor run_labels set, the CI's own run label is what a live run carries.
func (c *Config) ApplyCI(ci CIEnvironment) {
	c.CI = ci
	c.Runs.Own = ci.Own
	if ci.RunLabel == "" && ci.JobNames == nil {
		return
	}
	if len(c.Runs.Patterns) == 0 && len(c.Runs.Labels) == 0 {
		if ci.RunLabel != "" {
			c.Runs.Labels = []gates.LabelSelector{{Key: ci.RunLabel}}
		} else {
			c.Runs.JobNames = []*regexp.Regexp{ci.JobNames}
		}
		c.Runs.Source = "default inside " + ci.System + ": neither stack_pattern nor run_labels is set"
		return
	}
	if ci.RunLabel == "" {
		return
	}
	if !slices.ContainsFunc(c.Runs.Labels, func(l gates.LabelSelector) bool { return l.Key == ci.RunLabel }) {
		c.Runs.Warnings = append(c.Runs.Warnings, fmt.Sprintf("inside %s, but run_labels does not include %s: other %s runs on this host are seen only if stack_pattern matches them", ci.System, ci.RunLabel, ci.System))
	}
}
