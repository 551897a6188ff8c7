// Package report is everything one run did and why (Report), and every way it is rendered: the
// text summary, the Drone card (which a fleet run reads back from each node), $DRONE_OUTPUT, the
// JSON summary and Prometheus metrics. It holds values only: nothing here asks the engine.
package report

import (
	"time"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
)

// Decisions, as the summary's first line gives them.
const (
	DecisionKeptCache = "kept cache: below threshold"
	// DecisionPruned is a real run whose phases removed something; DecisionNothingToPrune one
	// whose phases ran and found nothing to remove; DecisionPhasesSkipped one whose every phase was
	// skipped (another prune held it, or labels ruled it out): each phase says why.
	DecisionPruned         = "pruned"
	DecisionNothingToPrune = "nothing to prune"
	DecisionPhasesSkipped  = "skipped: every phase"
	DecisionDryRun         = "dry run"
	DecisionError          = "error"
	// DecisionFleet is a fleet run that ran on the nodes; each node's row has its own decision.
	DecisionFleet = "fleet: ran on every node"
)

// Prune phases, in the order they run.
const (
	PhaseContainers = "containers"
	PhaseImages     = "images"
	PhaseBuildCache = "build_cache"
	// PhaseBuildCacheBudget runs only with build_cache_budget set: BuildKit removes least-recently
	// used unused records until the build cache fits.
	PhaseBuildCacheBudget = "build_cache_budget"
)

// Phase statuses.
const (
	StatusRemoved     = "removed"
	StatusWouldRemove = "would remove"
	StatusSkipped     = "skipped"
	StatusNotRun      = "not run"
	StatusFailed      = "failed"
	// StatusInterrupted is a phase whose call was under way when the run was stopped: the engine
	// may have removed some objects, but its answer never arrived.
	StatusInterrupted = "interrupted"
)

// PhaseClocks says which time `until` is compared with in each phase (see docs/engine.md); the
// image phase's depends on the store (engine.Store.ImageClock).
var PhaseClocks = map[string]string{
	PhaseContainers:       "container created time",
	PhaseBuildCache:       "build-cache record last-used time",
	PhaseBuildCacheBudget: "none: least recently used first, whatever its age",
}

// Report is everything one run did and why: the source of every summary renderer.
type Report struct {
	Version  string `json:"version"`
	Decision string `json:"decision"`
	DryRun   bool   `json:"dry_run"`
	Forced   bool   `json:"forced"`
	// Daemon is the engine address; APIVersion the negotiated Engine API version (empty when the
	// run ended before asking the daemon anything).
	Daemon     string `json:"daemon"`
	APIVersion string `json:"api_version,omitempty"`
	// Until is the age filter as given; Cutoff the moment it resolved to on the daemon's clock.
	Until  string     `json:"until"`
	Cutoff *time.Time `json:"cutoff,omitempty"`
	// Gates holds the verdicts in the order evaluated; a gate not reached is absent.
	Gates  []gates.Verdict `json:"gates"`
	Phases []PhaseReport   `json:"phases"`
	// Store names the engine's image store (classic or containerd), when the run asked the daemon.
	Store string `json:"store,omitempty"`
	// Filesystems are the readings of every filesystem holding the engine's data at the start,
	// the most used first; FilesystemsAfter the same at the end; DiskWarnings what could not be
	// measured.
	Filesystems      []gates.Filesystem `json:"filesystems,omitempty"`
	FilesystemsAfter []gates.Filesystem `json:"filesystems_after,omitempty"`
	DiskWarnings     []string           `json:"disk_warnings,omitempty"`
	// FreedBytes is how much free space grew on those filesystems between the two readings: what
	// the run really freed (others writing meanwhile count too), beside the engine's own figures.
	FreedBytes int64 `json:"freed_bytes"`
	// DiskBefore and DiskAfter are the readings, at the start and at the end, of the filesystem
	// the disk gate decided on.
	DiskBefore *gates.Filesystem `json:"disk_before,omitempty"`
	DiskAfter  *gates.Filesystem `json:"disk_after,omitempty"`
	// FailAbove is the ceiling; CeilingBreached says DiskAfter is at or above it.
	FailAbove       float64 `json:"fail_above"`
	CeilingBreached bool    `json:"ceiling_breached"`
	// Fleet is a fleet run's job and per-node rows.
	Fleet *FleetReport `json:"fleet,omitempty"`
	// Advice says what holds the space beyond the conservative tier, when the disk is still under
	// pressure after the prune (or in a dry run). Nothing it names is removed.
	Advice *SpaceAdvice `json:"advice,omitempty"`
	// Error is the one line that says what failed, for exit code 1.
	Error           string    `json:"error,omitempty"`
	ExitCode        int       `json:"exit_code"`
	StartedAt       time.Time `json:"started_at"`
	DurationSeconds float64   `json:"duration_seconds"`
}

