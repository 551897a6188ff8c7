package plugin

import (
	"context"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/swarm"

	"github.com/drone-gated-prune/drone-gated-prune/internal/engine"
)

// Engine is every question a run asks the Docker Engine and every call its phases make, one
// request each (a few prune calls send batches). *engine.Client is the real one; the run's unit
// tests answer with values. What the answers mean is decided here, by the rules (rules.go).
type Engine interface {
	// Host is the daemon's address, for messages.
	Host() string

	// The disk gate: where the engine keeps its data.
	Store(ctx context.Context) (engine.Store, error)
	ContainerdRoots(ctx context.Context, store engine.Store) ([]string, error)

	// The no-run and no-converge gates: what runs, and the daemon's clock.
	Snapshot(ctx context.Context) (engine.Snapshot, error)

	// The phases' questions.
	StoppedContainers(ctx context.Context, f filters.Args) ([]engine.Listed, error)
	ContainerCreated(ctx context.Context, id string) (string, error)
	DanglingImages(ctx context.Context, f filters.Args) ([]engine.Listed, error)
	ImageCreated(ctx context.Context, id string) (string, error)
	Images(ctx context.Context) ([]image.Summary, error)
	ContainerImages(ctx context.Context) (map[string]string, error)
	BuildCache(ctx context.Context) ([]*build.CacheRecord, error)
	DiskUsage(ctx context.Context) (types.DiskUsage, error)

	// The phases' calls.
	PruneContainers(ctx context.Context, f filters.Args) (ids []string, reclaimed uint64, err error)
	PruneImages(ctx context.Context, f filters.Args) (deleted, untagged []string, reclaimed uint64, err error)
	DeleteImage(ctx context.Context, ref string) (deleted, untagged []string, kept bool, err error)
	PruneBuildCache(ctx context.Context, ids []string, until time.Duration) (removed []string, reclaimed uint64, err error)
	PruneBuildCacheTo(ctx context.Context, limit int64) (removed []string, reclaimed uint64, err error)

	Swarm
}

// Swarm is what a fleet run asks of the swarm manager it runs on.
type Swarm interface {
	ContainerImage(ctx context.Context, id string) (string, error)
	CreateService(ctx context.Context, spec swarm.ServiceSpec) (string, error)
	RemoveService(ctx context.Context, id string) error
	Nodes(ctx context.Context) ([]swarm.Node, error)
	Tasks(ctx context.Context, serviceID string) ([]swarm.Task, error)
	TaskStdoutLines(ctx context.Context, taskID string, follow bool, line func([]byte) bool) error
}

var _ Engine = (*engine.Client)(nil)
