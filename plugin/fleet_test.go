package plugin

import (
	"slices"
	"strings"
	"testing"

	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// The fleet's exit code is the worst node's: 3 over 1 over 0, any other failure counting as 1.
func TestWorstNode(t *testing.T) {
	cases := []struct {
		codes []int
		want  int
	}{
		{[]int{0, 0, 0}, outcome.ExitOK},
		{[]int{0, 1, 0}, outcome.ExitRuntime},
		{[]int{0, 137, 0}, outcome.ExitRuntime},
		{[]int{1, 3, 0}, outcome.ExitPolicy},
		{[]int{3, 0, 2}, outcome.ExitPolicy},
	}
	for _, c := range cases {
		var rows []report.NodeRow
		for i, code := range c.codes {
			rows = append(rows, report.NodeRow{Node: "n" + string(rune('1'+i)), ExitCode: code, Decision: "d"})
		}
		err := worstNode(rows)
		if got := outcome.ExitCode(err); got != c.want {
			t.Errorf("codes %v: exit %d (%v), want %d", c.codes, got, err, c.want)
		}
		if err != nil && !strings.Contains(err.Error(), "n") {
			t.Errorf("codes %v: the error does not name the node: %v", c.codes, err)
		}
	}
}

// The job runs the plugin with the settings as given less the fleet ones and the output files,
// the CI identity, a card on stdout, and the node's socket.
func TestFleetSpec(t *testing.T) {
	raw := map[string]string{"fleet": "true", "fleet_image": "x:1", "threshold": "70", "stack_pattern": "^a{1,2}", "summary_file": "/tmp/s.json", "dry_run": "true"}
	cfg, err := ParseConfig(raw, now)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ApplyCI(ReadCIEnvironment(func(k string) string {
		return map[string]string{"DRONE": "true", "DRONE_REPO": "o/r", "DRONE_BUILD_NUMBER": "9"}[k]
	}))
	spec := (&Run{Config: cfg}).fleetSpec("x:1")
	env := spec.TaskTemplate.ContainerSpec.Env
	for _, want := range []string{"PLUGIN_THRESHOLD=70", "PLUGIN_STACK_PATTERN=^a{1,2}", "PLUGIN_DRY_RUN=true", "DRONE=true", "DRONE_REPO=o/r", "DRONE_BUILD_NUMBER=9", "DRONE_CARD_PATH=/dev/stdout"} {
		if !slices.Contains(env, want) {
			t.Errorf("job env lacks %s: %v", want, env)
		}
	}
	for _, e := range env {
		if strings.HasPrefix(e, "PLUGIN_FLEET") || strings.HasPrefix(e, "PLUGIN_SUMMARY_FILE") {
			t.Errorf("job env passes %s on", e)
		}
	}
	if spec.Mode.GlobalJob == nil || spec.Name != FleetService || spec.TaskTemplate.ContainerSpec.Mounts[0].Source != "/var/run/docker.sock" {
		t.Errorf("not a global job %s with the node's socket: %+v", FleetService, spec)
	}
	if _, err := ParseConfig(map[string]string{"fleet_image": "x:1"}, now); err == nil {
		t.Error("fleet_image without fleet must be refused")
	}
}
