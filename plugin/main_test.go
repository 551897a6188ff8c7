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
)

func invocation(raw map[string]string) (Invocation, *bytes.Buffer, *bytes.Buffer) {
	var stdout, stderr bytes.Buffer
	return Invocation{Raw: raw, Getenv: func(string) string { return "" }, Stdout: &stdout, Stderr: &stderr, Version: "test"}, &stdout, &stderr
}

// Invalid settings: exit 2, one line, no summary.
func TestMainInvalidSettings(t *testing.T) {
	inv, stdout, stderr := invocation(map[string]string{"threshold": "abc"})
	if code := Main(t.Context(), inv); code != ExitInvalid || stdout.Len() != 0 || strings.Count(stderr.String(), "\n") != 1 {
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
	if code != ExitRuntime || !strings.Contains(stderr.String(), "daemon unreachable") || !strings.Contains(stdout.String(), "decision: error") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	var rep Report
	data, err := os.ReadFile(summary)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &rep); err != nil || rep.ExitCode != ExitRuntime || rep.Error == "" {
		t.Fatalf("summary file: %v %+v", err, rep)
	}
}

// Below threshold with disk_path set, the run ends at the disk gate without any daemon call.
func TestMainKeptCacheContactsNothing(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("DOCKER_HOST", "unix://"+filepath.Join(dir, "none.sock"))
	inv, stdout, _ := invocation(map[string]string{"disk_path": dir, "threshold": "100", "fail_above": "100"})
	if code := Main(t.Context(), inv); code != ExitOK || !strings.Contains(stdout.String(), "decision: "+DecisionKeptCache) {
		t.Fatalf("exit %d, stdout %q", code, stdout)
	}
}

// A signal stops a run whose daemon never answers: exit 1, saying which signal, well before the
// per-call deadline.
func TestMainSignalStops(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "silent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
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
	signals := make(chan os.Signal, 1)
	inv, stdout, stderr := invocation(map[string]string{"force": "true"})
	inv.Signals = signals
	time.AfterFunc(200*time.Millisecond, func() { signals <- syscall.SIGTERM })
	start := time.Now()
	code := Main(t.Context(), inv)
	if code != ExitRuntime || !strings.Contains(stderr.String(), "received terminated") || time.Since(start) > 10*time.Second {
		t.Fatalf("exit %d after %s, stdout %q, stderr %q", code, time.Since(start), stdout, stderr)
	}
}
