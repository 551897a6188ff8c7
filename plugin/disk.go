package plugin

import (
	"context"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
)

// Measure reads the filesystem holding path (statfs). A filesystem that reports no blocks (proc,
// sysfs) cannot be under pressure or relieved of it, so measuring it is refused as a setting error.
func Measure(path, why string) (gates.Filesystem, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return gates.Filesystem{}, &RuntimeError{What: "measuring the filesystem of " + path, Err: err}
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

// measureDisk picks the path (the setting, else the daemon's data root when visible here, else /)
// and measures it. Only the data root costs a daemon call (GET /info).
func (r *Run) measureDisk(ctx context.Context) (gates.Filesystem, error) {
	if r.Config.DiskPath != "" {
		return Measure(r.Config.DiskPath, "disk_path setting")
	}
	root, err := r.Engine.DataRoot(ctx)
	if err != nil {
		return gates.Filesystem{}, err
	}
	if st, err := os.Stat(root); err == nil && st.IsDir() {
		return Measure(root, "the daemon's data root, visible here")
	}
	return Measure("/", fmt.Sprintf("the daemon's data root %s is not visible here, so / is measured: in a container on overlay storage that is the filesystem holding the container's writable layer, normally the data root's", root))
}
