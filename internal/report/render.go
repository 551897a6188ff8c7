package report

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	units "github.com/docker/go-units"
	"github.com/moby/sys/atomicwriter"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
)

// Human renders a byte count as the summary does (go-units: 1.5GiB).
func Human(b uint64) string { return units.BytesSize(float64(b)) }

// signedHuman renders a change in bytes, which may be negative (others wrote meanwhile).
func signedHuman(b int64) string {
	if b < 0 {
		return "-" + Human(uint64(-b))
	}
	return Human(uint64(b))
}

// WriteText writes the human summary block.
func WriteText(w io.Writer, r *Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "drone-gated-prune %s\n", r.Version)
	fmt.Fprintf(&b, "decision: %s\n", r.Decision)
	if r.Error != "" {
		fmt.Fprintf(&b, "error: %s\n", r.Error)
	}
	mode := "prune"
	if r.DryRun {
		mode = "dry run (nothing is removed)"
	}
	fmt.Fprintf(&b, "mode: %s; until %s", mode, r.Until)
	if r.Cutoff != nil {
		fmt.Fprintf(&b, " (before %s on the daemon's clock)", r.Cutoff.UTC().Format("2006-01-02T15:04:05Z"))
	}
	fmt.Fprintf(&b, "; daemon %s", r.Daemon)
	if r.APIVersion != "" {
		fmt.Fprintf(&b, " (API %s)", r.APIVersion)
	}
	b.WriteString("\ngates:\n")
	for _, name := range []string{gates.DiskPressureGate, gates.NoRunGate, gates.NoConvergeGate} {
		v, ok := r.Gate(name)
		switch {
		case !ok && r.Fleet != nil && name == gates.DiskPressureGate:
			fmt.Fprintf(&b, "  %-13s  judged on each node\n", name)
			continue
		case !ok:
			fmt.Fprintf(&b, "  %-13s  not evaluated\n", name)
			continue
		}
		state := "CLOSED"
		if v.Open {
			state = "open"
		}
		fmt.Fprintf(&b, "  %-13s  %-6s  %s\n", name, state, v.Reason)
		for _, e := range v.Evidence {
			fmt.Fprintf(&b, "                   - %s\n", e)
		}
		for _, w := range v.Warnings {
			fmt.Fprintf(&b, "                   ! %s\n", w)
		}
	}
	if r.Fleet != nil {
		writeFleet(&b, r.Fleet)
	}
	for _, fs := range r.Filesystems {
		fmt.Fprintf(&b, "measured: %s (%s)\n", fs.Path, fs.Why)
	}
	if r.Store != "" {
		fmt.Fprintf(&b, "store: %s\n", r.Store)
	}
	if len(r.Phases) > 0 {
		b.WriteString("phases:\n")
	}
	for _, p := range r.Phases {
		line := fmt.Sprintf("  %-11s  %s", p.Phase, p.Status)
		switch p.Status {
		case StatusRemoved, StatusWouldRemove:
			line += fmt.Sprintf(" %d, %s", p.Count, Human(p.Bytes))
			if p.Layers > 0 {
				line += fmt.Sprintf(" (%d layer(s) freed)", p.Layers)
			}
			if len(p.Untagged) > 0 {
				line += fmt.Sprintf(", untagged %s", strings.Join(p.Untagged, " "))
			}
			line += fmt.Sprintf("; until compared with %s", p.Clock)
		}
		if p.Reason != "" {
			line += ": " + p.Reason
		}
		b.WriteString(line + "\n")
		if len(p.Filters) > 0 && (p.Status == StatusRemoved || p.Status == StatusWouldRemove) {
			fmt.Fprintf(&b, "               filters: %s\n", strings.Join(p.Filters, ", "))
		}
		if p.Status == StatusWouldRemove {
			for _, o := range p.Objects {
				fmt.Fprintf(&b, "               %s %s %s\n", shortID(o.ID), o.Name, Human(uint64(max(o.Size, 0))))
			}
		}
	}
	if _, reported := r.Removed(); len(r.Phases) > 0 && !r.DryRun && r.DiskAfter != nil {
		fmt.Fprintf(&b, "freed: free space grew by %s on the measured filesystems (the engine reported %s)\n",
			signedHuman(r.FreedBytes), Human(reported))
	}
	if r.Advice != nil {
		writeAdvice(&b, r)
	}
	if r.DiskBefore != nil {
		fmt.Fprintf(&b, "disk before: %s\n", r.DiskBefore)
	}
	if r.DiskAfter != nil {
		fmt.Fprintf(&b, "disk after:  %s", r.DiskAfter)
		if r.CeilingBreached {
			fmt.Fprintf(&b, " — AT OR ABOVE fail_above %g%%", r.FailAbove)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "duration: %.3fs; exit %d\n", r.DurationSeconds, r.ExitCode)
	_, err := io.WriteString(w, b.String())
	return err
}

