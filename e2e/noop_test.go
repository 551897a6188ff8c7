package e2e

import (
	"slices"
	"testing"

	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// The daily no-op (below threshold, automatic disk_path) asks the daemon one thing, GET /info for
// the data root, with no version-negotiation ping before it. Proves SPEC "The run" 2 ("at most the
// one daemon call needed to find the data root"); docs/benchmarks.md, the daily no-op.
func TestDailyNoOpOneRequest(t *testing.T) {
	p := startProxy(t, &faultProxy{})
	r := runPlugin(t, map[string]string{"DOCKER_HOST": p.host, "PLUGIN_THRESHOLD": "100", "PLUGIN_FAIL_ABOVE": "100"})
	if r.code != 0 || r.report.Decision != report.DecisionKeptCache {
		t.Fatalf("exit %d decision %q; want 0 and %q", r.code, r.report.Decision, report.DecisionKeptCache)
	}
	var routes []string
	for len(p.seen) > 0 {
		routes = append(routes, <-p.seen)
	}
	if !slices.Equal(routes, []string{"GET /info"}) {
		t.Errorf("the no-op sent %q; want GET /info alone", routes)
	}
}
