package e2e

import (
	"bufio"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drone-gated-prune/drone-gated-prune/internal/access"
	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// accessMode is one use of the plugin whose Engine API calls docs/security.md lists: setup makes
// what the mode needs on the engine and returns the plugin's settings, and the run must end with
// decision (a prefix of it).
type accessMode struct {
	name     string
	setup    func(t *testing.T) map[string]string
	decision string
}

var accessModes = []accessMode{
	{"daily no-op", func(*testing.T) map[string]string {
		return map[string]string{"PLUGIN_THRESHOLD": "100"}
	}, "kept cache"},
	{"dry run", func(t *testing.T) map[string]string {
		harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
		harness.MakeContainer(t, harness.Container{})
		outOfCutoffSecond()
		return map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_DRY_RUN": "true", "PLUGIN_UNTIL": "1s"}
	}, report.DecisionDryRun},
	{"gated prune", func(t *testing.T) map[string]string {
		harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
		harness.MakeContainer(t, harness.Container{})
		buildCache(t)
		outOfCutoffSecond()
		return map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": "1s"}
	}, report.DecisionPruned},
	{"wait", func(t *testing.T) map[string]string {
		live := harness.MakeContainer(t, harness.Container{Start: true, Name: "ci-run-88-app"})
		go func() {
			time.Sleep(2 * time.Second)
			_ = harness.API.ContainerStop(harness.Ctx(), live, containerStopOptions())
		}()
		return map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_DRY_RUN": "true", "PLUGIN_STACK_PATTERN": "^ci-run-", "PLUGIN_WAIT": "30s"}
	}, report.DecisionDryRun},
	{"budget phase", func(t *testing.T) map[string]string {
		buildCache(t)
		return map[string]string{"PLUGIN_FORCE": "true", "PLUGIN_UNTIL": "1000h", "PLUGIN_BUILD_CACHE_BUDGET": "1KB"}
	}, ""},
}

// outOfCutoffSecond waits until what was just made is older than until 1s by more than a
// second: a container or image listed in the cutoff's own second makes the plugin ask its exact
// time (GET /containers/{id}/json, GET /images/{name}/json), which the recorded sets would then
// hold only on some runs.
func outOfCutoffSecond() { time.Sleep(2500 * time.Millisecond) }

// engineColumn is the engine the calls were recorded on, as docs/security.md heads its column.
func engineColumn(t *testing.T) string {
	v, err := harness.API.ServerVersion(harness.Ctx())
	harness.Must(t, err)
	major, _, _ := strings.Cut(v.Version, ".")
	return "Docker " + major
}

// recordingProxy passes to the engine exactly the calls access.Calls holds, records them, and
// answers any other request 403 as a socket proxy would, recording it as a violation.
type recordingProxy struct {
	host      string
	mu        sync.Mutex
	calls     map[string]bool
	forbidden []string
	// followedLogs counts the task logs asked for as a stream (GET /tasks/{id}/logs?follow=1).
	followedLogs int
}

func startRecordingProxy(t *testing.T) *recordingProxy {
	t.Helper()
	return startRecordingProxyTo(t, filepath.Join(t.TempDir(), "rec.sock"), harness.EngineSocket())
}

// startRecordingProxyTo is a recording proxy listening on the unix socket sock, in front of the
// engine socket engine.
func startRecordingProxyTo(t *testing.T, sock, engine string) *recordingProxy {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	harness.Must(t, err)
	p := &recordingProxy{host: "unix://" + sock, calls: map[string]bool{}}
	rp := engineReverseProxy(engine)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := access.Find(r.Method, r.URL.Path)
		p.mu.Lock()
		if ok {
			p.calls[c.String()] = true
			if c.Path == "/tasks/{id}/logs" && r.URL.Query().Get("follow") == "1" {
				p.followedLogs++
			}
		} else {
			p.forbidden = append(p.forbidden, access.Route(r.Method, r.URL.Path))
		}
		p.mu.Unlock()
		if !ok {
			http.Error(w, "Request forbidden by administrative rules.", http.StatusForbidden)
			return
		}
		rp.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return p
}

// take returns the calls recorded since the last take and any refused request, and clears both.
func (p *recordingProxy) take() (calls, forbidden []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.calls {
		calls = append(calls, c)
	}
	slices.Sort(calls)
	forbidden = p.forbidden
	p.calls, p.forbidden = map[string]bool{}, nil
	return calls, forbidden
}

// Every mode runs behind a proxy that passes only access.Calls: no mode sends anything else, and
// each mode's calls on this engine are the ones docs/security.md lists for it
// (DGP_UPDATE_SECURITY_DOC=1 writes this engine's column from the recording instead).
func TestAPIAccessRecorded(t *testing.T) {
	if harness.Podman {
		t.Skip("docs/security.md records the Docker engines")
	}
	p := startRecordingProxy(t)
	column := engineColumn(t)
	recorded := map[string][]string{}
	for _, m := range accessModes {
		env := m.setup(t)
		env["DOCKER_HOST"] = p.host
		p.take()
		r := runPlugin(t, env)
		calls, forbidden := p.take()
		if len(forbidden) > 0 {
			t.Errorf("%s: the plugin sent calls outside internal/access.Calls: %q", m.name, forbidden)
		}
		if r.code != 0 || !strings.HasPrefix(r.report.Decision, m.decision) {
			t.Errorf("%s: exit %d decision %q; want 0, %q", m.name, r.code, r.report.Decision, m.decision)
		}
		recorded[m.name] = calls
		t.Logf("%s on %s: %q", m.name, column, calls)
	}
	doc := filepath.Join(harness.Root, "docs", "security.md")
	checkCallTable(t, doc, column, recorded)
}

// checkCallTable compares the calls recorded per mode on the engine with docs/security.md's
// column for it, or writes the column's rows for those modes under DGP_UPDATE_SECURITY_DOC=1.
func checkCallTable(t *testing.T, doc, column string, recorded map[string][]string) {
	t.Helper()
	if os.Getenv("DGP_UPDATE_SECURITY_DOC") == "1" {
		harness.Must(t, writeCallTable(doc, column, recorded))
		return
	}
	listed, err := readCallTable(doc, column)
	harness.Must(t, err)
	for mode, calls := range recorded {
		if !slices.Equal(listed[mode], calls) {
			t.Errorf("%s on %s: docs/security.md lists %q, the run sent %q (DGP_UPDATE_SECURITY_DOC=1 rewrites the column)", mode, column, listed[mode], calls)
		}
	}
}

// fleetModes are the fleet's rows in docs/security.md, recorded by TestFleetAPIAccess.
var fleetModes = []string{"fleet on a manager", "a fleet node's task"}

// A forced fleet run on the 3-manager lab swarm (an old dangling image and an old stopped
// container on each node), its manager's calls and every node's task's
// calls each through a recording proxy (the node tasks get theirs as fleet_socket): nothing
// outside internal/access.Calls, and the calls docs/security.md lists for the two fleet modes.
func TestFleetAPIAccess(t *testing.T) {
	if os.Getenv("DGP_FLEET") != "1" {
		t.Skip("needs a 3-node swarm of scripts/test-engine.sh engines: DGP_FLEET=1 (.ci/run's fleet stage)")
	}
	s := startSwarm(t)
	manager := startRecordingProxyTo(t, filepath.Join(t.TempDir(), "manager.sock"), strings.TrimPrefix(s.hosts[0], "unix://"))
	var nodes []*recordingProxy
	for i := range s.nodes {
		sock := filepath.Join(fixtures.EngineRunDir(), s.node(i), "rec.sock")
		nodes = append(nodes, startRecordingProxyTo(t, sock, strings.TrimPrefix(s.hosts[i], "unix://")))
		t.Cleanup(func() { _ = os.Remove(sock) })
	}
	_, cutoff := s.makeNodeObjects(t)
	r := s.run(t, map[string]string{"DOCKER_HOST": manager.host, "PLUGIN_FORCE": "true", "PLUGIN_UNTIL": cutoff.UTC().Format(time.RFC3339),
		"PLUGIN_FLEET_SOCKET": fixtures.EngineRunDir() + "/{{.Node.Hostname}}/rec.sock"})
	if r.code != 0 || r.report.Decision != report.DecisionFleet {
		t.Fatalf("fleet run through the recording proxies: exit %d decision %q error %q", r.code, r.report.Decision, r.report.Error)
	}
	// Each node's card came from its task's log, followed from the first look (the whole log is
	// read only when a followed one gave none).
	manager.mu.Lock()
	followed := manager.followedLogs
	manager.mu.Unlock()
	if followed < len(s.nodes) {
		t.Errorf("the manager followed %d task logs, want one per node (%d)", followed, len(s.nodes))
	}
	recorded := map[string][]string{}
	calls, forbidden := manager.take()
	recorded[fleetModes[0]] = calls
	if len(forbidden) > 0 {
		t.Errorf("the fleet's manager sent calls outside internal/access.Calls: %q", forbidden)
	}
	union := map[string]bool{}
	for i, n := range nodes {
		calls, forbidden := n.take()
		if len(forbidden) > 0 {
			t.Errorf("node %s's task sent calls outside internal/access.Calls: %q", s.node(i), forbidden)
		}
		if len(calls) == 0 {
			t.Errorf("node %s's task sent nothing through its fleet_socket", s.node(i))
		}
		for _, c := range calls {
			union[c] = true
		}
	}
	recorded[fleetModes[1]] = slices.Sorted(maps.Keys(union))
	t.Logf("on the Docker 29 swarm: %q", recorded)
	checkCallTable(t, filepath.Join(harness.Root, "docs", "security.md"), "Docker 29", recorded)
}

// The call table in docs/security.md sits between these lines: | mode | call | allow | Docker 20 | Docker 29 |.
const (
	callTableBegin = "<!-- calls: written by TestAPIAccessRecorded (DGP_UPDATE_SECURITY_DOC=1); do not edit by hand -->"
	callTableEnd   = "<!-- calls end -->"
)

var callColumns = []string{"Docker 20", "Docker 29"}

// readCallTable reads which calls the table marks for the engine column, per mode.
func readCallTable(doc, column string) (map[string][]string, error) {
	rows, err := callRows(doc)
	if err != nil {
		return nil, err
	}
	col := slices.Index(callColumns, column)
	if col < 0 {
		return nil, fmt.Errorf("docs/security.md has no column %q", column)
	}
	out := map[string][]string{}
	for _, r := range rows {
		if r[3+col] == "yes" {
			out[r[0]] = append(out[r[0]], strings.Trim(r[1], "`"))
		}
	}
	for k := range out {
		slices.Sort(out[k])
	}
	return out, nil
}

// callRows is the table's rows, each as its cells.
func callRows(doc string) ([][]string, error) {
	data, err := os.ReadFile(doc)
	if err != nil {
		return nil, err
	}
	_, rest, ok := strings.Cut(string(data), callTableBegin)
	body, _, ok2 := strings.Cut(rest, callTableEnd)
	if !ok || !ok2 {
		return nil, fmt.Errorf("%s has no call table", doc)
	}
	var rows [][]string
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "| ") || strings.HasPrefix(line, "| mode ") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if len(cells) == 3+len(callColumns) {
			rows = append(rows, cells)
		}
	}
	return rows, nil
}

