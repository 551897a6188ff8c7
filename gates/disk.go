package gates

import (
	"fmt"
	"strconv"
	"strings"

	units "github.com/docker/go-units"
)

// Filesystem is one statfs reading of the filesystem that holds Docker's data.
type Filesystem struct {
	// Path is the path that was measured.
	Path string `json:"path"`
	// Why says how Path was chosen (the setting, or the daemon's data root, or the fallback).
	Why string `json:"why"`
	// TotalBytes is the filesystem size.
	TotalBytes uint64 `json:"total_bytes"`
	// FreeBytes is the space available to unprivileged writers (statfs f_bavail), as df shows it.
	FreeBytes uint64 `json:"free_bytes"`
	// UsedBytes is TotalBytes less every free block (f_bfree), as df shows it.
	UsedBytes uint64 `json:"used_bytes"`
	// TotalInodes and FreeInodes are zero on filesystems without a fixed inode table.
	TotalInodes uint64 `json:"total_inodes"`
	FreeInodes  uint64 `json:"free_inodes"`
}

// UsedPercent is df's "Use%": used / (used + available), so the blocks reserved for root count
// as unavailable rather than free.
func (f Filesystem) UsedPercent() float64 {
	denom := f.UsedBytes + f.FreeBytes
	if denom == 0 {
		return 0
	}
	return float64(f.UsedBytes) * 100 / float64(denom)
}

// FreeInodePercent is free inodes as a percent of all inodes; 100 when the filesystem reports none.
func (f Filesystem) FreeInodePercent() float64 {
	if f.TotalInodes == 0 {
		return 100
	}
	return float64(f.FreeInodes) * 100 / float64(f.TotalInodes)
}

// String is the one-line evidence: path, percent used, free bytes and inodes.
func (f Filesystem) String() string {
	s := fmt.Sprintf("%s: %.1f%% used, %s free of %s", f.Path, f.UsedPercent(),
		units.BytesSize(float64(f.FreeBytes)), units.BytesSize(float64(f.TotalBytes)))
	if f.TotalInodes > 0 {
		s += fmt.Sprintf(", %d of %d inodes free", f.FreeInodes, f.TotalInodes)
	}
	return s
}

// InodeFloor is a minimum of free inodes, as a count or as a percent of all inodes.
type InodeFloor struct {
	Count   uint64  `json:"count,omitempty"`
	Percent float64 `json:"percent,omitempty"`
	// IsPercent chooses between Count and Percent.
	IsPercent bool `json:"is_percent,omitempty"`
}

// Set reports whether a floor was configured.
func (f InodeFloor) Set() bool { return f.Count > 0 || f.Percent > 0 }

// String renders the floor the way it was given ("5%" or "100000").
func (f InodeFloor) String() string {
	if f.IsPercent {
		return strconv.FormatFloat(f.Percent, 'f', -1, 64) + "%"
	}
	return strconv.FormatUint(f.Count, 10)
}

func (f InodeFloor) breached(fs Filesystem) bool {
	if !f.Set() || fs.TotalInodes == 0 {
		return false
	}
	if f.IsPercent {
		return fs.FreeInodePercent() < f.Percent
	}
	return fs.FreeInodes < f.Count
}

// DiskPolicy is the pressure band: when any of its limits is reached the gate opens.
type DiskPolicy struct {
	// ThresholdPercent opens the gate at or above this percent used (0–100).
	ThresholdPercent float64
	// MinFreeBytes, when non-zero, opens the gate when fewer bytes than this are free.
	MinFreeBytes uint64
	// MinFreeInodes, when set, opens the gate when fewer inodes than this are free.
	MinFreeInodes InodeFloor
	// Force opens this gate whatever was measured (a manual promote). It opens no other gate.
	Force bool
}

// DiskPressure decides whether the filesystem is under enough pressure to prune.
func DiskPressure(fs Filesystem, p DiskPolicy) Verdict {
	v := Verdict{Gate: DiskPressureGate, Evidence: []string{fs.String(), fmt.Sprintf("threshold %g%%", p.ThresholdPercent)}}
	var hits []string
	if fs.UsedPercent() >= p.ThresholdPercent {
		hits = append(hits, fmt.Sprintf("%.1f%% used is at or above the %g%% threshold", fs.UsedPercent(), p.ThresholdPercent))
	}
	if p.MinFreeBytes > 0 {
		v.Evidence = append(v.Evidence, "min_free "+units.BytesSize(float64(p.MinFreeBytes)))
		if fs.FreeBytes < p.MinFreeBytes {
			hits = append(hits, fmt.Sprintf("%s free is below min_free %s",
				units.BytesSize(float64(fs.FreeBytes)), units.BytesSize(float64(p.MinFreeBytes))))
		}
	}
	if p.MinFreeInodes.Set() {
		v.Evidence = append(v.Evidence, "min_free_inodes "+p.MinFreeInodes.String())
		if fs.TotalInodes == 0 {
			v.Warnings = append(v.Warnings, fs.Path+" reports no inode count, so min_free_inodes cannot apply")
		} else if p.MinFreeInodes.breached(fs) {
			hits = append(hits, fmt.Sprintf("%d free inodes is below min_free_inodes %s", fs.FreeInodes, p.MinFreeInodes))
		}
	}
	switch {
	case len(hits) > 0:
		v.Open, v.Reason = true, strings.Join(hits, "; ")
	case p.Force:
		v.Open, v.Reason = true, fmt.Sprintf("forced: %.1f%% used is below the %g%% threshold, pruning anyway", fs.UsedPercent(), p.ThresholdPercent)
	default:
		v.Reason = fmt.Sprintf("%.1f%% used is below the %g%% threshold: keeping local image cache", fs.UsedPercent(), p.ThresholdPercent)
	}
	return v
}

// DiskPressureOn decides the disk gate over every filesystem that holds the engine's data
// (readings most used first): the gate opens when any one of them is under pressure, and the
// verdict is taken on that one, else on the most used; the others are listed as evidence. It
// returns the filesystem the verdict was taken on.
func DiskPressureOn(fss []Filesystem, p DiskPolicy) (Verdict, Filesystem) {
	decider := 0
	measured := p
	measured.Force = false
	for i, fs := range fss {
		if DiskPressure(fs, measured).Open {
			decider = i
			break
		}
	}
	v := DiskPressure(fss[decider], p)
	for i, fs := range fss {
		if i != decider {
			v.Evidence = append(v.Evidence, "also measured: "+fs.String())
		}
	}
	return v, fss[decider]
}

// CeilingBreached is the policy check made at every ending: the filesystem is still at or above
// the fail_above percent.
func CeilingBreached(fs Filesystem, failAbovePercent float64) bool {
	return fs.UsedPercent() >= failAbovePercent
}
