// Package e2e runs the plugin binary, and the plugin image, against the real Docker Engine. Most
// tests here prune the whole daemon, so they live in this one package and run one after another
// (none is parallel); each creates the objects it relies on. The CI clients' tests are in
// e2e/ciclients; harness.Main keeps the two packages from running on one engine at once. Without
// an engine TestMain runs no test and says so on stderr, unless DGP_REQUIRE_ENGINE=1 (CI), where a
// missing engine is a failure.
//
// docs/testing.md maps each behaviour of the contract (docs/spec.md) to the tests that prove
// it, here and in the packages' unit tests, and lists the behaviours no test proves yet.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
)

func TestMain(m *testing.M) {
	code := harness.Main(m, "e2e", "..", func() (func(), error) {
		if err := harness.BuildPluginBin(); err != nil {
			return nil, err
		}
		if v := os.Getenv(harness.NestedEnv); v != "" {
			if err := flag.Set("test.run", harness.NestedRun); err != nil {
				return nil, err
			}
			fmt.Fprintf(os.Stderr, "e2e: %s=%s: inside the test pipeline the host's run started, only the short run %s\n", harness.NestedEnv, v, harness.NestedRun)
		}
		if harness.Podman {
			return nil, nil
		}
		leave, err := fixtures.EnsureSwarm(context.Background(), harness.API)
		if err != nil {
			return nil, fmt.Errorf("swarm init failed: %w", err)
		}
		return func() {
			if leave {
				_ = harness.API.SwarmLeave(context.Background(), true)
			}
		}, nil
	})
	if dir := os.Getenv(harness.NestedEnv); dir != "" {
		// What the host's test reads back: this was the short run, and how it ended.
		report := fmt.Sprintf("run %s\nexit %d\n", harness.NestedRun, code)
		if err := os.WriteFile(filepath.Join(dir, harness.NestedReport), []byte(report), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			code = 1
		}
	}
	os.Exit(code)
}
