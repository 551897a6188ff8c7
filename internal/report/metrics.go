package report

import (
	"bytes"
	"maps"
	"slices"
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/proto"
)

// gauge is one metric family of gauges.
type gauge struct {
	name, help string
	samples    []sample
}

type sample struct {
	labels map[string]string
	value  float64
}

// metricFamilies lays the report out as gauges for node_exporter's textfile collector.
func metricFamilies(r *Report) []gauge {
	one := func(v float64) []sample { return []sample{{value: v}} }
	var gateOpen, objects, bytes, disk []sample
	for _, v := range r.Gates {
		gateOpen = append(gateOpen, sample{map[string]string{"gate": v.Gate}, boolValue(v.Open)})
	}
	for _, p := range r.Phases {
		labels := map[string]string{"phase": p.Phase, "status": p.Status}
		objects = append(objects, sample{labels, float64(p.Count)})
		bytes = append(bytes, sample{labels, float64(p.Bytes)})
	}
	if r.DiskBefore != nil {
		disk = append(disk, sample{map[string]string{"when": "before", "path": r.DiskBefore.Path}, r.DiskBefore.UsedPercent()})
	}
	if r.DiskAfter != nil {
		disk = append(disk, sample{map[string]string{"when": "after", "path": r.DiskAfter.Path}, r.DiskAfter.UsedPercent()})
	}
	var nodeExit, nodeObjects, nodeBytes []sample
	if r.Fleet != nil {
		for _, n := range r.Fleet.Nodes {
			labels := map[string]string{"node": n.Node}
			nodeExit = append(nodeExit, sample{labels, float64(n.ExitCode)})
			nodeObjects = append(nodeObjects, sample{labels, float64(n.Objects)})
			nodeBytes = append(nodeBytes, sample{labels, float64(n.Bytes)})
		}
	}
	return []gauge{
		{"drone_gated_prune_node_exit_code", "A fleet run's exit code on each node.", nodeExit},
		{"drone_gated_prune_node_objects_removed", "Objects a fleet run removed on each node.", nodeObjects},
		{"drone_gated_prune_node_bytes_reclaimed", "Bytes a fleet run reclaimed on each node, as its engine reported.", nodeBytes},
		{"drone_gated_prune_last_run_timestamp_seconds", "Unix time the last run started.", one(float64(r.StartedAt.Unix()))},
		{"drone_gated_prune_last_run_duration_seconds", "How long the last run took.", one(r.DurationSeconds)},
		{"drone_gated_prune_last_run_exit_code", "Exit code of the last run.", one(float64(r.ExitCode))},
		{"drone_gated_prune_decision", "1 for the decision the last run took.",
			[]sample{{map[string]string{"decision": r.Decision, "dry_run": strconv.FormatBool(r.DryRun)}, 1}}},
		{"drone_gated_prune_gate_open", "1 when the gate was open at the end of the last run, 0 when closed.", gateOpen},
		{"drone_gated_prune_objects_removed", "Objects the last run removed (or would remove, in a dry run) per phase.", objects},
		{"drone_gated_prune_bytes_reclaimed", "Bytes the last run reclaimed per phase, as the engine reported.", bytes},
		{"drone_gated_prune_disk_used_percent", "Percent used of the measured filesystem.", disk},
		{"drone_gated_prune_freed_bytes", "How much free space grew on the measured filesystems during the last run.", one(float64(r.FreedBytes))},
	}
}

// Metrics renders the report in Prometheus text format with the Prometheus library's own encoder,
// which escapes label values (any path, with quotes, backslashes or newlines); bytes that are not
// UTF-8 are replaced, as the format requires UTF-8.
func Metrics(r *Report) (string, error) {
	var buf bytes.Buffer
	for _, g := range metricFamilies(r) {
		if len(g.samples) == 0 {
			continue // the encoder refuses a family without samples (no gate reached, no phase run)
		}
		mf := &dto.MetricFamily{Name: proto.String(g.name), Help: proto.String(g.help), Type: dto.MetricType_GAUGE.Enum()}
		for _, s := range g.samples {
			m := &dto.Metric{Gauge: &dto.Gauge{Value: proto.Float64(s.value)}}
			for _, k := range slices.Sorted(maps.Keys(s.labels)) {
				m.Label = append(m.Label, &dto.LabelPair{Name: proto.String(k), Value: proto.String(strings.ToValidUTF8(s.labels[k], "\uFFFD"))})
			}
			mf.Metric = append(mf.Metric, m)
		}
		if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
			return "", err
		}
	}
	return buf.String(), nil
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
