// Package e2e runs the plugin binary against the real Docker Engine. Every test here prunes the
// whole daemon, so they live in this one package and run one after another; each creates every
// object it relies on. Without an engine they are skipped, unless DGP_REQUIRE_ENGINE=1 (CI), where
// a missing engine is a failure.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
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
	dir, err := os.MkdirTemp("", "dgp-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	pluginBin = filepath.Join(dir, "drone-gated-prune")
	sleeperBin = filepath.Join(dir, "sleeper")
	for out, pkg := range map[string]string{pluginBin: "..", sleeperBin: "./testdata/sleeper"} {
		cmd := exec.Command("go", "build", "-ldflags", "-X main.version=e2e", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: building %s: %v\n%s", pkg, err, b)
			return 1
		}
	}
	leave, err := ensureSwarm()
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

// ensureSwarm makes this engine a single-node swarm manager if it is not in a swarm, and says
// whether the tests should leave it again.
func ensureSwarm() (bool, error) {
	info, err := api.Info(context.Background())
	if err != nil {
		return false, err
	}
	if info.Swarm.LocalNodeState == swarm.LocalNodeStateActive {
		return false, nil
	}
	_, err = api.SwarmInit(context.Background(), swarm.InitRequest{ListenAddr: "127.0.0.1:2377", AdvertiseAddr: "127.0.0.1"})
	return err == nil, err
}