// writeCallTable rewrites the engine column from the recording, keeping the other columns.
func writeCallTable(doc, column string, recorded map[string][]string) error {
	rows, err := callRows(doc)
	if err != nil {
		return err
	}
	col := 3 + slices.Index(callColumns, column)
	marks := map[[2]string][]string{}
	for _, r := range rows {
		marks[[2]string{r[0], strings.Trim(r[1], "`")}] = r[3:]
	}
	for k, r := range marks {
		if _, ok := recorded[k[0]]; ok {
			r[col-3] = "—"
		}
	}
	for mode, calls := range recorded {
		for _, c := range calls {
			k := [2]string{mode, c}
			if marks[k] == nil {
				marks[k] = slices.Repeat([]string{"—"}, len(callColumns))
			}
			marks[k][col-3] = "yes"
		}
	}
	var b strings.Builder
	b.WriteString(callTableBegin + "\n\n| mode | call | the proxy allows | " + strings.Join(callColumns, " | ") + " |\n|---|---|---|" + strings.Repeat("---|", len(callColumns)) + "\n")
	var modes []string
	for _, m := range accessModes {
		modes = append(modes, m.name)
	}
	for _, mode := range append(modes, fleetModes...) {
		for _, c := range access.Calls {
			k := [2]string{mode, c.String()}
			if cols := marks[k]; cols != nil && slices.Contains(cols, "yes") {
				fmt.Fprintf(&b, "| %s | `%s` | %s | %s |\n", mode, c, c.Allow(), strings.Join(cols, " | "))
			}
		}
	}
	b.WriteString("\n" + callTableEnd)
	data, err := os.ReadFile(doc)
	if err != nil {
		return err
	}
	head, rest, _ := strings.Cut(string(data), callTableBegin)
	_, tail, _ := strings.Cut(rest, callTableEnd)
	return os.WriteFile(doc, []byte(head+b.String()+tail), 0o644)
}

