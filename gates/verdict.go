// Package gates holds the three decisions that stand between the plugin and a prune: disk
// pressure, no live run and no converge. Each gate is a pure function from a snapshot of the host
// to a Verdict, so it is tested with plain values and the same verdict feeds the summary.
package gates

// Gate names, as they appear in the summary, the card and the metrics.
const (
	DiskPressureGate = "disk_pressure"
	NoRunGate        = "no_run"
	NoConvergeGate   = "no_converge"
)

// Verdict is one gate's decision with the evidence it was taken on.
type Verdict struct {
	// Gate is one of DiskPressureGate, NoRunGate, NoConvergeGate.
	Gate string `json:"gate"`
	// Open is true when this gate lets the prune go ahead.
	Open bool `json:"open"`
	// Reason is one line a person reads: why the gate is open or closed.
	Reason string `json:"reason"`
	// Evidence lists the facts behind the reason, one per line (a live stack, a service with
	// its running/desired counts, a measured filesystem).
	Evidence []string `json:"evidence,omitempty"`
	// Warnings are facts an operator should see even when the gate is open (no pattern set,
	// a worker node that cannot list the cluster).
	Warnings []string `json:"warnings,omitempty"`
}
