// Command bench measures drone-gated-prune on the real engine, side by side with the Docker CLI,
// and prints a Markdown table (docs/benchmarks.md). It creates its own fixtures at scale and
// prunes the whole daemon: run it on a CI or scratch engine only.
//
//	go run ./bench            # full scale
//	go run ./bench -quick     # small scale, a smoke run of every part
//	go run ./bench -fleet     # only the fleet part, on a 3-node swarm of Docker 29 engines
//	                          # (scripts/test-engine.sh build first; the system engine is not pruned)
//	go run ./bench -noop      # only the daily no-op against the CLI's, on the engine DOCKER_HOST
//	                          # names
//	go run ./bench -images    # only the image phase against `docker image prune`, on the engine
//	                          # DOCKER_HOST names (a Docker 29 engine: scripts/test-engine.sh start)
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docker/docker/client"
	"github.com/docker/go-connections/sockets"

	"github.com/drone-gated-prune/drone-gated-prune/internal/fixtures"
)

type config struct {
	quick bool
	fleet bool
	// noopOnly runs only the daily no-op part.
	noopOnly bool
	// imagesOnly runs only the image-phase part.
	imagesOnly bool
	noopRuns   int
	rounds     int
	images     int
	stopped    int
	builds     int
	sizes      []scale
	warmBases  int
	warmLayer  int64
}

type scale struct{ containers, services int }

// table collects the result rows, printed at the end.
type table struct {
	mu   sync.Mutex
	rows [][4]string
}

func (t *table) add(what, plugin, cli, note string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rows = append(t.rows, [4]string{what, plugin, cli, note})
	fmt.Fprintf(os.Stderr, "bench: %s | %s | %s | %s\n", what, plugin, cli, note)
}

func main() {
	quick := flag.Bool("quick", false, "small scale: a smoke run of every part")
	fleet := flag.Bool("fleet", false, "only the fleet part: a 3-node swarm of Docker 29 engines (scripts/test-engine.sh swarm)")
	images := flag.Bool("images", false, "only the image-phase part, on the engine DOCKER_HOST names")
	noop := flag.Bool("noop", false, "only the daily no-op against the CLI's no-op prune, on the engine DOCKER_HOST names")
	flag.Parse()
	cfg := config{noopRuns: 31, rounds: 3, images: 1000, stopped: 500, builds: 10,
		sizes: []scale{{10, 1}, {100, 20}, {1000, 100}}, warmBases: 3, warmLayer: 4 << 20}
	if *quick {
		cfg = config{quick: true, noopRuns: 9, rounds: 1, images: 50, stopped: 20, builds: 2,
			sizes: []scale{{10, 1}, {30, 5}}, warmBases: 2, warmLayer: 256 << 10}
	}
	cfg.fleet, cfg.imagesOnly, cfg.noopOnly = *fleet, *images, *noop
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// env is what every part shares: the engine client, the built binaries, a work directory.
type env struct {
	api        *client.Client
	dir        string
	pluginBin  string
	sleeperBin string
	// floorBin is the no-op's yardstick (bench/noopfloor).
	floorBin string
	t        *table
}

func run(cfg config) error {
	ctx := context.Background()
	api, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	info, err := api.Info(ctx)
	if err != nil {
		return fmt.Errorf("no engine: %w", err)
	}
	dir, err := os.MkdirTemp("", "dgp-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	e := &env{api: api, dir: dir, pluginBin: filepath.Join(dir, "drone-gated-prune"), sleeperBin: filepath.Join(dir, "sleeper"),
		floorBin: filepath.Join(dir, "noopfloor"), t: &table{}}
	if err := fixtures.BuildStatic(map[string]string{e.pluginBin: ".", e.sleeperBin: "./e2e/testdata/sleeper", e.floorBin: "./bench/noopfloor"}, "bench"); err != nil {
		return err
	}
	start := time.Now()
	parts := []func(context.Context, config) error{e.noop, e.gateCost, e.fullPrune, e.footprint, e.warmth, e.imagePhase}
	switch {
	case cfg.fleet:
		parts = []func(context.Context, config) error{e.fleet}
	case cfg.imagesOnly:
		parts = []func(context.Context, config) error{e.imagePhase}
	case cfg.noopOnly:
		parts = []func(context.Context, config) error{e.noop}
	default:
		leave, err := fixtures.EnsureSwarm(ctx, api)
		if err != nil {
			return err
		}
		if leave {
			defer func() { _ = api.SwarmLeave(ctx, true) }()
		}
	}
	for _, part := range parts {
		if err := part(ctx, cfg); err != nil {
			return err
		}
	}
	fmt.Printf("Machine: %d cores, %s; engine %s (API %s), storage driver %s; Go %s. Scale: %s. Took %s.\n\n",
		runtime.NumCPU(), memTotal(), info.ServerVersion, api.ClientVersion(), info.Driver, runtime.Version(), map[bool]string{true: "quick", false: "full"}[cfg.quick], time.Since(start).Round(time.Second))
	fmt.Println("| measure | drone-gated-prune | Docker CLI | note |")
	fmt.Println("|---|---|---|---|")
	for _, r := range e.t.rows {
		fmt.Printf("| %s | %s | %s | %s |\n", r[0], r[1], r[2], r[3])
	}
	return nil
}

func memTotal() string {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "memory unknown"
	}
	var kb int64
	_, _ = fmt.Sscanf(strings.SplitN(string(data), "\n", 2)[0], "MemTotal: %d kB", &kb)
	return fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
}

