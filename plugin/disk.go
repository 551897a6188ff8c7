package plugin

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

// Measure reads the filesystem holding path (statfs). A filesystem that reports no blocks (proc,
// sysfs) cannot be under pressure or relieved of it, so measuring it is refused as a setting error.
func Measure(path, why string) (gates.Filesystem, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return gates.Filesystem{}, &outcome.RuntimeError{What: "measuring the filesystem of " + path, Err: err}
	}
	if st.Blocks == 0 {
		return gates.Filesystem{}, &SettingError{Key: "disk_path", Value: path,
			Accepted: "a path on a filesystem that reports its size (statfs gives 0 blocks here, as for proc or sysfs)"}
	}
	bs := uint64(st.Bsize)
	return gates.Filesystem{
		Path: path, Why: why,
		TotalBytes: st.Blocks * bs, FreeBytes: st.Bavail * bs, UsedBytes: (st.Blocks - st.Bfree) * bs,
		TotalInodes: st.Files, FreeInodes: st.Ffree,
	}, nil
}

// dataPath is one path whose filesystem holds the engine's data, and why it is measured.
type dataPath struct{ path, why string }

// dataPaths picks what to measure: the disk_path setting alone; else the daemon's data root when it
// is visible here (else /, see below) and, on the containerd image store, containerd's content and
// snapshotter roots. Only the data root costs a daemon call (GET /info); containerd is asked over
// its own socket.
func (r *Run) dataPaths(ctx context.Context, rep *report.Report) ([]dataPath, error) {
	if r.Config.DiskPath != "" {
		return []dataPath{{r.Config.DiskPath, "disk_path setting"}}, nil
	}
	store, err := r.Engine.Store(ctx)
	if err != nil {
		return nil, err
	}
	rep.Store = store.String()
	var paths []dataPath
	if st, err := os.Stat(store.DataRoot); err == nil && st.IsDir() {
		paths = append(paths, dataPath{store.DataRoot, "the daemon's data root, visible here"})
	} else {
		paths = append(paths, dataPath{"/", fmt.Sprintf("the daemon's data root %s is not visible here, so / is measured: in a container on overlay storage that is the filesystem holding the container's writable layer, normally the data root's", store.DataRoot)})
	}
	if !store.Containerd {
		return paths, nil
	}
	roots, err := r.Engine.ContainerdRoots(ctx, store)
	if err != nil {
		rep.DiskWarnings = append(rep.DiskWarnings, "containerd image store: its roots could not be measured, only the data root was: "+err.Error())
		return paths, nil
	}
	for _, root := range roots {
		if st, err := os.Stat(root); err == nil && st.IsDir() {
			paths = append(paths, dataPath{root, "containerd's root for image content or snapshots, as containerd reports it"})
		} else {
			rep.DiskWarnings = append(rep.DiskWarnings, "containerd's root "+root+" is not visible here and was not measured")
		}
	}
	return paths, nil
}

// measureAll measures each path once per filesystem (paths on one device count once, the first
// named) and returns the readings, the most used first.
func measureAll(paths []dataPath) ([]gates.Filesystem, error) {
	var out []gates.Filesystem
	seen := map[uint64]bool{}
	for _, p := range paths {
		var st unix.Stat_t
		if err := unix.Stat(p.path, &st); err != nil {
			return nil, &outcome.RuntimeError{What: "measuring the filesystem of " + p.path, Err: err}
		}
		if seen[st.Dev] {
			continue
		}
		seen[st.Dev] = true
		fs, err := Measure(p.path, p.why)
		if err != nil {
			return nil, err
		}
		out = append(out, fs)
	}
	// The gate and the ceiling act on the worst filesystem: most used first.
	slices.SortStableFunc(out, func(a, b gates.Filesystem) int { return cmp.Compare(b.UsedPercent(), a.UsedPercent()) })
	return out, nil
}
