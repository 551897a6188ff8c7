package e2e

import (
	"crypto/rand"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/client"

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// On the containerd image store the image bytes live under containerd's root, which need not share
// a filesystem with the data root (SPEC "The run" 2; docs/usage.md "Which daemon and which disk").
// An engine of its own, with containerd's root on a 160 MB tmpfs filled by a real image, is above
// the threshold there while the data root is not: the disk gate must open on it and the summary
// must list both filesystems.
func TestContainerdRootOnItsOwnFilesystem(t *testing.T) {
	if !harness.ContainerdStore {
		t.Skip("needs the Docker 29 engine that scripts/test-engine.sh builds; runs in the containerd-store pass of .ci/run")
	}
	name := "croot" + fixtures.RandomHex(2)
	start := exec.Command("bash", "../scripts/test-engine.sh", "start", name, "--containerd-tmpfs=160m")
	out, err := start.Output()
	if err != nil {
		t.Fatalf("starting an engine with containerd's root on a tmpfs: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("bash", "../scripts/test-engine.sh", "stop", name).CombinedOutput(); err != nil {
			t.Errorf("stopping engine %s: %v\n%s", name, err, out)
		}
	})
	host := strings.TrimPrefix(strings.TrimSpace(string(out)), "DOCKER_HOST=")
	engine, err := client.NewClientWithOpts(client.WithHost(host), client.WithAPIVersionNegotiation())
	harness.Must(t, err)
	defer engine.Close()
	payload := make([]byte, 56<<20)
	_, _ = rand.Read(payload)
	_, err = fixtures.Load(harness.Ctx(), engine, fixtures.Image{Tag: "dgp-fill:1", Created: time.Now(), Files: map[string][]byte{"payload": payload}})
	harness.Must(t, err)

	r := runPlugin(t, map[string]string{"DOCKER_HOST": host, "PLUGIN_THRESHOLD": "50", "PLUGIN_DRY_RUN": "true", "PLUGIN_FAIL_ABOVE": "100"})
	disk, _ := r.report.Gate("disk_pressure")
	if r.code != 0 || !disk.Open || len(r.report.Filesystems) < 2 {
		t.Fatalf("exit %d; disk gate open %v (%s); filesystems %+v: want the gate opened by containerd's root and both filesystems listed", r.code, disk.Open, disk.Reason, r.report.Filesystems)
	}
	worst := r.report.Filesystems[0]
	if !strings.Contains(worst.Path, "/containerd/daemon/") || worst.UsedPercent() < 50 || r.report.DiskBefore.Path != worst.Path {
		t.Errorf("the gate decided on %s (%.1f%%), want containerd's root above 50%%", r.report.DiskBefore.Path, r.report.DiskBefore.UsedPercent())
	}
	if root, _ := os.Stat(r.report.Filesystems[1].Path); root == nil || r.report.Filesystems[1].UsedPercent() >= 50 {
		t.Errorf("the second filesystem %+v should be the data root, below 50%%", r.report.Filesystems[1])
	}
	if !strings.Contains(r.stdout, "containerd image store") || !strings.Contains(r.stdout, "measured: "+worst.Path) {
		t.Errorf("the summary does not name the store and containerd's root")
	}
	if _, ok := r.report.Phase(report.PhaseImages); !ok {
		t.Errorf("the dry run did not reach the image phase")
	}
}
