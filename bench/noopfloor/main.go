// Command noopfloor is the benchmark's yardstick for the daily no-op with the automatic disk_path:
// the least such a run can do when it is built on the Engine API client the plugin uses
// (github.com/docker/docker/client). It starts, sends the one request the no-op needs (GET /info
// without an API version, on the unix socket, for the data root), measures that path's
// filesystem, and exits. It parses no settings, logs nothing and prints nothing, so the plugin's
// no-op cannot be faster than this on the same engine.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"

	"github.com/docker/docker/client"
	"golang.org/x/sys/unix"
)

func main() {
	api, err := client.NewClientWithOpts(client.FromEnv)
	if err != nil {
		fail(err)
	}
	req, err := http.NewRequest(http.MethodGet, "http://"+client.DummyHost+"/info", nil)
	if err != nil {
		fail(err)
	}
	resp, err := api.HTTPClient().Do(req)
	if err != nil {
		fail(err)
	}
	var info struct{ DockerRootDir string }
	err = json.NewDecoder(resp.Body).Decode(&info)
	resp.Body.Close()
	if err != nil {
		fail(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(info.DockerRootDir, &st); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "noopfloor:", err)
	os.Exit(1)
}
