package e2e

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httputil"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/drone-gated-prune/drone-gated-prune/internal/access"
	"github.com/drone-gated-prune/drone-gated-prune/internal/harness"
)

// faultProxy sits between the plugin and the real engine on a unix socket of its own. It passes
// every request through to the engine unchanged, except where a test injects a fault: an error
// for one route, a held response, or a change to the engine made just before a response returns.
// Everything else the plugin sees is the real engine's answer.
type faultProxy struct {
	host string // DOCKER_HOST value for the plugin
	// fail, when it matches "METHOD /path" (API version stripped), answers failStatus (500 when
	// zero) with failMessage instead.
	fail        *regexp.Regexp
	failStatus  int
	failMessage string
	// beforeResponse runs on each engine response, before the plugin receives it.
	beforeResponse func(route string)
	seen           chan string
}

func route(r *http.Request) string { return access.Route(r.Method, r.URL.Path) }

// engineReverseProxy passes requests unchanged to the engine's unix socket.
func engineReverseProxy(engine string) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", "docker"
		},
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", engine)
		}},
	}
}

func startProxy(t *testing.T, p *faultProxy) *faultProxy {
	t.Helper()
	if !strings.HasPrefix(harness.API.DaemonHost(), "unix://") {
		t.Skip("the fault proxy needs the engine on a unix socket")
	}
	sock := filepath.Join(t.TempDir(), "proxy.sock")
	ln, err := net.Listen("unix", sock)
	harness.Must(t, err)
	p.host = "unix://" + sock
	p.seen = make(chan string, 100)
	rp := engineReverseProxy(harness.EngineSocket())
	rp.ModifyResponse = func(resp *http.Response) error {
		if p.beforeResponse != nil {
			p.beforeResponse(route(resp.Request))
		}
		return nil
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rt := route(r)
		select {
		case p.seen <- rt:
		default:
		}
		if p.fail != nil && p.fail.MatchString(rt) {
			status, msg := p.failStatus, p.failMessage
			if status == 0 {
				status = http.StatusInternalServerError
			}
			if msg == "" {
				msg = "injected fault for " + rt
			}
			body, _ := json.Marshal(map[string]string{"message": msg})
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = w.Write(body)
			return
		}
		rp.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(c)
		_ = srv.Close()
	})
	return p
}

// waitSeen waits until the plugin sent a request for a route matching re.
func (p *faultProxy) waitSeen(t *testing.T, re *regexp.Regexp, limit time.Duration) {
	t.Helper()
	deadline := time.After(limit)
	for {
		select {
		case rt := <-p.seen:
			if re.MatchString(rt) {
				return
			}
		case <-deadline:
			t.Fatalf("the plugin never called %s", re)
		}
	}
}
