package plugin

import (
	"regexp"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/swarm"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
)

func TestSwarmRole(t *testing.T) {
	cases := []struct {
		info swarm.Info
		role gates.SwarmRole
		ok   bool
	}{
		{swarm.Info{LocalNodeState: swarm.LocalNodeStateInactive}, gates.SwarmNone, true},
		{swarm.Info{}, gates.SwarmNone, true},
		{swarm.Info{LocalNodeState: swarm.LocalNodeStateActive, ControlAvailable: true}, gates.SwarmManager, true},
		{swarm.Info{LocalNodeState: swarm.LocalNodeStateActive}, gates.SwarmWorker, true},
		{swarm.Info{LocalNodeState: swarm.LocalNodeStateLocked}, "", false},
		{swarm.Info{LocalNodeState: swarm.LocalNodeStatePending}, "", false},
		{swarm.Info{LocalNodeState: swarm.LocalNodeStateError, Error: "raft: no leader"}, "", false},
	}
	for _, c := range cases {
		if role, ok := swarmRole(c.info); role != c.role || ok != c.ok {
			t.Errorf("%+v: got %q %v, want %q %v", c.info, role, ok, c.role, c.ok)
		}
	}
}

func TestHealthFromStatus(t *testing.T) {
	for status, want := range map[string]string{
		"Up 3 seconds (health: starting)": "starting", "Up 2 hours (healthy)": "healthy", "Up 1 minute (unhealthy)": "unhealthy", "Up 5 seconds": "",
	} {
		if got := health(status); got != want {
			t.Errorf("health(%q) = %q, want %q", status, got, want)
		}
	}
}

// The build-cache id filter names exactly the records given: BuildKit reads it as a regular
// expression, quoted so that its bars and parentheses stay in one operand.
func TestCacheIDPattern(t *testing.T) {
	p := cacheIDPattern([]string{"abc123", "def456"})
	if p != `"^(abc123|def456)$"` {
		t.Fatalf("pattern %s", p)
	}
	re := regexp.MustCompile(strings.Trim(p, `"`))
	for id, want := range map[string]bool{"abc123": true, "def456": true, "abc1234": false, "xabc123": false, "abc": false} {
		if re.MatchString(id) != want {
			t.Errorf("%s matched %v", id, !want)
		}
	}
	if cacheIDForm.MatchString(`a"b`) || cacheIDForm.MatchString("a|b") || !cacheIDForm.MatchString("vkd2q4gf0ma3x1yc3wbd6iz9a") {
		t.Error("cacheIDForm lets through an ID that would break the filter, or stops a real one")
	}
}
