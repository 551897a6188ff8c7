package report

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

// CardSchema is the Adaptive Card template Drone's UI renders the card data with (docs/card.json).
const CardSchema = "https://raw.githubusercontent.com/drone-gated-prune/drone-gated-prune/main/docs/card.json"

// The card's frame on stdout: the runner captures what lies between them.
const (
	cardPrefix = "\x1b]1338;"
	cardSuffix = "\x1b]0m"
)

// Card is what Drone's UI binds into the template named by Schema.
type Card struct {
	Schema string   `json:"schema"`
	Data   CardData `json:"data"`
}

// CardData is the report flattened into the fields the card template shows (docs/card.json); a
// fleet run reads the same fields back from each node's log (CardLine).
type CardData struct {
	Version        string      `json:"version"`
	Decision       string      `json:"decision"`
	DryRun         bool        `json:"dry_run"`
	Gates          []CardGate  `json:"gates"`
	Phases         []CardPhase `json:"phases"`
	Objects        int         `json:"objects"`
	Reclaimed      string      `json:"reclaimed"`
	ReclaimedBytes uint64      `json:"reclaimed_bytes"`
	Freed          string      `json:"freed"`
	Store          string      `json:"store"`
	ExitCode       int         `json:"exit_code"`
	Duration       string      `json:"duration"`
	Error          string      `json:"error"`
	// Advice is one line, empty when the run gave none.
	Advice string `json:"advice"`
	// Nodes are a fleet run's rows.
	Nodes      []NodeRow `json:"nodes,omitempty"`
	DiskPath   string    `json:"disk_path,omitempty"`
	DiskBefore string    `json:"disk_before,omitempty"`
	DiskAfter  string    `json:"disk_after,omitempty"`
}

// CardGate is one verdict on the card; evidence and warnings are joined with "; ".
type CardGate struct {
	Gate     string `json:"gate"`
	Open     bool   `json:"open"`
	Reason   string `json:"reason"`
	Evidence string `json:"evidence"`
	Warnings string `json:"warnings"`
}

// CardPhase is one phase on the card, with every object it removed (or, in a dry run, would
// remove): a fleet run lists each node's from its card.
type CardPhase struct {
	Phase     string   `json:"phase"`
	Status    string   `json:"status"`
	Count     int      `json:"count"`
	Reclaimed string   `json:"reclaimed"`
	Reason    string   `json:"reason"`
	Objects   []Object `json:"objects,omitempty"`
}

// CardInLog reports whether a card path is the step's log (Drone's /dev/stdout, or /dev/stderr),
// where the card is framed for the runner to lift out rather than written as a file.
func CardInLog(path string) bool { return path == "/dev/stdout" || path == "/dev/stderr" }

// WriteCard writes the Drone card: to /dev/stdout (or /dev/stderr) as one write of
// ESC]1338; + base64(JSON) + ESC]0m on its own line, which the runner lifts out of the log;
// to any other path as plain JSON.
func WriteCard(stdout io.Writer, path string, r *Report) error {
	card := Card{Schema: CardSchema, Data: NewCardData(r)}
	if !CardInLog(path) {
		return WriteJSONFile(path, card)
	}
	data, err := json.Marshal(card)
	if err != nil {
		return err
	}
	w := stdout
	if path == "/dev/stderr" {
		w = os.Stderr
	}
	// The runner captures a write that starts with the prefix; the text summary before it ends
	// with a newline, so the card also starts its own line.
	_, err = io.WriteString(w, cardPrefix+base64.StdEncoding.EncodeToString(data)+cardSuffix+"\n")
	return err
}

// NewCardData flattens the report into the card's fields.
func NewCardData(r *Report) CardData {
	count, bytes := r.Removed()
	d := CardData{
		Version: r.Version, Decision: r.Decision, DryRun: r.DryRun, Gates: []CardGate{}, Phases: []CardPhase{},
		Objects: count, Reclaimed: Human(bytes), ReclaimedBytes: bytes, Freed: signedHuman(r.FreedBytes),
		Store: r.Store, ExitCode: r.ExitCode, Duration: fmt.Sprintf("%.2fs", r.DurationSeconds), Error: r.Error,
	}
	for _, v := range r.Gates {
		d.Gates = append(d.Gates, CardGate{Gate: v.Gate, Open: v.Open, Reason: v.Reason,
			Evidence: strings.Join(v.Evidence, "; "), Warnings: strings.Join(v.Warnings, "; ")})
	}
	for _, p := range r.Phases {
		d.Phases = append(d.Phases, CardPhase{Phase: p.Phase, Status: p.Status, Count: p.Count, Reclaimed: Human(p.Bytes), Reason: p.Reason, Objects: p.Objects})
	}
	if a := r.Advice; a != nil {
		var names []string
		for _, im := range a.UnusedTagged {
			names = append(names, im.Name+" "+Human(uint64(max(im.Size, 0))))
		}
		d.Advice = fmt.Sprintf("still under pressure; held beyond the tier (not removed): tagged images no container uses %s (largest: %s); volumes %s; build cache in use %s",
			Human(uint64(a.UnusedTaggedBytes)), strings.Join(names, ", "), Human(uint64(a.VolumesBytes)), Human(uint64(a.BuildCacheInUseBytes)))
	}
	if r.Fleet != nil {
		d.Nodes = r.Fleet.Nodes
		d.Objects, d.ReclaimedBytes = 0, 0
		for _, n := range r.Fleet.Nodes {
			d.Objects += n.Objects
			d.ReclaimedBytes += n.Bytes
		}
		d.Reclaimed = Human(d.ReclaimedBytes)
	}
	if r.DiskBefore != nil {
		d.DiskPath = r.DiskBefore.Path
		d.DiskBefore = fmt.Sprintf("%.1f%%", r.DiskBefore.UsedPercent())
	}
	if r.DiskAfter != nil {
		d.DiskAfter = fmt.Sprintf("%.1f%%", r.DiskAfter.UsedPercent())
	}
	return d
}

// CardLine reads the card (ESC]1338; base64 JSON ESC]0m) in one whole log line; ok is false for a
// line that holds none. A fleet run learns what each node's run did from the card in its log.
func CardLine(line []byte) (card CardData, ok bool, err error) {
	_, rest, found := bytes.Cut(line, []byte(cardPrefix))
	if !found {
		return CardData{}, false, nil
	}
	encoded, _, _ := bytes.Cut(rest, []byte(cardSuffix))
	raw, err := base64.StdEncoding.DecodeString(string(encoded))
	if err != nil {
		return CardData{}, true, fmt.Errorf("its card is not base64: %w", err)
	}
	var c Card
	if err := json.Unmarshal(raw, &c); err != nil {
		return CardData{}, true, fmt.Errorf("its card is not JSON: %w", err)
	}
	return c.Data, true, nil
}
