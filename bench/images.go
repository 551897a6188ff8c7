package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
)

// imageCounts are the sizes the image part measures at full scale and with -quick.
var imageCounts = map[bool][]int{false: {300, 1000}, true: {50}}

// Part 6: the image phase alone, against `docker image prune`, on whatever engine DOCKER_HOST
// names (for the containerd store, a Docker 29 engine from scripts/test-engine.sh). Each round loads
// n dangling images, waits past a cutoff and removes them, once with the plugin and once with the
// CLI, the two in turn and the first of each pair alternating; both are sent the same cutoff, and
// each must leave none of the n behind.
func (e *env) imagePhase(ctx context.Context, cfg config) error {
	info, err := e.api.Info(ctx)
	if err != nil {
		return err
	}
	for _, n := range imageCounts[cfg.quick] {
		var ratios []float64
		var pluginTimes, cliTimes []time.Duration
		for round := range cfg.rounds * 2 {
			var pair [2]time.Duration
			for i := range 2 {
				which := (i + round) % 2 // 0 the plugin, 1 the CLI
				cutoff, err := e.loadDangling(ctx, n)
				if err != nil {
					return err
				}
				until := cutoff.UTC().Format(time.RFC3339)
				if which == 0 {
					pair[0], _, _, err = timeCommand(baseEnv("PLUGIN_FORCE=true", "PLUGIN_UNTIL="+until, "PLUGIN_FAIL_ABOVE=100",
						"PLUGIN_LOG_LEVEL=error", "PLUGIN_LABELS="+fixtures.Label+"=true"), e.pluginBin)
				} else {
					pair[1], _, _, err = timeCommand(baseEnv(), "docker", "image", "prune", "-f", "--filter", "until="+until, "--filter", "label="+fixtures.Label+"=true")
				}
				if err != nil {
					return err
				}
				if left, err := e.fixtureImages(ctx); err != nil || left > 0 {
					return fmt.Errorf("image part: %d of %d dangling images left after the %s (%v)", left, n, map[int]string{0: "plugin", 1: "CLI"}[which], err)
				}
			}
			pluginTimes, cliTimes = append(pluginTimes, pair[0]), append(cliTimes, pair[1])
			ratios = append(ratios, pair[0].Seconds()/pair[1].Seconds())
		}
		e.t.add(fmt.Sprintf("6. image phase: %d old dangling images, %s %s (median of %d pairs)", n, info.ServerVersion, storeOf(info.DriverStatus), len(ratios)),
			secs(median(pluginTimes)), secs(median(cliTimes))+" (`docker image prune -f --filter until=… --filter label=…`)",
			fmt.Sprintf("ratio pair by pair: median %.2f, min %.2f, max %.2f (target ≤ 1.0)", medianOf(ratios), slices.Min(ratios), slices.Max(ratios)))
	}
	return nil
}

// loadOldDangling loads n untagged fixture images whose configs say they were created 48 h ago,
// 250 to a load.
func (e *env) loadOldDangling(ctx context.Context, n int) error {
	specs := make([]fixtures.Image, n)
	for i := range specs {
		specs[i] = fixtures.Image{Created: time.Now().Add(-48 * time.Hour)}
	}
	for i := 0; i < n; i += 250 {
		if _, err := fixtures.Load(ctx, e.api, specs[i:min(i+250, n)]...); err != nil {
			return err
		}
	}
	return nil
}

// loadDangling loads n untagged fixture images and returns a cutoff they are all older than, by
// every clock a store compares.
func (e *env) loadDangling(ctx context.Context, n int) (time.Time, error) {
	if err := e.loadOldDangling(ctx, n); err != nil {
		return time.Time{}, err
	}
	cutoff := time.Now().Truncate(time.Second).Add(time.Second)
	time.Sleep(time.Until(cutoff) + 100*time.Millisecond)
	return cutoff, nil
}

// fixtureImages counts the fixture images the engine still lists.
func (e *env) fixtureImages(ctx context.Context) (int, error) {
	list, err := e.api.ImageList(ctx, image.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", fixtures.Label+"=true"), filters.Arg("dangling", "true"))})
	return len(list), err
}

func storeOf(status [][2]string) string {
	for _, kv := range status {
		if kv[0] == "driver-type" && strings.Contains(kv[1], "snapshotter") {
			return "containerd store"
		}
	}
	return "classic store"
}

func medianOf(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
