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
)

// CIEnvironment is what the CI system tells the step about itself, read from DRONE_* / CI_*.
type CIEnvironment struct {
	// System is CIDrone, CIWoodpecker or "" outside any CI the plugin knows.
	System string
	// Own identifies the build or workflow the step belongs to.
	Own gates.OwnRun
	// RunLabel is the label every step container of this CI carries: the default run_labels.
	RunLabel string
	// Warning is set when the own run cannot be told apart.
	Warning string
	// CardPath is DRONE_CARD_PATH: /dev/stdout gets an encoded card, any other path plain JSON.
	CardPath string
	// OutputFile is DRONE_OUTPUT (Harness CI): KEY=value lines.
	OutputFile string
	// Environ holds the variables that say which CI run this is (ciIdentity), for a fleet run to
	// pass on to the nodes.
	Environ map[string]string
}

// ciIdentity are the variables from which ReadCIEnvironment tells the CI and the own run.
var ciIdentity = []string{"CI", "CI_SYSTEM_NAME", "CI_STEP_NAME", "DRONE", "DRONE_REPO", "DRONE_BUILD_NUMBER"}

// woodpeckerStep is Woodpecker's internal step name, <workflow prefix>_step_<n> (also _services_<n>
// and _clone[_<n>]), given to the step as CI_STEP_NAME by Woodpecker 1.x.
var woodpeckerStep = regexp.MustCompile(`^(.+)_(step|services|clone)(_[0-9]+)?$`)

// ReadCIEnvironment reads which CI the step runs in and how its own containers are recognised.
// Woodpecker is checked first: it also sets Drone's DRONE_BUILD_NUMBER for compatibility.
func ReadCIEnvironment(getenv func(string) string) CIEnvironment {
	ci := CIEnvironment{CardPath: getenv("DRONE_CARD_PATH"), OutputFile: getenv("DRONE_OUTPUT"), Environ: map[string]string{}}
	for _, k := range ciIdentity {
		ci.Environ[k] = getenv(k)
	}
	switch {
	case getenv("CI") == "woodpecker" || getenv("CI_SYSTEM_NAME") == "woodpecker":
		ci.System, ci.RunLabel = CIWoodpecker, gates.WoodpeckerStepLabel
		// Woodpecker 1.x labels a step container with its own UUID only; what the steps of one
		// workflow share is the workflow's default network, named after the step's prefix.
		if m := woodpeckerStep.FindStringSubmatch(getenv("CI_STEP_NAME")); m != nil {
			ci.Own.Network = m[1] + "_default"
		} else {
			ci.Warning = fmt.Sprintf("inside Woodpecker, but CI_STEP_NAME %q does not name the workflow: containers of this step's own workflow count as live runs", getenv("CI_STEP_NAME"))
		}
	case getenv("DRONE") == "true" || getenv("DRONE_BUILD_NUMBER") != "":
		ci.System, ci.RunLabel = CIDrone, gates.DroneBuildLabel
		ci.Own.Labels = map[string]string{gates.DroneRepoLabel: getenv("DRONE_REPO"), gates.DroneBuildLabel: getenv("DRONE_BUILD_NUMBER")}
	}
	return ci
}

// ApplyCI completes the run policy from the CI environment: the own run is always ignored, and
// with neither stack_pattern nor run_labels set, the CI's own run label is what a live run carries.
func (c *Config) ApplyCI(ci CIEnvironment) {
	c.CI = ci
	c.Runs.Own = ci.Own
	if ci.Warning != "" {
		c.Runs.Warnings = append(c.Runs.Warnings, ci.Warning)
	}
	if ci.RunLabel == "" {
		return
	}
	if len(c.Runs.Patterns) == 0 && len(c.Runs.Labels) == 0 {
		c.Runs.Labels = []gates.LabelSelector{{Key: ci.RunLabel}}
		c.Runs.Source = "default inside " + ci.System + ": neither stack_pattern nor run_labels is set"
		return
	}
	if !slices.ContainsFunc(c.Runs.Labels, func(l gates.LabelSelector) bool { return l.Key == ci.RunLabel }) {
		c.Runs.Warnings = append(c.Runs.Warnings, fmt.Sprintf("inside %s, but run_labels does not include %s: other %s runs on this host are seen only if stack_pattern matches them", ci.System, ci.RunLabel, ci.System))
	}
}
