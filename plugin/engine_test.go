package plugin

import (
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