// haproxy starts Debian's HAProxy on a unix socket in front of the engine, configured from calls
// alone, and stops it by PID at cleanup; it returns the DOCKER_HOST for the plugin.
func haproxy(t *testing.T, calls []access.Call) string {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("DGP_REQUIRE_ENGINE") == "1" {
			t.Fatal("haproxy is not installed (.ci/run installs Debian's haproxy package)")
		}
		t.Skip("haproxy is not installed: apt-get install haproxy")
	}
	dir := t.TempDir()
	sock, cfg := filepath.Join(dir, "proxy.sock"), filepath.Join(dir, "haproxy.cfg")
	harness.Must(t, os.WriteFile(cfg, []byte(access.HAProxyConfig(sock, harness.EngineSocket(), calls)), 0o644))
	cmd := exec.Command(bin, "-f", cfg, "-db")
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	harness.Must(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	if !harness.WaitFor(t, 10*time.Second, "haproxy listens", func() (bool, error) {
		_, err := os.Stat(sock)
		return err == nil, nil
	}) {
		t.Fatalf("haproxy did not start:\n%s", out)
	}
	return "unix://" + sock
}

// Every mode passes behind a real HAProxy configured from internal/access.Calls only; with one
// call taken out of its configuration the run stops at that call, exit 1, naming the call and the
// section to allow, and removes nothing.
func TestAPIAccessBehindHAProxy(t *testing.T) {
	if harness.Podman {
		t.Skip("the socket-proxy test runs on the Docker engines")
	}
	host := haproxy(t, access.Calls)
	for _, m := range accessModes {
		env := m.setup(t)
		env["DOCKER_HOST"] = host
		r := runPlugin(t, env)
		if r.code != 0 || !strings.HasPrefix(r.report.Decision, m.decision) {
			t.Errorf("%s behind HAProxy: exit %d decision %q error %q; want 0, %q", m.name, r.code, r.report.Decision, r.report.Error, m.decision)
		}
	}

	without := slices.DeleteFunc(slices.Clone(access.Calls), func(c access.Call) bool { return c.String() == "GET /containers/json" })
	host = haproxy(t, without)
	old := harness.DanglingImage(t, time.Now().Add(-48*time.Hour), nil)
	r := runPlugin(t, map[string]string{"DOCKER_HOST": host, "PLUGIN_FORCE": "true"})
	want := "the socket proxy refused GET /containers/json: allow CONTAINERS"
	if r.code != 1 || !strings.Contains(r.report.Error, want) || !strings.Contains(r.stdout+r.stderr, want) {
		t.Errorf("without GET /containers/json: exit %d error %q; want 1 and %q", r.code, r.report.Error, want)
	}
	if !harness.Exists(t, "image", old) {
		t.Errorf("an image was removed after the proxy refused a call")
	}
}
