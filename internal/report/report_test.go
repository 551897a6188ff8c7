package report

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
)

func sampleReport() *Report {
	before := gates.Filesystem{Path: "/var/lib/docker", Why: "the daemon's data root, visible here", TotalBytes: 1000, UsedBytes: 850, FreeBytes: 150}
	after := before
	after.UsedBytes, after.FreeBytes = 700, 300
	return &Report{
		Version: "1.2.3", Decision: DecisionPruned, Daemon: "unix:///var/run/docker.sock", Until: "24h", FailAbove: 90,
		Gates: []gates.Verdict{
			gates.DiskPressure(before, gates.DiskPolicy{ThresholdPercent: 80}),
			{Gate: gates.NoRunGate, Open: true, Reason: "no live run"},
			{Gate: gates.NoConvergeGate, Open: true, Reason: "converged"},
		},
		Phases: []PhaseReport{
			{Phase: PhaseContainers, Status: StatusRemoved, Count: 2, Bytes: 100, Objects: []Object{{ID: "c1"}, {ID: "c2"}}},
			{Phase: PhaseImages, Status: StatusRemoved, Count: 1, Bytes: 40, Layers: 3},
			{Phase: PhaseBuildCache, Status: StatusSkipped, Reason: "another prune is already running on the daemon"},
		},
		DiskBefore: &before, DiskAfter: &after, StartedAt: time.Unix(1764000000, 0), DurationSeconds: 1.5,
	}
}

func TestTextSummary(t *testing.T) {
	var b bytes.Buffer
	if err := WriteText(&b, sampleReport()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"drone-gated-prune 1.2.3", "decision: pruned", "disk_pressure  open", "85.0% used is at or above the 80% threshold",
		"containers   removed 2, 100B", "build_cache  skipped: another prune", "disk before: /var/lib/docker: 85.0% used", "disk after:  /var/lib/docker: 70.0% used", "duration: 1.500s"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, b.String())
		}
	}
}

// The card on /dev/stdout is one write: ESC]1338; + base64(JSON) + ESC]0m on its own line.
func TestCardOnStdout(t *testing.T) {
	var b bytes.Buffer
	if err := WriteCard(&b, "/dev/stdout", sampleReport()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if !strings.HasPrefix(out, "\x1b]1338;") || !strings.HasSuffix(out, "\x1b]0m\n") || strings.Count(out, "\x1b]1338;") != 1 {
		t.Fatalf("card framing wrong: %q", out)
	}
	payload := strings.TrimSuffix(strings.TrimPrefix(out, "\x1b]1338;"), "\x1b]0m\n")
	raw, err := base64.StdEncoding.DecodeString(payload)
	if err != nil {
		t.Fatal(err)
	}
	var card struct {
		Schema string         `json:"schema"`
		Data   map[string]any `json:"data"`
	}
	if err := json.Unmarshal(raw, &card); err != nil {
		t.Fatal(err)
	}
	// The keys docs/card.json binds, as plain JSON.
	if card.Schema != CardSchema || card.Data["decision"] != "pruned" || card.Data["objects"] != float64(3) || card.Data["disk_after"] != "70.0%" {
		t.Errorf("card %+v", card)
	}
}

func TestCardToFileIsPlainJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "card.json")
	if err := WriteCard(nil, path, sampleReport()); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	var card Card
	if err := json.Unmarshal(data, &card); err != nil || card.Schema != CardSchema {
		t.Fatalf("not plain JSON: %v %s", err, data)
	}
}

func TestOutputs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.env")
	if err := WriteOutputs(path, sampleReport()); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	for _, want := range []string{"DECISION=pruned\n", "BYTES_RECLAIMED=140\n", "OBJECTS_REMOVED=3\n", "CONTAINERS_REMOVED=2\n", "IMAGES_BYTES=40\n",
		"BUILD_CACHE_STATUS=skipped\n", "DISK_PERCENT_BEFORE=85.0\n", "DISK_PERCENT_AFTER=70.0\n"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("outputs lack %q:\n%s", want, data)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if k, _, ok := strings.Cut(line, "="); !ok || strings.ContainsAny(k, ".,/ ") {
			t.Errorf("line %q is not KEY=value with a plain key", line)
		}
	}
}

