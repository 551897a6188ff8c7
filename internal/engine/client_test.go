package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"

	"github.com/docker/docker/api/types/swarm"

	"github.com/drone-gated-prune/drone-gated-prune/gates"
	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
)

func TestSwarmRole(t *testing.T) {
	cases := []struct {
		info swarm.Info
		role gates.SwarmRole
		ok   bool
	}{
		{swarm.Info{LocalNodeState: swarm.LocalNodeStateInactive}, gates.SwarmNone, true},
		{swarm.Info{}, gates.SwarmNone, true},
		{swarm.Info{LocalNodeState: swarm.LocalNodeStateActive, ControlAvailable: true}, gates.SwarmManager, true},
		{swarm.Info{LocalNodeState: swarm.LocalNodeStateActive}, gates.SwarmWorker, true},
		{swarm.Info{LocalNodeState: swarm.LocalNodeStateLocked}, "", false},
		{swarm.Info{LocalNodeState: swarm.LocalNodeStatePending}, "", false},
		{swarm.Info{LocalNodeState: swarm.LocalNodeStateError, Error: "raft: no leader"}, "", false},
	}
	for _, c := range cases {
		if role, ok := swarmRole(c.info); role != c.role || ok != c.ok {
			t.Errorf("%+v: got %q %v, want %q %v", c.info, role, ok, c.role, c.ok)
		}
	}
}

func TestHealthFromStatus(t *testing.T) {
	for status, want := range map[string]string{
		"Up 3 seconds (health: starting)": "starting", "Up 2 hours (healthy)": "healthy", "Up 1 minute (unhealthy)": "unhealthy", "Up 5 seconds": "",
	} {
		if got := health(status); got != want {
			t.Errorf("health(%q) = %q, want %q", status, got, want)
		}
	}
}

// The build-cache id filter names exactly the records given: BuildKit reads it as a regular
// expression, quoted so that its bars and parentheses stay in one operand.
func TestCacheIDPattern(t *testing.T) {
	p := cacheIDPattern([]string{"abc123", "def456"})
	if p != `"^(abc123|def456)$"` {
		t.Fatalf("pattern %s", p)
	}
	re := regexp.MustCompile(strings.Trim(p, `"`))
	for id, want := range map[string]bool{"abc123": true, "def456": true, "abc1234": false, "xabc123": false, "abc": false} {
		if re.MatchString(id) != want {
			t.Errorf("%s matched %v", id, !want)
		}
	}
}

// A 409 from the daemon (the client maps it to an errdefs conflict) skips the phase; any other
// API error fails the run.
func TestPruneConflictIsSkip(t *testing.T) {
	e := &Client{}
	conflict := fmt.Errorf("Error response from daemon: a prune operation is already running: %w", cerrdefs.ErrConflict)
	if err := e.pruneErr("pruning", conflict); !errors.Is(err, ErrPruneRunning) {
		t.Fatalf("conflict not classified as a running prune: %v", err)
	}
	other := fmt.Errorf("Error response from daemon: boom: %w", cerrdefs.ErrInternal)
	var re *outcome.RuntimeError
	if err := e.pruneErr("pruning", other); errors.Is(err, ErrPruneRunning) || !errors.As(err, &re) {
		t.Fatalf("internal error misclassified: %v", err)
	}
}

// DeleteImage sends noprune=1 and reads the engine's answers: a 409 (the image became used) and a
// 404 (deleted meanwhile) keep the image, as does an answer that only untags the name it was
// given (another reference names the image); otherwise it reports the IDs deleted and the other
// tags removed.
func TestDeleteImageAnswers(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name, _ := url.PathUnescape(path.Base(r.URL.EscapedPath()))
		if r.Method != http.MethodDelete || r.URL.Query().Get("noprune") != "1" {
			t.Errorf("%s %s: want DELETE with noprune=1", r.Method, r.URL)
		}
		switch name {
		case "used":
			w.WriteHeader(http.StatusConflict)
			_, _ = io.WriteString(w, `{"message":"image is being used by a stopped container"}`)
		case "gone":
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"message":"No such image"}`)
		case "moby-dangling@tagged":
			_ = json.NewEncoder(w).Encode([]image.DeleteResponse{{Untagged: name}})
		default:
			_ = json.NewEncoder(w).Encode([]image.DeleteResponse{{Untagged: name}, {Untagged: "old:tag"}, {Deleted: "sha256:x"}, {Deleted: "sha256:layer"}})
		}
	}))
	defer srv.Close()
	t.Setenv("DOCKER_HOST", "tcp://"+srv.Listener.Addr().String())
	t.Setenv("DOCKER_API_VERSION", "1.41")
	e, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	for ref, want := range map[string]struct {
		deleted, untagged []string
		kept              bool
	}{
		"used": {kept: true}, "gone": {kept: true}, "moby-dangling@tagged": {kept: true},
		"moby-dangling@x": {deleted: []string{"sha256:x", "sha256:layer"}, untagged: []string{"old:tag"}},
	} {
		deleted, untagged, kept, err := e.DeleteImage(context.Background(), ref)
		if err != nil || kept != want.kept || !slices.Equal(deleted, want.deleted) || !slices.Equal(untagged, want.untagged) {
			t.Errorf("%s: deleted %q untagged %q kept %v err %v; want %q %q %v", ref, deleted, untagged, kept, err, want.deleted, want.untagged, want.kept)
		}
	}
}

// A disk-usage listing that meets another client's work (another listing, or images deleted while
// it lists them, as Engine 20.10 answers both) is a busy phase, not a failed run; any other
// failure is a runtime error.
func TestBuildCacheBusyListing(t *testing.T) {
	answers := map[string]string{
		"listing":  "a disk usage operation is already running",
		"deleting": "failed to retrieve image list: layer sha256:df5ab0ab was not found (corruption?)",
		"other":    "failed to retrieve image list: permission denied",
	}
	for name, message := range answers {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
			_ = json.NewEncoder(w).Encode(map[string]string{"message": message})
		}))
		t.Setenv("DOCKER_HOST", "tcp://"+srv.Listener.Addr().String())
		t.Setenv("DOCKER_API_VERSION", "1.41")
		e, err := New(nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = e.BuildCache(context.Background())
		srv.Close()
		if busy := errors.Is(err, ErrPruneRunning); busy != (name != "other") {
			t.Errorf("%s: %v; busy %v", name, err, busy)
		}
	}
}
