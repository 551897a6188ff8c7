// Package ciclients runs the plugin image under the real CI clients, not under a test imitating
// them: drone-runner-docker v1.8.3 (`exec`, which compiles and runs one pipeline of a .drone.yml
// exactly as a runner does: settings encoded as PLUGIN_*, the io.drone.* labels, a network per
// build, host volumes) and woodpecker-cli v1.0.5 (`exec` with the docker backend), and the image
// as Drone runs it. scripts/ci-clients.sh builds both clients from Go module source once and
// caches them; the plugin image is built here and pinned to a local tag, since nothing can be
// pulled. The other step images of the pipelines that run here (the Go image and the docker CLI
// image .drone.yml pins) are built locally under their pinned tags by scripts/ci-images.sh, so
// every pipeline of .drone.yml that can run here runs as written: the prune pipelines,
// ci-with-cleanup and the project's own test pipeline, whose test step runs the engine tests
// again (see harness.NestedEnv).
//
// These tests bind the host's /var/run/docker.sock into their pipelines and steps, so they run
// on the system engine only (.ci/run runs package e2e alone on Docker 29).
package ciclients

import (
	"fmt"
	"os"
	"testing"

	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
)

func TestMain(m *testing.M) {
	if v := os.Getenv(harness.NestedEnv); v != "" {
		// Inside the project's test pipeline that TestCIClients started: starting it again from
		// here would recurse, and the host's run covers these tests.
		fmt.Fprintf(os.Stderr, "ciclients: %s=%s: inside the test pipeline the host's run started; the CI-client tests run on the host\n", harness.NestedEnv, v)
		os.Exit(0)
	}
	os.Exit(harness.Main(m, "ciclients", "../..", nil))
}
