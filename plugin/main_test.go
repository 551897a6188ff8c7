package plugin

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
	"github.com/drone-gated-prune/drone-gated-prune/internal/report"
)

func invocation(raw map[string]string) (Invocation, *bytes.Buffer, *bytes.Buffer) {
	var stdout, stderr bytes.Buffer
	return Invocation{Raw: raw, Getenv: func(string) string { return "" }, Stdout: &stdout, Stderr: &stderr, Version: "test"}, &stdout, &stderr
}

// Invalid settings: exit 2, one line, no summary.
func TestMainInvalidSettings(t *testing.T) {
	inv, stdout, stderr := invocation(map[string]string{"threshold": "abc"})
	if code := Main(t.Context(), inv); code != outcome.ExitInvalid || stdout.Len() != 0 || strings.Count(stderr.String(), "\n") != 1 {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// No daemon behind DOCKER_HOST: exit 1, one line naming it, and the summary still written.
func TestMainDaemonUnreachable(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("DOCKER_HOST", "unix://"+filepath.Join(dir, "none.sock"))
	summary := filepath.Join(dir, "s.json")
	inv, stdout, stderr := invocation(map[string]string{"force": "true", "summary_file": summary})
	code := Main(t.Context(), inv)
	if code != outcome.ExitRuntime || !strings.Contains(stderr.String(), "daemon unreachable") || !strings.Contains(stdout.String(), "decision: error") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	var rep report.Report
	data, err := os.ReadFile(summary)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &rep); err != nil || rep.ExitCode != outcome.ExitRuntime || rep.Error == "" {
		t.Fatalf("summary file: %v %+v", err, rep)
	}
}

// Below threshold with disk_path set, the run ends at the disk gate without any daemon call.
func TestMainKeptCacheContactsNothing(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("DOCKER_HOST", "unix://"+filepath.Join(dir, "none.sock"))
	inv, stdout, _ := invocation(map[string]string{"disk_path": dir, "threshold": "100", "fail_above": "100"})
	if code := Main(t.Context(), inv); code != outcome.ExitOK || !strings.Contains(stdout.String(), "decision: "+report.DecisionKeptCache) {
		t.Fatalf("exit %d, stdout %q", code, stdout)
	}
}

// silentDaemon points DOCKER_HOST at a socket that accepts connections and never answers.
func silentDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "silent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // accepted, never answered
		}
	}()
	t.Setenv("DOCKER_HOST", "unix://"+sock)
}

// A signal stops a run whose daemon never answers: exit 1, saying which signal, well before the
// per-call deadline.
func TestMainSignalStops(t *testing.T) {
	silentDaemon(t)
	for _, sig := range []os.Signal{syscall.SIGTERM, syscall.SIGINT} {
		signals := make(chan os.Signal, 1)
		inv, stdout, stderr := invocation(map[string]string{"force": "true"})
		inv.Signals = signals
		time.AfterFunc(200*time.Millisecond, func() { signals <- sig })
		start := time.Now()
		code := Main(t.Context(), inv)
		if code != outcome.ExitRuntime || !strings.Contains(stderr.String(), "received "+sig.String()) || time.Since(start) > 10*time.Second {
			t.Fatalf("%v: exit %d after %s, stdout %q, stderr %q", sig, code, time.Since(start), stdout, stderr)
		}
	}
}

// A timeout that cuts a call short names the call it stopped and the timeout, not an unreachable
// daemon: this daemon accepts the connection and would answer later.
func TestMainTimeoutNamesTheCall(t *testing.T) {
	silentDaemon(t)
	inv, stdout, stderr := invocation(map[string]string{"force": "true", "timeout": "200ms"})
	code := Main(t.Context(), inv)
	line := stderr.String()
	if code != outcome.ExitRuntime || !strings.Contains(line, "stopped while asking the daemon for its data root (GET /info): timeout 200ms reached") || strings.Contains(line, "unreachable") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// The command's channel receives SIGTERM and SIGINT, sent to this process for real.
func TestTerminationSignals(t *testing.T) {
	ch := TerminationSignals()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		if err := syscall.Kill(os.Getpid(), sig); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-ch:
			if got != sig {
				t.Errorf("sent %v, received %v", sig, got)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%v not received", sig)
		}
	}
}

// log_format json: every line on stderr is one JSON object with a level and a message, and the
// summary on stdout stays text.
func TestMainJSONLogs(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("DOCKER_HOST", "unix://"+filepath.Join(dir, "none.sock"))
	inv, stdout, stderr := invocation(map[string]string{"disk_path": dir, "threshold": "100", "fail_above": "100", "log_format": "json", "log_level": "debug"})
	if code := Main(t.Context(), inv); code != outcome.ExitOK || !strings.Contains(stdout.String(), "decision: "+report.DecisionKeptCache) {
		t.Fatalf("exit %d, stdout %q", code, stdout)
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	if len(lines) == 0 || lines[0] == "" {
		t.Fatalf("no log line at log_level debug; stderr %q", stderr)
	}
	for _, line := range lines {
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil || entry["level"] == nil || entry["msg"] == nil {
			t.Errorf("log line %q is not a JSON object with level and msg (%v)", line, err)
		}
	}
}
