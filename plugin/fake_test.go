package plugin

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/swarm"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/engine"
)

// fakeEngine answers a run's questions with values, as an engine would between two calls: the
// unit tests' Engine. A func field, when set, answers its call in place of the default; every
// call is recorded by name, in order.
type fakeEngine struct {
	mu    sync.Mutex
	calls []string

	store engine.Store
	// snapshot answers the n-th Snapshot call (from 1); by default an idle single engine.
	snapshot   func(ctx context.Context, n int) (engine.Snapshot, error)
	snapshots  int
	stopped    []engine.Listed
	dangling   []engine.Listed
	images     []image.Summary
	containers map[string]string
	cache      []*build.CacheRecord
	// cacheErr, when not nil, is every BuildCache answer.
	cacheErr error

	pruneContainers func(ctx context.Context, f filters.Args) ([]string, uint64, error)
	pruneImages     func(ctx context.Context, f filters.Args) ([]string, []string, uint64, error)
	deleteImage     func(ctx context.Context, ref string) ([]string, []string, bool, error)
	pruneBuildCache func(ctx context.Context, ids []string, until time.Duration) ([]string, uint64, error)

	// The swarm: nodes, the n-th Tasks answer (from 1), each task's log by task ID.
	nodes []swarm.Node
	tasks func(n int) []swarm.Task
	// tasksErr, when set, is the n-th Tasks answer's error (nil: the answer is tasks(n)).
	tasksErr func(n int) error
	taskN    int
	logs     map[string][]byte
	// streams are what a followed task log gives, by task ID, before it stays open until the
	// follow is stopped; a task without one has a log that ends at once.
	streams  map[string][]byte
	services []swarm.ServiceSpec
	removed  []string
}

// idle is a snapshot of an engine with nothing running, its clock now.
func idle() engine.Snapshot {
	now := time.Now()
	return engine.Snapshot{Workload: gates.Workload{Swarm: gates.SwarmNone}, DaemonTime: now, LocalTime: now, APIVersion: "1.41"}
}

func (f *fakeEngine) called(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name)
}

// Calls is the calls made so far, by name.
func (f *fakeEngine) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeEngine) Host() string { return "fake://engine" }

func (f *fakeEngine) Store(context.Context) (engine.Store, error) {
	f.called("Store")
	return f.store, nil
}

func (f *fakeEngine) ContainerdRoots(context.Context, engine.Store) ([]string, error) {
	f.called("ContainerdRoots")
	return nil, fmt.Errorf("no containerd here")
}

func (f *fakeEngine) Snapshot(ctx context.Context) (engine.Snapshot, error) {
	f.called("Snapshot")
	f.mu.Lock()
	f.snapshots++
	n := f.snapshots
	f.mu.Unlock()
	if f.snapshot != nil {
		return f.snapshot(ctx, n)
	}
	return idle(), nil
}

func (f *fakeEngine) StoppedContainers(context.Context, filters.Args) ([]engine.Listed, error) {
	f.called("StoppedContainers")
	return f.stopped, nil
}

func (f *fakeEngine) ContainerCreated(context.Context, string) (string, error) {
	f.called("ContainerCreated")
	return "", engine.ErrGone
}

func (f *fakeEngine) DanglingImages(context.Context, filters.Args) ([]engine.Listed, error) {
	f.called("DanglingImages")
	return f.dangling, nil
}

func (f *fakeEngine) ImageCreated(context.Context, string) (string, error) {
	f.called("ImageCreated")
	return "", engine.ErrGone
}

func (f *fakeEngine) Images(context.Context) ([]image.Summary, error) {
	f.called("Images")
	return f.images, nil
}

func (f *fakeEngine) ContainerImages(context.Context) (map[string]string, error) {
	f.called("ContainerImages")
	return f.containers, nil
}

func (f *fakeEngine) BuildCache(context.Context) ([]*build.CacheRecord, error) {
	f.called("BuildCache")
	return f.cache, f.cacheErr
}

func (f *fakeEngine) DiskUsage(context.Context) (types.DiskUsage, error) {
	f.called("DiskUsage")
	return types.DiskUsage{}, nil
}

func (f *fakeEngine) PruneContainers(ctx context.Context, fl filters.Args) ([]string, uint64, error) {
	f.called("PruneContainers")
	if f.pruneContainers != nil {
		return f.pruneContainers(ctx, fl)
	}
	return nil, 0, nil
}

func (f *fakeEngine) PruneImages(ctx context.Context, fl filters.Args) ([]string, []string, uint64, error) {
	f.called("PruneImages")
	if f.pruneImages != nil {
		return f.pruneImages(ctx, fl)
	}
	return nil, nil, 0, nil
}

func (f *fakeEngine) DeleteImage(ctx context.Context, ref string) ([]string, []string, bool, error) {
	f.called("DeleteImage " + ref)
	if f.deleteImage != nil {
		return f.deleteImage(ctx, ref)
	}
	return []string{ref}, nil, false, nil
}

func (f *fakeEngine) PruneBuildCache(ctx context.Context, ids []string, until time.Duration) ([]string, uint64, error) {
	f.called("PruneBuildCache")
	if f.pruneBuildCache != nil {
		return f.pruneBuildCache(ctx, ids, until)
	}
	return ids, 0, nil
}

func (f *fakeEngine) PruneBuildCacheTo(context.Context, int64) ([]string, uint64, error) {
	f.called("PruneBuildCacheTo")
	return nil, 0, nil
}

func (f *fakeEngine) ContainerImage(context.Context, string) (string, error) {
	f.called("ContainerImage")
	return "", nil
}

func (f *fakeEngine) CreateService(_ context.Context, spec swarm.ServiceSpec) (string, error) {
	f.called("CreateService")
	f.services = append(f.services, spec)
	return "job1", nil
}

func (f *fakeEngine) RemoveService(_ context.Context, id string) error {
	f.called("RemoveService")
	f.removed = append(f.removed, id)
	return nil
}

func (f *fakeEngine) Nodes(context.Context) ([]swarm.Node, error) {
	f.called("Nodes")
	return f.nodes, nil
}

func (f *fakeEngine) Tasks(context.Context, string) ([]swarm.Task, error) {
	f.called("Tasks")
	f.taskN++
	if f.tasksErr != nil {
		if err := f.tasksErr(f.taskN); err != nil {
			return nil, err
		}
	}
	if f.tasks == nil {
		return nil, nil
	}
	return f.tasks(f.taskN), nil
}

// TaskStdoutLines records a whole-log read as TaskStdout and a followed one as FollowTaskStdout.
func (f *fakeEngine) TaskStdoutLines(ctx context.Context, id string, follow bool, line func([]byte) bool) error {
	log, ok := f.logs[id]
	if follow {
		f.called("FollowTaskStdout")
		if log, ok = f.streams[id]; !ok {
			return engine.ErrLogEnded
		}
	} else {
		f.called("TaskStdout")
		if !ok {
			return fmt.Errorf("reading its task's log: no such task %s", id)
		}
	}
	for _, l := range bytes.SplitAfter(log, []byte("\n")) {
		if l := bytes.TrimSuffix(l, []byte("\n")); len(l) > 0 && line(l) {
			return nil
		}
	}
	if follow {
		<-ctx.Done()
		return ctx.Err()
	}
	return engine.ErrLogEnded
}

var _ Engine = (*fakeEngine)(nil)