// PhaseReport is one prune phase: what it removed (or would remove), or why it did not run.
type PhaseReport struct {
	Phase  string `json:"phase"`
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
	// Clock is the time `until` compared against in this phase.
	Clock string `json:"clock"`
	// Filters are the filters the prune is sent (or, in a dry run, would be).
	Filters []string `json:"filters,omitempty"`
	// Objects are the containers, images or cache records removed or to be removed.
	Objects []Object `json:"objects,omitempty"`
	// Count is len(Objects); Bytes the space reclaimed as the engine reported it (or, in a dry
	// run, the listed sizes, which overcount layers shared between images).
	Count int    `json:"count"`
	Bytes uint64 `json:"bytes"`
	// Untagged lists tags the image prune removed from in-use images; Layers the image layers freed.
	Untagged []string `json:"untagged,omitempty"`
	Layers   int      `json:"layers,omitempty"`
}

// SpaceAdvice is what holds the space beyond the conservative tier, as the engine counts it.
type SpaceAdvice struct {
	// UnusedTagged are the largest tagged images no container uses (at most AdviceImages);
	// UnusedTaggedBytes adds up all of them (layers shared between images count more than once).
	UnusedTagged      []Object `json:"unused_tagged_images"`
	UnusedTaggedBytes int64    `json:"unused_tagged_bytes"`
	// Volumes and VolumesBytes are every volume and their total size.
	Volumes      int   `json:"volumes"`
	VolumesBytes int64 `json:"volumes_bytes"`
	// BuildCacheInUseBytes is build cache in use or shared with images.
	BuildCacheInUseBytes int64 `json:"build_cache_in_use_bytes"`
}

// Gate finds a verdict by gate name.
func (r *Report) Gate(name string) (gates.Verdict, bool) {
	for _, v := range r.Gates {
		if v.Gate == name {
			return v, true
		}
	}
	return gates.Verdict{}, false
}

// Phase finds a phase by name.
func (r *Report) Phase(name string) (PhaseReport, bool) {
	for _, p := range r.Phases {
		if p.Phase == name {
			return p, true
		}
	}
	return PhaseReport{}, false
}

// Removed is the total objects and bytes removed (or, in a dry run, to be removed).
func (r *Report) Removed() (count int, bytes uint64) {
	for _, p := range r.Phases {
		count += p.Count
		bytes += p.Bytes
	}
	return count, bytes
}

// AdviceImages is how many of the largest unused tagged images the advice names.
const AdviceImages = 5

// Object is one thing a phase removes or would remove.
type Object struct {
	ID      string    `json:"id"`
	Name    string    `json:"name,omitempty"`
	Size    int64     `json:"size,omitempty"`
	Created time.Time `json:"created,omitempty"`
}

// FleetReport is a fleet run: the job it ran and one row per node.
type FleetReport struct {
	Service string    `json:"service"`
	Image   string    `json:"image"`
	Nodes   []NodeRow `json:"nodes"`
}

// NodeRow is one node's part of a fleet run, from the card its task printed.
type NodeRow struct {
	Node       string `json:"node"`
	Decision   string `json:"decision"`
	DiskBefore string `json:"disk_before,omitempty"`
	DiskAfter  string `json:"disk_after,omitempty"`
	Objects    int    `json:"objects"`
	Bytes      uint64 `json:"bytes"`
	ExitCode   int    `json:"exit_code"`
	// Problem says why a node has no result: down, drained, its task never ran or left no report.
	Problem string `json:"problem,omitempty"`
	// Phases are the node's phases as its card gave them, each with the objects it removed (or,
	// in a dry run, would remove).
	Phases []CardPhase `json:"phases,omitempty"`
}
