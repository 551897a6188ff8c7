package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
	"github.com/drone-gated-prune/drone-gated-prune/plugin"
)

// Fleet (SPEC "Fleet"; docs/usage.md "Fleet: every node of a swarm") on a real 3-manager swarm that
// scripts/test-engine.sh starts (three Docker 29 engines, each in its own network and UTS
// namespace). It needs that script's engine built, so .ci/run runs it in a stage of its own with
// DGP_FLEET=1; elsewhere it is skipped.

type fleetSwarm struct {
	name  string
	nodes []*client.Client
	hosts []string
	env   map[string]string
}

func startSwarm(t *testing.T) *fleetSwarm {
	t.Helper()
	name := "fl" + fixtures.RandomHex(2)
	hosts, err := fixtures.StartSwarm("../scripts/test-engine.sh", name)
	harness.Must(t, err)
	t.Cleanup(func() {
		if err := fixtures.StopSwarm("../scripts/test-engine.sh", name); err != nil {
			t.Error(err)
		}
	})
	s := &fleetSwarm{name: name, hosts: hosts}
	for _, h := range hosts {
		c, err := client.NewClientWithOpts(client.WithHost(h), client.WithAPIVersionNegotiation())
		harness.Must(t, err)
		t.Cleanup(func() { _ = c.Close() })
		s.nodes = append(s.nodes, c)
	}
	harness.BuildPluginImage(t)
	harness.EnsureSleeperImage(t)
	for _, image := range []string{harness.PluginImageTag, harness.SleeperImage} {
		if out, err := exec.Command("bash", "../scripts/test-engine.sh", "load", name, image).CombinedOutput(); err != nil {
			t.Fatalf("loading %s into the nodes: %v\n%s", image, err, out)
		}
	}
	s.env = map[string]string{"DOCKER_HOST": s.hosts[0], "PLUGIN_FLEET": "true", "PLUGIN_FLEET_IMAGE": harness.PluginImageTag,
		"PLUGIN_FLEET_SOCKET": fixtures.EngineRunDir() + "/{{.Node.Hostname}}/docker.sock", "PLUGIN_TIMEOUT": "2m"}
	return s
}

// liveRunOn starts a running container on node i carrying a label of its own, removed at cleanup,
// and returns the label's key: a live run for run_labels.
func (s *fleetSwarm) liveRunOn(t *testing.T, i int) string {
	t.Helper()
	key := "dgp.run." + fixtures.RandomHex(3)
	c := s.nodes[i]
	created, err := c.ContainerCreate(harness.Ctx(), &container.Config{Image: harness.SleeperImage, Cmd: []string{"/sleeper"}, Labels: map[string]string{key: "1"}},
		&container.HostConfig{NetworkMode: "none"}, nil, nil, "")
	harness.Must(t, err)
	t.Cleanup(func() { _ = c.ContainerRemove(harness.Ctx(), created.ID, container.RemoveOptions{Force: true}) })
	harness.Must(t, c.ContainerStart(harness.Ctx(), created.ID, container.StartOptions{}))
	return key
}

// node i's name in the swarm.
func (s *fleetSwarm) node(i int) string { return s.name + string(rune('1'+i)) }

func (s *fleetSwarm) run(t *testing.T, extra map[string]string) result {
	t.Helper()
	env := map[string]string{}
	for k, v := range s.env {
		env[k] = v
	}
	for k, v := range extra {
		env[k] = v
	}
	return runPlugin(t, env)
}

// nodeObjects are one node's fixtures: an old dangling image and an old stopped container (the
// policy set), and a young dangling image and a tagged image that stay.
type nodeObjects struct {
	oldImage, oldContainer, youngImage, tagged string
}

