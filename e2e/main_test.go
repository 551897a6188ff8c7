// Package e2e runs the plugin binary, and the plugin image, against the real Docker Engine. Most
// tests here prune the whole daemon, so they live in this one package and run one after another
// (none is parallel); each creates the objects it relies on. Without an engine TestMain runs no
// test and says so on stderr, unless DGP_REQUIRE_ENGINE=1 (CI), where a missing engine is a failure.
//
// docs/testing.md maps each behaviour of the contract (docs/spec.md) to the tests that prove
// it, here and in the packages' unit tests, and lists the behaviours no test proves yet.
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
)

func TestMain(m *testing.M) {
	os.Exit(setup(m))
}

func setup(m *testing.M) int {
	var err error
	api, err = client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err == nil {
		c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = api.Ping(c)
		cancel()
	}
	if err != nil {
		if os.Getenv("DGP_REQUIRE_ENGINE") == "1" {
			fmt.Fprintln(os.Stderr, "e2e: DGP_REQUIRE_ENGINE=1 but no Docker Engine answers:", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "e2e: SKIPPING engine tests: no Docker Engine answers at", api.DaemonHost(), "-", err)
		return 0
	}
	info, err := api.Info(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: GET /info:", err)
		return 1
	}
	containerdStore = isContainerdStore(info)
	fmt.Fprintf(os.Stderr, "e2e: Docker %s at %s, %s image store (%s)\n", info.ServerVersion, api.DaemonHost(), storeName(), info.Driver)
	dir, err := os.MkdirTemp("", "dgp-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	pluginBin = filepath.Join(dir, "drone-gated-prune")
	sleeperBin = filepath.Join(dir, "sleeper")
	if err := fixtures.BuildStatic(map[string]string{pluginBin: "..", sleeperBin: "./testdata/sleeper"}, "e2e"); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	leave, err := fixtures.EnsureSwarm(context.Background(), api)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: swarm init failed:", err)
		return 1
	}
	code := m.Run()
	_, _ = api.ImageRemove(context.Background(), sleeperImage, image.RemoveOptions{Force: true})
	if leave {
		_ = api.SwarmLeave(context.Background(), true)
	}
	return code
}
