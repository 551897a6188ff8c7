package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
)

// CreateService creates a swarm service (POST /services/create). A service of that name already
// there is refused with an error that says so: one name per swarm is what keeps two fleet runs
// from overlapping.
func (e *Client) CreateService(ctx context.Context, spec swarm.ServiceSpec) (string, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	resp, err := e.api.ServiceCreate(ctx, spec, swarm.ServiceCreateOptions{})
	if cerrdefs.IsConflict(err) || (err != nil && strings.Contains(err.Error(), "already exists")) {
		return "", &outcome.RuntimeError{What: "starting the fleet run", Err: fmt.Errorf("service %s exists: another fleet run is in flight on this swarm (remove the service if it is left over)", spec.Name)}
	}
	if err != nil {
		return "", e.failed("creating the fleet job (POST /services/create)", err)
	}
	return resp.ID, nil
}

// RemoveService removes a service (DELETE /services/{id}).
func (e *Client) RemoveService(ctx context.Context, id string) error {
	ctx, cancel := e.query(ctx)
	defer cancel()
	if err := e.api.ServiceRemove(ctx, id); err != nil {
		return e.failed("removing service "+id+" (DELETE /services/{id})", err)
	}
	return nil
}

// ContainerImage is the image reference a container was created from, or "" when there is no such
// container on this engine (GET /containers/{id}/json).
func (e *Client) ContainerImage(ctx context.Context, id string) (string, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	c, err := e.api.ContainerInspect(ctx, id)
	if cerrdefs.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", e.failed("finding this plugin's own image (GET /containers/{id}/json)", err)
	}
	if c.Config == nil {
		return "", nil
	}
	return c.Config.Image, nil
}

// Nodes lists the swarm's nodes (GET /nodes).
func (e *Client) Nodes(ctx context.Context) ([]swarm.Node, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	nodes, err := e.api.NodeList(ctx, swarm.NodeListOptions{})
	if err != nil {
		return nil, e.failed("listing swarm nodes (GET /nodes)", err)
	}
	return nodes, nil
}

// Tasks lists a service's tasks (GET /tasks?filters=service).
func (e *Client) Tasks(ctx context.Context, serviceID string) ([]swarm.Task, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	tasks, err := e.api.TaskList(ctx, swarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", serviceID))})
	if err != nil {
		return nil, e.failed("listing the fleet job's tasks (GET /tasks)", err)
	}
	return tasks, nil
}

// ErrLogEnded is a task's log that ended before the line wanted.
var ErrLogEnded = errors.New("its task's log ended")

// TaskStdoutLines hands line each whole line of a task's standard output (GET /tasks/{id}/logs)
// until line returns true (nil), the log ends (ErrLogEnded) or ctx ends. Without follow it reads
// what the task has written, within one query's deadline. With follow it reads the output as the
// node sends it, from before the task's container starts: on the lab swarm a node's last line came
// 0.14 to 0.42 s before the swarm recorded its task as ended. That stream lasts as long as the
// task, so only ctx bounds it. line must not keep the slice it is given.
func (e *Client) TaskStdoutLines(ctx context.Context, taskID string, follow bool, line func([]byte) bool) error {
	if !follow {
		var cancel context.CancelFunc
		ctx, cancel = e.query(ctx)
		defer cancel()
	}
	rc, err := e.api.TaskLogs(ctx, taskID, container.LogsOptions{ShowStdout: true, Follow: follow})
	if err != nil {
		return fmt.Errorf("reading its task's log: %w", err)
	}
	defer rc.Close()
	w := &lineWriter{line: line}
	_, err = stdcopy.StdCopy(w, io.Discard, rc)
	switch {
	case errors.Is(err, errLineTaken):
		return nil
	case err != nil:
		return fmt.Errorf("reading its task's log: %w", err)
	case len(w.pending) > 0 && line(w.pending):
		return nil // its last line, without a newline
	}
	return ErrLogEnded
}

// errLineTaken stops reading a log: the line was the one wanted.
var errLineTaken = errors.New("line taken")

// maxLine bounds a line of a task's log (a node's card is a few kilobytes).
const maxLine = 4 << 20

// lineWriter hands each whole line written to it to line, without its newline.
type lineWriter struct {
	line    func([]byte) bool
	pending []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.pending = append(w.pending, p...)
	for {
		i := bytes.IndexByte(w.pending, '\n')
		if i < 0 {
			break
		}
		l := w.pending[:i]
		w.pending = w.pending[i+1:]
		if w.line(l) {
			return len(p), errLineTaken
		}
	}
	if len(w.pending) > maxLine {
		return len(p), fmt.Errorf("a line longer than %d bytes", maxLine)
	}
	return len(p), nil
}