// makeNodeObjects makes every node's fixtures and returns the cutoff that separates old from young.
func (s *fleetSwarm) makeNodeObjects(t *testing.T) ([]nodeObjects, time.Time) {
	t.Helper()
	objs := make([]nodeObjects, len(s.nodes))
	for i, c := range s.nodes {
		ids, err := fixtures.Load(harness.Ctx(), c, fixtures.Image{Created: time.Now().Add(-48 * time.Hour), Labels: map[string]string{"dgp.node": s.node(i), "dgp.id": fixtures.RandomHex(4)}})
		harness.Must(t, err)
		objs[i].oldImage = ids[0]
		created, err := c.ContainerCreate(harness.Ctx(), &container.Config{Image: harness.SleeperImage, Cmd: []string{"/sleeper"}},
			&container.HostConfig{NetworkMode: "none"}, nil, nil, "")
		harness.Must(t, err)
		objs[i].oldContainer = created.ID
		tag := "dgp-kept:" + fixtures.RandomHex(4)
		_, err = fixtures.Load(harness.Ctx(), c, fixtures.Image{Tag: tag, Created: time.Now().Add(-48 * time.Hour)})
		harness.Must(t, err)
		objs[i].tagged = tag
	}
	cutoff := harness.WaitPastCutoff()
	for i, c := range s.nodes {
		ids, err := fixtures.Load(harness.Ctx(), c, fixtures.Image{Created: time.Now().Add(time.Hour), Labels: map[string]string{"dgp.id": fixtures.RandomHex(4)}})
		harness.Must(t, err)
		objs[i].youngImage = ids[0]
	}
	return objs, cutoff
}

func present(t *testing.T, c *client.Client, kind, id string) bool {
	t.Helper()
	var err error
	if kind == "image" {
		_, err = c.ImageInspect(harness.Ctx(), id)
	} else {
		_, err = c.ContainerInspect(harness.Ctx(), id)
	}
	if err != nil && !cerrdefs.IsNotFound(err) {
		t.Fatalf("asking node for %s %s: %v", kind, id, err)
	}
	return err == nil
}

func rowsByNode(r result) map[string]report.NodeRow {
	out := map[string]report.NodeRow{}
	if r.report.Fleet != nil {
		for _, n := range r.report.Fleet.Nodes {
			out[n.Node] = n
		}
	}
	return out
}

