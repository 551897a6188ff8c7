// Package harness is what the packages of engine tests share (e2e, the whole engine suite, and
// e2e/ciclients, the CI clients): the client of the engine under test and its image store, a
// TestMain that runs no two of those packages on one engine at once, objects made for a test and
// removed after it, and the checks on the engine's state afterwards. Tests that prune act on the
// whole daemon: every object a test relies on is made by it.
package harness

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/system"
	"github.com/docker/docker/client"

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

var (
	// API is the client of the engine under test (DOCKER_HOST), set by Main.
	API *client.Client
	// SleeperBin is the sleeper, built by Main; PluginBin the plugin binary, built by
	// BuildPluginBin for the packages that run it.
	PluginBin, SleeperBin string
	// workDir is Main's temporary directory, where the binaries are built.
	workDir string
	// Root is the repository's root, an absolute path.
	Root string
	// ContainerdStore is true when the engine keeps images in the containerd image store (Docker
	// 29's default on fresh installs) and false on a classic graphdriver store; Main sets it. The
	// stores differ in an image's ID (classic: the config digest; containerd: the manifest digest,
	// so fixtures are found by label or tag) and in what an image prune's `until` compares: the
	// config's "created" on the classic store, the image record's creation time on the containerd
	// store, that is when the image was loaded, pulled or tagged, or for a dangling image when it
	// was left dangling.
	ContainerdStore bool
	// Podman is true when the engine under test is Podman's Docker-compatible service (its version
	// says "Podman Engine"): it has no swarm mode, so Main's caller makes none; .ci/run runs there
	// only the tests that need no swarm, no BuildKit and no running container (docs/engine.md).
	Podman bool
)

// NestedEnv is set by the CI-client tests in the steps of the project's test pipeline they run
// (exec --environ, as a runner's DRONE_RUNNER_ENVIRON would): that pipeline's test step runs
// `go test ./...` on the host's engine, while the host's run holds it. Its value is a directory
// the step and the host see at the same path, where package e2e's short run writes what it ran
// (NestedReport) for the host's test to read.
const NestedEnv = "DGP_E2E_INSIDE_PIPELINE_TEST"

// NestedRun is package e2e's short run inside the test pipeline: a run below the threshold on
// the data root the step mounts, and the own-build exception, which that step (a live run of the
// enclosing build) needs; the host's run has run the whole suite. It is short because every
// GET /system/df is slow there: Engine 20.10 computes each running container's size for it, and
// with the step's Go container running one took 5.4 s instead of 52 ms (docs/engine.md).
const NestedRun = "^(TestBelowThresholdRemovesNothing|TestOwnBuildIgnored)$"

// NestedReport is the file, in NestedEnv's directory, where package e2e's short run inside the
// test pipeline writes its run pattern and exit code.
const NestedReport = "e2e-short-run.txt"

// Main is the TestMain of a package of engine tests; root is the repository's root relative to
// the package. Without an answering engine it runs no test and says so on stderr, unless
// DGP_REQUIRE_ENGINE=1 (CI), where a missing engine is a failure. It waits until no other package
// of engine tests runs on this engine (a lock file per engine; not inside the project's test
// pipeline, whose host run holds it), reads the engine's image store, builds the sleeper, calls
// before when not nil (what it returns runs after the tests) and runs the tests.
func Main(m *testing.M, pkg, root string, before func() (after func(), err error)) int {
	flag.Parse()
	var err error
	API, err = client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err == nil {
		c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = API.Ping(c)
		cancel()
	}
	if err != nil {
		if os.Getenv("DGP_REQUIRE_ENGINE") == "1" {
			fmt.Fprintf(os.Stderr, "%s: DGP_REQUIRE_ENGINE=1 but no Docker Engine answers: %v\n", pkg, err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "%s: SKIPPING engine tests: no Docker Engine answers at %s - %v\n", pkg, API.DaemonHost(), err)
		return 0
	}
	if os.Getenv(NestedEnv) == "" {
		unlock, err := lockEngine(pkg)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", pkg, err)
			return 1
		}
		defer unlock()
	}
	info, err := API.Info(context.Background())
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: GET /info: %v\n", pkg, err)
		return 1
	}
	ContainerdStore = isContainerdStore(info)
	if v, err := API.ServerVersion(context.Background()); err == nil && len(v.Components) > 0 && v.Components[0].Name == "Podman Engine" {
		Podman = true
	}
	if Root, err = filepath.Abs(root); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "%s: Docker %s at %s, %s image store (%s)\n", pkg, info.ServerVersion, API.DaemonHost(), StoreName(), info.Driver)
	dir, err := os.MkdirTemp("", "dgp-"+pkg+"-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	workDir = dir
	SleeperBin = filepath.Join(dir, "sleeper")
	if err := fixtures.BuildStatic(map[string]string{SleeperBin: filepath.Join(Root, "e2e", "testdata", "sleeper")}, "e2e"); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", pkg, err)
		return 1
	}
	if before != nil {
		after, err := before()
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", pkg, err)
			return 1
		}
		if after != nil {
			defer after()
		}
	}
	code := m.Run()
	_, _ = API.ImageRemove(context.Background(), SleeperImage, image.RemoveOptions{Force: true})
	return code
}

// BuildPluginBin builds the plugin binary (PluginBin) from the repository, for a package whose
// tests run it as a process; Main's before is the place to call it.
func BuildPluginBin() error {
	PluginBin = filepath.Join(workDir, "drone-gated-prune")
	return fixtures.BuildStatic(map[string]string{PluginBin: Root}, "e2e")
}