// countingTransport wraps the client's real transport and counts the requests it sends.
type countingTransport struct {
	base http.RoundTripper
	n    atomic.Int64
	mu   sync.Mutex
	seen []string
	// first is when the first request since the last reset was sent; timeline has each request
	// with its start from there, for where a run's time goes.
	first    time.Time
	timeline []string
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	start := time.Now()
	resp, err := c.base.RoundTrip(r)
	c.mu.Lock()
	if c.first.IsZero() {
		c.first = start
	}
	c.seen = append(c.seen, fmt.Sprintf("%s %s %s", r.Method, r.URL.Path, ms(time.Since(start))))
	c.timeline = append(c.timeline, fmt.Sprintf("+%s %s %s (%s)", ms(start.Sub(c.first)), r.Method, r.URL.Path, ms(time.Since(start))))
	c.mu.Unlock()
	return resp, err
}

func (c *countingTransport) reset() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := c.seen
	c.seen, c.timeline, c.first = nil, nil, time.Time{}
	c.n.Store(0)
	return seen
}

// countingClient is an HTTP client on the engine's unix socket whose requests are counted.
func countingClient() (*http.Client, *countingTransport, error) {
	host := os.Getenv("DOCKER_HOST")
	if host == "" {
		host = client.DefaultDockerHost
	}
	proto, addr, ok := strings.Cut(host, "://")
	if !ok {
		return nil, nil, fmt.Errorf("cannot parse DOCKER_HOST %q", host)
	}
	tr := &http.Transport{}
	if err := sockets.ConfigureTransport(tr, proto, addr); err != nil {
		return nil, nil, err
	}
	ct := &countingTransport{base: tr}
	return &http.Client{Transport: ct}, ct, nil
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// timeCommand runs a command and returns its wall time and peak RSS in KiB.
func timeCommand(env []string, name string, args ...string) (time.Duration, int64, string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	start := time.Now()
	out, err := cmd.CombinedOutput()
	elapsed := time.Since(start)
	var rss int64
	if cmd.ProcessState != nil {
		rss = maxRSS(cmd.ProcessState)
	}
	if err != nil {
		return elapsed, rss, string(out), fmt.Errorf("%s %v: %v\n%s", name, args, err, out)
	}
	return elapsed, rss, string(out), nil
}