func TestFleet(t *testing.T) {
	if os.Getenv("DGP_FLEET") != "1" {
		t.Skip("needs a 3-node swarm of scripts/test-engine.sh engines: set DGP_FLEET=1 (.ci/run's fleet stage does)")
	}
	s := startSwarm(t)

	t.Run("dry run lists each node's plan, then pressure prunes each node", func(t *testing.T) {
		objs, cutoff := s.makeNodeObjects(t)
		until := cutoff.UTC().Format(time.RFC3339)
		cardPath := filepath.Join(t.TempDir(), "card.json")
		plan := s.run(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": until, "PLUGIN_DRY_RUN": "true", "DRONE_CARD_PATH": cardPath})
		rows := rowsByNode(plan)
		var card report.Card
		data, err := os.ReadFile(cardPath)
		harness.Must(t, err)
		harness.Must(t, json.Unmarshal(data, &card))
		cardRows := map[string]report.NodeRow{}
		for _, n := range card.Data.Nodes {
			cardRows[n.Node] = n
		}
		for i := range s.nodes {
			n := rows[s.node(i)]
			if n.Decision != report.DecisionDryRun || n.Objects != 2 || n.ExitCode != 0 {
				t.Errorf("dry run, node %s: %+v; want a dry run listing 2 objects", s.node(i), n)
			}
			// The plan names the old dangling image and the old stopped container made on this node,
			// in the JSON summary, the card and the text under the node's name.
			for _, want := range []struct{ phase, id string }{{report.PhaseImages, objs[i].oldImage}, {report.PhaseContainers, objs[i].oldContainer}} {
				if !lists(n, want.phase, report.StatusWouldRemove, want.id) {
					t.Errorf("dry run, node %s: the JSON summary's %s plan does not name %s: %+v", s.node(i), want.phase, want.id, n.Phases)
				}
				if !lists(cardRows[s.node(i)], want.phase, report.StatusWouldRemove, want.id) {
					t.Errorf("dry run, node %s: the card's %s plan does not name %s", s.node(i), want.phase, want.id)
				}
				if !strings.Contains(nodeSection(plan.stdout, s.node(i)), shortID(want.id)) {
					t.Errorf("dry run, node %s: the text does not name %s under the node:\n%s", s.node(i), shortID(want.id), plan.stdout)
				}
			}
			if !present(t, s.nodes[i], "image", objs[i].oldImage) || !present(t, s.nodes[i], "container", objs[i].oldContainer) {
				t.Errorf("the dry run removed something on %s", s.node(i))
			}
		}
		if plan.code != 0 || len(rows) != 3 || !strings.Contains(plan.stdout, "fleet: job") {
			t.Fatalf("dry run: exit %d, %d rows", plan.code, len(rows))
		}

		r := s.run(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": until})
		rows = rowsByNode(r)
		for i, c := range s.nodes {
			n := rows[s.node(i)]
			if n.Decision != report.DecisionPruned || n.Objects != 2 || n.ExitCode != 0 {
				t.Errorf("node %s: %+v; want pruned, 2 objects", s.node(i), n)
			}
			if !lists(n, report.PhaseImages, report.StatusRemoved, objs[i].oldImage) || !strings.Contains(nodeSection(r.stdout, s.node(i)), shortID(objs[i].oldImage)) {
				t.Errorf("node %s: the summary does not name the old dangling image %s as removed: %+v", s.node(i), objs[i].oldImage, n.Phases)
			}
			if present(t, c, "image", objs[i].oldImage) || present(t, c, "container", objs[i].oldContainer) {
				t.Errorf("node %s: the old dangling image or stopped container is still there", s.node(i))
			}
			if !present(t, c, "image", objs[i].youngImage) || !present(t, c, "image", objs[i].tagged) {
				t.Errorf("node %s: the young dangling image or the tagged image was removed", s.node(i))
			}
		}
		if r.code != 0 || r.report.Decision != report.DecisionFleet {
			t.Fatalf("exit %d decision %q", r.code, r.report.Decision)
		}
		if _, _, err := s.nodes[0].ServiceInspectWithRaw(harness.Ctx(), plugin.FleetService, swarm.ServiceInspectOptions{}); !cerrdefs.IsNotFound(err) {
			t.Errorf("the fleet job was not removed: %v", err)
		}
	})

	t.Run("a fleet image no node has fails the step promptly, naming each node", func(t *testing.T) {
		image := "dgp-missing-" + fixtures.RandomHex(3) + ":1"
		r := s.run(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_FLEET_IMAGE": image, "PLUGIN_TIMEOUT": "3m"})
		rows := rowsByNode(r)
		if r.code != outcome.ExitRuntime || len(rows) != 3 || strings.Contains(r.stderr, "timeout 3m0s reached") {
			t.Fatalf("exit %d after %s, %d rows; want exit 1 before the 3m timeout, a row per node\n%s", r.code, r.elapsed, len(rows), r.stderr)
		}
		for _, want := range []string{image, "load the image on every node", "registry every node can pull from"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("the error lacks %q: %s", want, r.stderr)
			}
		}
		for i := range s.nodes {
			n := rows[s.node(i)]
			// The task's own status message: here, the node's failed pull.
			for _, want := range []string{"could not", image, "task status: "} {
				if !strings.Contains(n.Problem, want) {
					t.Errorf("node %s: %q lacks %q", s.node(i), n.Problem, want)
				}
			}
			if n.ExitCode != outcome.ExitRuntime || !strings.Contains(r.stderr, s.node(i)) {
				t.Errorf("node %s: exit %d, or not named in the error %q", s.node(i), n.ExitCode, r.stderr)
			}
		}
		t.Logf("a fleet image no node has: exit %d after %s", r.code, r.elapsed.Round(time.Millisecond))
	})

	t.Run("a run label on node 2 holds node 2 only", func(t *testing.T) {
		key := s.liveRunOn(t, 1)
		r := s.run(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_RUN_LABELS": key})
		rows := rowsByNode(r)
		if r.code != 0 || rows[s.node(1)].Decision != "skipped: no_run" || !phasesRan(rows[s.node(0)]) || !phasesRan(rows[s.node(2)]) {
			t.Fatalf("exit %d; rows %+v; want node 2 skipped by no_run, the others' phases run", r.code, rows)
		}
	})

	t.Run("right after a timeout each node says what became of its task", func(t *testing.T) {
		// Node 2 holds a live run and waits for it to end for 7.95 s of the 8 s timeout the nodes
		// share with the manager. Its run started after the manager made the job (at least tens of
		// milliseconds later), so its task is still running when the manager's run stops, while
		// nodes 1 and 3 have finished theirs.
		key := s.liveRunOn(t, 1)
		r := s.run(t, map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_RUN_LABELS": key, "PLUGIN_WAIT": "7950ms", "PLUGIN_TIMEOUT": "8s"})
		rows := rowsByNode(r)
		if r.code != outcome.ExitRuntime || !strings.Contains(r.stderr, "timeout 8s reached") || len(rows) != 3 {
			t.Fatalf("exit %d, %d rows; want 1 naming the timeout, a row per node\n%s", r.code, len(rows), r.stderr)
		}
		for _, i := range []int{0, 2} {
			if n := rows[s.node(i)]; n.Problem != "" || !phasesRan(n) {
				t.Errorf("node %s finished its task before the timeout: %+v; want its card", s.node(i), n)
			}
		}
		if n := rows[s.node(1)]; !strings.HasPrefix(n.Problem, "its task was still running when the run stopped (timeout 8s reached)") || n.ExitCode != outcome.ExitRuntime {
			t.Errorf("node %s: %+v; want its task still running at the timeout", s.node(1), n)
		}
	})

	t.Run("a converging service holds the whole fleet", func(t *testing.T) {
		replicas := uint64(1)
		resp, err := s.nodes[0].ServiceCreate(harness.Ctx(), swarm.ServiceSpec{
			Annotations: swarm.Annotations{Name: "dgp-pending-" + fixtures.RandomHex(3)},
			TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: harness.SleeperImage, Command: []string{"/sleeper"}},
				Placement: &swarm.Placement{Constraints: []string{"node.labels.dgp-nowhere==true"}}},
			Mode: swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &replicas}},
		}, swarm.ServiceCreateOptions{})
		harness.Must(t, err)
		t.Cleanup(func() { _ = s.nodes[0].ServiceRemove(harness.Ctx(), resp.ID) })
		r := s.run(t, map[string]string{"PLUGIN_FORCE": "true"})
		if r.code != 0 || r.report.Decision != "skipped: no_converge" || r.report.Fleet != nil || !strings.Contains(r.stdout, "0/1 tasks running") {
			t.Fatalf("exit %d decision %q fleet %+v; want the whole fleet skipped by the pending service", r.code, r.report.Decision, r.report.Fleet)
		}
	})

	t.Run("a second fleet run is refused while one is in flight", func(t *testing.T) {
		// A job of the fleet's name, as a run in flight leaves it (this one never ends by itself).
		resp, err := s.nodes[0].ServiceCreate(harness.Ctx(), swarm.ServiceSpec{
			Annotations:  swarm.Annotations{Name: plugin.FleetService},
			TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: harness.SleeperImage, Command: []string{"/sleeper"}}},
			Mode:         swarm.ServiceMode{GlobalJob: &swarm.GlobalJob{}},
		}, swarm.ServiceCreateOptions{})
		harness.Must(t, err)
		t.Cleanup(func() { _ = s.nodes[0].ServiceRemove(harness.Ctx(), resp.ID) })
		r := s.run(t, map[string]string{"PLUGIN_FORCE": "true"})
		if r.code != outcome.ExitRuntime || !strings.Contains(r.stderr, "another fleet run is in flight") {
			t.Fatalf("exit %d; want 1 and the in-flight run named", r.code)
		}
		if _, _, err := s.nodes[0].ServiceInspectWithRaw(harness.Ctx(), resp.ID, swarm.ServiceInspectOptions{}); err != nil {
			t.Errorf("the refused run touched the job in flight: %v", err)
		}
	})

	t.Run("outside a swarm manager fleet is exit 2", func(t *testing.T) {
		name := "flsolo" + fixtures.RandomHex(2)
		out, err := exec.Command("bash", "../scripts/test-engine.sh", "start", name).Output()
		if err != nil {
			t.Fatalf("starting a lone engine: %v\n%s", err, out)
		}
		t.Cleanup(func() { _ = exec.Command("bash", "../scripts/test-engine.sh", "stop", name).Run() })
		r := s.run(t, map[string]string{"DOCKER_HOST": strings.TrimPrefix(strings.TrimSpace(string(out)), "DOCKER_HOST="), "PLUGIN_FORCE": "true"})
		if r.code != outcome.ExitInvalid || !strings.Contains(r.stderr, "fleet") || !strings.Contains(r.stderr, "swarm manager") {
			t.Fatalf("exit %d; want 2 naming fleet and the swarm manager", r.code)
		}
	})

	t.Run("a node whose link is down is named and fails the run", func(t *testing.T) {
		if out, err := exec.Command("bash", "../scripts/test-engine.sh", "link", s.name, "3", "down").CombinedOutput(); err != nil {
			t.Fatalf("cutting node 3: %v\n%s", err, out)
		}
		t.Cleanup(func() { _ = exec.Command("bash", "../scripts/test-engine.sh", "link", s.name, "3", "up").Run() })
		if !harness.WaitFor(t, 60*time.Second, "node 3 shows Down on node 1", func() (bool, error) {
			nodes, err := s.nodes[0].NodeList(harness.Ctx(), swarm.NodeListOptions{})
			for _, n := range nodes {
				if n.Description.Hostname == s.node(2) {
					return n.Status.State == swarm.NodeStateDown, nil
				}
			}
			return false, err
		}) {
			t.FailNow()
		}
		r := s.run(t, map[string]string{"PLUGIN_FORCE": "true"})
		rows := rowsByNode(r)
		down := rows[s.node(2)]
		if r.code != outcome.ExitRuntime || !strings.Contains(down.Problem, "down") || down.ExitCode != outcome.ExitRuntime ||
			!phasesRan(rows[s.node(0)]) || !strings.Contains(r.stderr, s.node(2)) {
			t.Fatalf("exit %d; rows %+v; want exit 1 naming %s as down, the others pruned", r.code, rows, s.node(2))
		}
	})
}

// lists reports whether a node's row names the object id in the given phase with the given status
// (image IDs compared without their sha256: prefix).
func lists(n report.NodeRow, phase, status, id string) bool {
	for _, p := range n.Phases {
		if p.Phase != phase || p.Status != status {
			continue
		}
		for _, o := range p.Objects {
			if strings.TrimPrefix(o.ID, "sha256:") == strings.TrimPrefix(id, "sha256:") {
				return true
			}
		}
	}
	return false
}

// nodeSection is the part of a fleet summary's text listed under the node's name.
func nodeSection(text, node string) string {
	_, rest, ok := strings.Cut(text, "\n  "+node+":\n")
	if !ok {
		return ""
	}
	var lines []string
	for _, line := range strings.Split(rest, "\n") {
		if !strings.HasPrefix(line, "    ") {
			break
		}
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n")
}

func shortID(id string) string { return strings.TrimPrefix(id, "sha256:")[:12] }

// phasesRan reports whether a node's run got through its gates and ran its phases, whether they
// found anything to remove or not.
func phasesRan(n report.NodeRow) bool {
	return n.ExitCode == 0 && (n.Decision == report.DecisionPruned || n.Decision == report.DecisionNothingToPrune)
}