// writeFleet is a fleet run's table: a row per node, then the totals.
func writeFleet(b *strings.Builder, f *FleetReport) {
	fmt.Fprintf(b, "fleet: job %s (image %s) on %d node(s):\n", f.Service, f.Image, len(f.Nodes))
	fmt.Fprintf(b, "  %-16s %-34s %7s %7s %8s %10s %4s\n", "node", "decision", "before", "after", "objects", "reclaimed", "exit")
	objects, bytes := 0, uint64(0)
	for _, n := range f.Nodes {
		decision, below := n.Decision, ""
		if n.Problem != "" {
			decision = "- " + n.Problem
		}
		if len(decision) > 34 {
			// A long problem goes on its own line under the row, to keep the columns.
			decision, below = "- (see below)", n.Problem
		}
		fmt.Fprintf(b, "  %-16s %-34s %7s %7s %8d %10s %4d\n", n.Node, decision, n.DiskBefore, n.DiskAfter, n.Objects, Human(n.Bytes), n.ExitCode)
		if below != "" {
			fmt.Fprintf(b, "      %s\n", below)
		}
		objects += n.Objects
		bytes += n.Bytes
	}
	fmt.Fprintf(b, "  total: %d object(s), %s\n", objects, Human(bytes))
	for _, n := range f.Nodes {
		writeNodeObjects(b, n)
	}
}

// writeNodeObjects lists, under a node's name, every object each of its phases removed (or, in a
// dry run, would remove), as a single-node summary lists its own.
func writeNodeObjects(b *strings.Builder, n NodeRow) {
	header := false
	for _, p := range n.Phases {
		if len(p.Objects) == 0 {
			continue
		}
		if !header {
			fmt.Fprintf(b, "  %s:\n", n.Node)
			header = true
		}
		fmt.Fprintf(b, "    %-11s  %s %d, %s\n", p.Phase, p.Status, p.Count, p.Reclaimed)
		for _, o := range p.Objects {
			fmt.Fprintf(b, "                 %s %s %s\n", shortID(o.ID), o.Name, Human(uint64(max(o.Size, 0))))
		}
	}
}

// writeAdvice says what holds the space beyond the conservative tier. Nothing it names is removed.
func writeAdvice(b *strings.Builder, r *Report) {
	a := r.Advice
	b.WriteString("still under disk pressure; beyond what this plugin prunes, the space is held by (advice only, nothing here is removed):\n")
	fmt.Fprintf(b, "  tagged images no container uses: %s in all", Human(uint64(a.UnusedTaggedBytes)))
	if len(a.UnusedTagged) > 0 {
		b.WriteString("; the largest:")
	}
	b.WriteString("\n")
	for _, im := range a.UnusedTagged {
		fmt.Fprintf(b, "    %s %s %s, created %s ago\n", shortID(im.ID), im.Name, Human(uint64(max(im.Size, 0))),
			units.HumanDuration(r.StartedAt.Sub(im.Created)))
	}
	fmt.Fprintf(b, "  volumes: %d, %s\n", a.Volumes, Human(uint64(a.VolumesBytes)))
	fmt.Fprintf(b, "  build cache in use or shared with images: %s\n", Human(uint64(a.BuildCacheInUseBytes)))
}

func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// WriteJSONFile writes the report as JSON (summary_file, and the card data elsewhere than stdout).
func WriteJSONFile(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicwriter.WriteFile(path, append(data, '\n'), 0o644)
}