func TestMetricsParse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prune.prom")
	if err := writeMetrics(path, sampleReport()); err != nil {
		t.Fatal(err)
	}
	text, _ := Metrics(sampleReport())
	families := parseMetrics(t, path)
	get := func(name string, labels map[string]string) float64 {
		fam, ok := families[name]
		if !ok {
			t.Fatalf("missing %s", name)
		}
	next:
		for _, m := range fam.Metric {
			for _, lp := range m.Label {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue next
				}
			}
			return m.GetGauge().GetValue()
		}
		t.Fatalf("no %s with %v", name, labels)
		return 0
	}
	if get("drone_gated_prune_last_run_timestamp_seconds", nil) != 1764000000 ||
		get("drone_gated_prune_gate_open", map[string]string{"gate": "disk_pressure"}) != 1 ||
		get("drone_gated_prune_objects_removed", map[string]string{"phase": "containers"}) != 2 ||
		get("drone_gated_prune_bytes_reclaimed", map[string]string{"phase": "images"}) != 40 ||
		get("drone_gated_prune_disk_used_percent", map[string]string{"when": "after"}) != 70 ||
		get("drone_gated_prune_decision", map[string]string{"decision": "pruned"}) != 1 {
		t.Errorf("metric values wrong:\n%s", text)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

func parseMetrics(t *testing.T, path string) map[string]*dto.MetricFamily {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(f)
	if err != nil {
		data, _ := os.ReadFile(path)
		t.Fatalf("not Prometheus text format: %v\n%s", err, data)
	}
	return families
}

// A measured path may hold any byte: quotes, backslashes, tabs, newlines, invalid UTF-8. The file
// still parses, and the path label reads back (invalid bytes replaced).
func TestMetricsAnyPath(t *testing.T) {
	r := sampleReport()
	odd := "/mnt/a \"quoted\"\\dir\twith\ttabs\nand\xffbytes"
	r.DiskBefore.Path, r.DiskAfter.Path = odd, odd
	r.Decision = "skipped: no_run\n\"x\""
	path := filepath.Join(t.TempDir(), "odd.prom")
	if err := writeMetrics(path, r); err != nil {
		t.Fatal(err)
	}
	fam := parseMetrics(t, path)["drone_gated_prune_disk_used_percent"]
	if fam == nil || len(fam.Metric) != 2 {
		t.Fatalf("disk metric missing: %v", fam)
	}
	for _, lp := range fam.Metric[0].Label {
		if lp.GetName() == "path" && lp.GetValue() != strings.ToValidUTF8(odd, "\uFFFD") {
			t.Errorf("path label %q, want %q", lp.GetValue(), odd)
		}
	}
}

// A node's card, written by WriteCard into a log among other lines, reads back whole from its line,
// and no other line holds a card.
func TestCardLine(t *testing.T) {
	var log bytes.Buffer
	log.WriteString("drone-gated-prune 1.0.0\ndecision: pruned\n")
	rep := sampleReport()
	if err := WriteCard(&log, "/dev/stdout", rep); err != nil {
		t.Fatal(err)
	}
	log.WriteString("trailing line\n")
	var card CardData
	var err error
	found := 0
	for _, line := range strings.Split(log.String(), "\n") {
		c, ok, lerr := CardLine([]byte(line))
		if ok {
			card, err = c, lerr
			found++
		}
	}
	count, bytes := rep.Removed()
	if found != 1 || err != nil || card.Decision != rep.Decision || card.Objects != count || card.ReclaimedBytes != bytes || card.DiskBefore != "85.0%" {
		t.Fatalf("card %+v, %v; want the report's decision, %d objects, %d bytes", card, err, count, bytes)
	}
	if _, ok, err := CardLine([]byte("no card here")); ok || err != nil {
		t.Fatalf("a line without a card read as one (%v)", err)
	}
	// Every object of every phase comes back: a fleet run lists each node's from its card.
	if len(card.Phases) != 3 || len(card.Phases[0].Objects) != 2 || card.Phases[0].Objects[1].ID != "c2" {
		t.Errorf("card phases %+v; want the containers phase's c1 and c2", card.Phases)
	}
}

// A file that cannot be written after the run turns exit 0 into exit 1, and every output still
// written says so: the JSON summary (written before the failure, written again), $DRONE_OUTPUT,
// the text on stdout. The error names the setting and the path.
func TestEmitFailedWriteSaysExit1(t *testing.T) {
	dir := t.TempDir()
	summary, outputs := filepath.Join(dir, "summary.json"), filepath.Join(dir, "out.env")
	r := sampleReport()
	var stdout bytes.Buffer
	err := Emit(&stdout, Destinations{Summary: summary, Metrics: "/dev/full", Outputs: outputs}, r)
	if err == nil || !strings.Contains(err.Error(), "writing metrics_file /dev/full") {
		t.Fatalf("error %v; want one naming metrics_file /dev/full", err)
	}
	var written Report
	data, _ := os.ReadFile(summary)
	if err := json.Unmarshal(data, &written); err != nil || written.ExitCode != 1 || !strings.Contains(written.Error, "metrics_file /dev/full") {
		t.Errorf("summary_file: exit %d error %q (%v); want 1 naming metrics_file", written.ExitCode, written.Error, err)
	}
	if out, _ := os.ReadFile(outputs); !strings.Contains(string(out), "EXIT_CODE=1\n") || strings.Contains(string(out), "EXIT_CODE=0") {
		t.Errorf("$DRONE_OUTPUT says:\n%s", out)
	}
	if !strings.HasSuffix(stdout.String(), "; exit 1\n") || !strings.Contains(stdout.String(), "error: writing metrics_file /dev/full") {
		t.Errorf("stdout ends:\n%s", stdout.String()[max(0, stdout.Len()-300):])
	}
}