// lockEngine waits for, then takes, this engine's lock: `go test ./...` starts the packages'
// test binaries side by side, and two packages that prune one daemon would disturb each other.
func lockEngine(pkg string) (unlock func(), err error) {
	sum := sha256.Sum256([]byte(API.DaemonHost()))
	path := filepath.Join(os.TempDir(), "drone-gated-prune-engine-"+hex.EncodeToString(sum[:6])+".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("the engine lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		fmt.Fprintf(os.Stderr, "%s: another package of engine tests runs on %s; waiting for it (%s)\n", pkg, API.DaemonHost(), path)
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("the engine lock %s: %w", path, err)
		}
	}
	return func() { f.Close() }, nil
}

// isContainerdStore reads the store from GET /info: the containerd store reports the driver type
// io.containerd.snapshotter.v1.
func isContainerdStore(info system.Info) bool {
	for _, kv := range info.DriverStatus {
		if len(kv) == 2 && kv[0] == "driver-type" && kv[1] == "io.containerd.snapshotter.v1" {
			return true
		}
	}
	return false
}

// StoreName names the engine's image store for messages.
func StoreName() string {
	if ContainerdStore {
		return "containerd"
	}
	return "classic"
}

// Ctx is the context of the tests' own Engine API calls, cleanups included.
func Ctx() context.Context { return context.Background() }

// Must fails the test on an error.
func Must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// WaitPastCutoff returns the next whole second after now once the clock has passed it. Everything
// made before the call is older than that cutoff by every clock a prune compares (a container's
// creation, an image config's "created" unless set later, an image record's creation, a build-cache
// record's last use), and everything made after the call is younger, so a test that needs "old"
// objects on both stores makes them, waits, and passes the cutoff as an RFC 3339 until.
func WaitPastCutoff() time.Time {
	cutoff := time.Now().Truncate(time.Second).Add(time.Second)
	time.Sleep(time.Until(cutoff) + 100*time.Millisecond)
	return cutoff
}

// RFC3339 is a cutoff as an until setting.
func RFC3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// WaitFor polls cond every 200 ms until it holds or limit passes. If it never holds, or cond
// returns an error, the test fails with what (the thing that did not happen) and WaitFor returns
// false; a caller that cannot go on without it stops with t.FailNow.
func WaitFor(t testing.TB, limit time.Duration, what string, cond func() (bool, error)) bool {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, err := cond()
		if err != nil {
			t.Errorf("waiting until %s: %v", what, err)
			return false
		}
		if ok {
			return true
		}
		if !time.Now().Before(deadline) {
			t.Errorf("did not happen within %s: %s", limit, what)
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// DataRoot is the daemon's data root, as GET /info gives it.
func DataRoot(t testing.TB) string {
	info, err := API.Info(Ctx())
	Must(t, err)
	return info.DockerRootDir
}

// EngineSocket is the path of the engine's unix socket.
func EngineSocket() string {
	return strings.TrimPrefix(API.DaemonHost(), "unix://")
}

// Exists says whether the engine has the object (by ID, or name or tag where the engine accepts
// one). Only the engine's "no such object" counts as absent: any other answer (daemon unreachable,
// a server error) fails the test, and so does an empty ID, which the client itself reports as not
// found, so neither can pass for a removed object.
func Exists(t testing.TB, kind string, id string) bool {
	t.Helper()
	if strings.TrimSpace(id) == "" {
		t.Fatalf("exists: no %s ID given", kind)
	}
	var err error
	switch kind {
	case "image":
		_, err = API.ImageInspect(Ctx(), id)
	case "container":
		_, err = API.ContainerInspect(Ctx(), id)
	case "volume":
		_, err = API.VolumeInspect(Ctx(), id)
	case "network":
		_, err = API.NetworkInspect(Ctx(), id, network.InspectOptions{})
	default:
		t.Fatalf("exists: unknown kind %q", kind)
	}
	switch {
	case err == nil:
		return true
	case cerrdefs.IsNotFound(err):
		return false
	}
	t.Fatalf("asking the engine whether %s %s exists: %v", kind, id, err)
	return false
}

// PhaseIDs is the set of object IDs a phase reported.
func PhaseIDs(r report.Report, phase string) map[string]bool {
	p, _ := r.Phase(phase)
	ids := map[string]bool{}
	for _, o := range p.Objects {
		ids[o.ID] = true
	}
	return ids
}

// FmtSet prints a set's members.
func FmtSet(m map[string]bool) string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	return fmt.Sprint(s)
}

// Enclosing is the Drone build these tests run in, when they run as a step of one (the test step
// of the project's own pipeline, which TestCIClients/drone/pipeline-test runs); zero outside Drone.
// The runner gives every step DRONE_REPO and DRONE_BUILD_NUMBER and labels the step's container
// with them. That container runs on the very engine the tests use, so to the plugin it is a live
// run of another build, except in a run that belongs to the same build (the own-build exception of
// run_labels). See DroneBuildAs.
var Enclosing = func() (e struct {
	Slug   string
	Number int
}) {
	n, err := strconv.Atoi(os.Getenv("DRONE_BUILD_NUMBER"))
	if slug := os.Getenv("DRONE_REPO"); err == nil && n > 0 && strings.Contains(slug, "/") {
		e.Slug, e.Number = slug, n
	}
	return e
}()

// DroneBuildAs is the repository slug and build number under which a test runs the plugin as a
// step of a Drone build whose other steps must not count as live runs: slug and number on a host,
// the enclosing build's inside a Drone step. Inside Drone, any other identity would make the
// plugin see the enclosing build's running test step and skip, rightly; as a step of that build
// it sees exactly what a cleanup step of the project's pipeline would. Builds a test starts to be
// seen as another build use another number.
func DroneBuildAs(slug string, number int) (string, int) {
	if Enclosing.Slug != "" {
		return Enclosing.Slug, Enclosing.Number
	}
	return slug, number
}