// Outputs are the KEY=value pairs written to $DRONE_OUTPUT (Harness CI output variables).
func Outputs(r *Report) map[string]string {
	count, bytes := r.Removed()
	out := map[string]string{
		"DECISION":        r.Decision,
		"EXIT_CODE":       fmt.Sprint(r.ExitCode),
		"OBJECTS_REMOVED": fmt.Sprint(count),
		"BYTES_RECLAIMED": fmt.Sprint(bytes),
		"DRY_RUN":         fmt.Sprint(r.DryRun),
		"FREED_BYTES":     fmt.Sprint(r.FreedBytes),
	}
	for _, p := range r.Phases {
		key := strings.ToUpper(p.Phase)
		out[key+"_REMOVED"] = fmt.Sprint(p.Count)
		out[key+"_BYTES"] = fmt.Sprint(p.Bytes)
		out[key+"_STATUS"] = p.Status
	}
	if r.DiskBefore != nil {
		out["DISK_PERCENT_BEFORE"] = fmt.Sprintf("%.1f", r.DiskBefore.UsedPercent())
	}
	if r.DiskAfter != nil {
		out["DISK_PERCENT_AFTER"] = fmt.Sprintf("%.1f", r.DiskAfter.UsedPercent())
	}
	return out
}

// WriteOutputs appends the outputs to path as KEY=value lines, one per key, sorted.
func WriteOutputs(path string, r *Report) error {
	out := Outputs(r)
	keys := make([]string, 0, len(out))
	for k := range out {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s\n", k, strings.ReplaceAll(out[k], "\n", " "))
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Destinations are where a run's summaries go besides the text on stdout; an empty path is not
// written.
type Destinations struct {
	// Card is the Drone card's path (DRONE_CARD_PATH): /dev/stdout or /dev/stderr frame it for
	// the runner, any other path gets plain JSON.
	Card string
	// Outputs is $DRONE_OUTPUT, appended to.
	Outputs string
	// Summary is the JSON report (summary_file); Metrics the Prometheus text file (metrics_file).
	Summary, Metrics string
}

// Emit writes every summary so that none states an exit code other than the process's: the files
// first (summary_file, metrics_file, a card path that is a file, then $DRONE_OUTPUT, which is
// appended to and so written once), then the text on stdout and the card there. When a file
// cannot be written and the run had not failed otherwise, the run fails with exit 1: r says so,
// naming the setting and the path, and the files already written are written again. It returns
// the write errors, joined, each naming its setting and path.
func Emit(stdout io.Writer, to Destinations, r *Report) error {
	type file struct {
		setting, path string
		write         func() error
	}
	files := []file{
		{"summary_file", to.Summary, func() error { return WriteJSONFile(to.Summary, r) }},
		{"metrics_file", to.Metrics, func() error { return writeMetrics(to.Metrics, r) }},
	}
	if !CardInLog(to.Card) {
		files = append(files, file{"DRONE_CARD_PATH", to.Card, func() error { return WriteCard(stdout, to.Card, r) }})
	}
	files = append(files, file{"DRONE_OUTPUT", to.Outputs, func() error { return WriteOutputs(to.Outputs, r) }})
	var errs []error
	var written []file
	for _, f := range files {
		if f.path == "" {
			continue
		}
		err := f.write()
		if err == nil {
			written = append(written, f)
			continue
		}
		errs = append(errs, fmt.Errorf("writing %s %s: %w", f.setting, f.path, err))
		if r.ExitCode != outcome.ExitOK {
			continue // the run failed already: its code stands
		}
		r.ExitCode, r.Error = outcome.ExitRuntime, errs[len(errs)-1].Error()
		for _, w := range written {
			// Written again with the exit code the process will give ($DRONE_OUTPUT comes last).
			if err := w.write(); err != nil {
				errs = append(errs, fmt.Errorf("writing %s %s: %w", w.setting, w.path, err))
			}
		}
	}
	errs = append(errs, WriteText(stdout, r))
	if CardInLog(to.Card) {
		errs = append(errs, WriteCard(stdout, to.Card, r))
	}
	return errors.Join(errs...)
}

// writeMetrics replaces the metrics file atomically (written, synced, renamed), so that a reader
// never sees half a file.
func writeMetrics(path string, r *Report) error {
	text, err := Metrics(r)
	if err != nil {
		return err
	}
	return atomicwriter.WriteFile(path, []byte(text), 0o644)
}
