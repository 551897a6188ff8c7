// Package engine asks the Docker Engine what a run needs to know and sends the calls its phases
// make, one method per request, each with its own deadline. It decides nothing: which objects to
// keep, which filters to send and what an answer means for the run are the plugin's rules.
package engine

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/client"

	"github.com/drone-gated-prune/drone-gated-prune/internal/access"
	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
)

// Client is a connection to one Docker Engine.
type Client struct {
	api *client.Client
	// server watches the answers: Podman's header, and a socket proxy's 403.
	server *serverWatch
	// QueryTimeout bounds each read (info, one list, one inspect); PruneTimeout bounds each prune or
	// delete.
	QueryTimeout time.Duration
	PruneTimeout time.Duration
	// StopGrace is how long a prune already sent may still answer once the run is stopped
	// (signal or timeout), so the summary can say what it removed.
	StopGrace time.Duration
	// info is the run's GET /info answer, read once (Store or the first Snapshot).
	info *infoReading
}

// New connects the way the docker CLI does: DOCKER_HOST, DOCKER_API_VERSION and TLS settings
// from the environment, API version negotiated with the daemon on the first call. httpClient, when
// not nil, is used as it is, and must already dial the daemon (the benchmarks count requests with
// a wrapping transport).
func New(httpClient *http.Client) (*Client, error) {
	if httpClient == nil {
		base, err := client.NewClientWithOpts(client.FromEnv)
		if err != nil {
			return nil, &outcome.RuntimeError{What: "connecting to the Docker daemon", Err: err}
		}
		httpClient = base.HTTPClient()
	}
	watch := &serverWatch{next: httpClient.Transport}
	if watch.next == nil {
		watch.next = http.DefaultTransport
	}
	hc := *httpClient
	hc.Transport = watch
	api, err := client.NewClientWithOpts(client.FromEnv, client.WithHTTPClient(&hc), client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, &outcome.RuntimeError{What: "connecting to the Docker daemon", Err: err}
	}
	return &Client{api: api, server: watch, QueryTimeout: 30 * time.Second, PruneTimeout: 5 * time.Minute, StopGrace: 3 * time.Second}, nil
}

// libpodHeader is the header Podman's Docker-compatible service puts on every answer (its own API
// version, "4.3.1"); Docker sends none. The Engine API's bodies do not tell the two apart.
const libpodHeader = "Libpod-Api-Version"

// serverWatch notes, from the answers that pass anyway, whether the daemon is Podman and which
// request a socket proxy refused: no request of its own.
type serverWatch struct {
	next   http.RoundTripper
	libpod atomic.Pointer[string]
	// refused is the last request answered 403, as METHOD PATH: a socket proxy's refusal.
	refused atomic.Pointer[string]
}

func (s *serverWatch) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := s.next.RoundTrip(r)
	if err == nil {
		if v := resp.Header.Get(libpodHeader); v != "" {
			s.libpod.Store(&v)
		}
		if resp.StatusCode == http.StatusForbidden {
			route := access.Route(r.Method, r.URL.Path)
			s.refused.Store(&route)
		}
	}
	return resp, err
}

// proxyRefusal says which call a socket proxy refused (HTTP 403: the engine itself never
// answers 403 to these calls) and which section to allow, or "" for another error.
func (e *Client) proxyRefusal(err error) string {
	if e.server == nil {
		return ""
	}
	route := e.server.refused.Load()
	if route == nil || !cerrdefs.IsPermissionDenied(err) {
		return ""
	}
	method, path, _ := strings.Cut(*route, " ")
	allow := access.Section(path)
	if c, ok := access.Find(method, path); ok {
		allow = c.Allow()
	}
	return "the socket proxy refused " + *route + ": allow " + allow
}

// podman is Podman's version when the daemon answered as Podman, or "".
func (e *Client) podman() string {
	if e.server == nil {
		return ""
	}
	if v := e.server.libpod.Load(); v != nil {
		return *v
	}
	return ""
}

// Close releases the client's connections.
func (e *Client) Close() error { return e.api.Close() }

// Host is the daemon address in use, for messages.
func (e *Client) Host() string { return e.api.DaemonHost() }

// query is one read's deadline.
func (e *Client) query(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, e.QueryTimeout)
}

// pruneContext outlives ctx by StopGrace: the run stops between calls, and a prune the engine is
// already carrying out gets that long to report what it removed before it is abandoned.
func (e *Client) pruneContext(ctx context.Context) (context.Context, context.CancelFunc) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.PruneTimeout)
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(e.StopGrace, cancel) })
	return pctx, func() { stop(); cancel() }
}

// ErrPruneRunning marks a phase skipped because another prune of the same kind was running on
// the daemon (HTTP 409 "a prune operation is already running"), or another client's disk-usage
// listing held the build cache's.
var ErrPruneRunning = errors.New("another prune is already running on the daemon")

// ErrGone is an object removed between its listing and a question about it.
var ErrGone = errors.New("removed since it was listed")

func (e *Client) pruneErr(what string, err error) error {
	if cerrdefs.IsConflict(err) {
		return fmt.Errorf("%w (%v)", ErrPruneRunning, err)
	}
	return e.failed(what, err)
}

// failed wraps an Engine API error as a runtime error that names the call and the daemon.
func (e *Client) failed(what string, err error) error {
	var stop *outcome.StopCause
	if errors.As(err, &stop) {
		// The run's timeout or a signal cut the call short: the daemon may well have answered.
		return &outcome.RuntimeError{What: "stopped while " + what, Err: stop}
	}
	if refusal := e.proxyRefusal(err); refusal != "" {
		return &outcome.RuntimeError{What: refusal + " (" + what + ")", Err: err}
	}
	if client.IsErrConnectionFailed(err) {
		return &outcome.RuntimeError{What: what, Err: fmt.Errorf("daemon unreachable at %s: %w", e.api.DaemonHost(), err)}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &outcome.RuntimeError{What: what, Err: fmt.Errorf("no answer from %s in time: %w", e.api.DaemonHost(), err)}
	}
	return &outcome.RuntimeError{What: what, Err: err}
}
