package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/system"
	"github.com/docker/docker/client"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/drone-gated-prune/drone-gated-prune/internal/outcome"
)

// Store is where and how the engine keeps images, from GET /info.
type Store struct {
	// DataRoot is the daemon's data root.
	DataRoot string
	// Containerd is true on the containerd image store (Docker 29's default on new installs),
	// false on a classic graphdriver store.
	Containerd bool
	// Driver is the graphdriver or snapshotter name (overlay2, overlayfs, ...).
	Driver string
	// ContainerdAddress is containerd's socket as the daemon reports it (API 1.46 and later).
	ContainerdAddress string
	// Podman is true when the daemon is Podman's Docker-compatible service: its own store, no
	// build cache to prune, no swarm; Engine names the engine and its version.
	Podman bool
	Engine string
}

// readStore reads the store from the daemon's info; podman is Podman's version when the daemon
// answered as Podman.
func readStore(info system.Info, podman string) Store {
	s := Store{DataRoot: info.DockerRootDir, Driver: info.Driver, Podman: podman != "", Engine: "Docker Engine " + info.ServerVersion}
	if s.Podman {
		s.Engine = "Podman " + podman
	}
	for _, kv := range info.DriverStatus {
		if len(kv) == 2 && kv[0] == "driver-type" && kv[1] == "io.containerd.snapshotter.v1" {
			s.Containerd = true
		}
	}
	if info.Containerd != nil {
		s.ContainerdAddress = info.Containerd.Address
	}
	return s
}

// String names the engine and its store for the summary.
func (s Store) String() string {
	switch {
	case s.Podman:
		return s.Engine + ": containers/storage (storage driver " + s.Driver + "); no build cache, no swarm"
	case s.Containerd:
		return s.Engine + ": containerd image store (snapshotter " + s.Driver + ")"
	}
	return s.Engine + ": classic image store (graphdriver " + s.Driver + ")"
}

// HasBuildCache reports whether the engine has a build cache to prune (POST /build/prune):
// Podman's service answers 404 there.
func (s Store) HasBuildCache() bool { return !s.Podman }

// ImageClock is what `until` is compared with in the image phase on this store.
func (s Store) ImageClock() string {
	if s.Containerd {
		return "the later of the image config's created time and the creation of its dangling record (when it was loaded, pulled, tagged or left dangling)"
	}
	return "image config created time (build time)"
}

// ContainerdRoots asks containerd (its introspection service, over its socket, with the deadline
// of one query) for the roots of its content store and of the snapshotter the daemon uses: on the
// containerd image store the image bytes live there, which the data root may not hold (a system
// containerd keeps them under its own root, /var/lib/containerd by default).
func (e *Client) ContainerdRoots(ctx context.Context, s Store) ([]string, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	if s.ContainerdAddress == "" {
		return nil, fmt.Errorf("the daemon does not report containerd's address (API below 1.46)")
	}
	if _, err := os.Stat(s.ContainerdAddress); err != nil {
		return nil, fmt.Errorf("containerd's socket %s is not visible here (mount it into the plugin's container, or set disk_path)", s.ContainerdAddress)
	}
	plugins, err := introspectPlugins(ctx, s.ContainerdAddress,
		`type=="io.containerd.content.v1"`, fmt.Sprintf(`type=="io.containerd.snapshotter.v1",id==%q`, s.Driver))
	if err != nil {
		return nil, fmt.Errorf("asking containerd at %s for its plugins: %w", s.ContainerdAddress, err)
	}
	var roots []string
	for _, root := range plugins {
		if root != "" && !slices.Contains(roots, root) {
			roots = append(roots, root)
		}
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("containerd at %s reported no content or %s snapshotter root", s.ContainerdAddress, s.Driver)
	}
	return roots, nil
}

// introspectPlugins makes one gRPC call, containerd.services.introspection.v1.Introspection/Plugins
// with the given filters, and returns each matching plugin's exported "root". gRPC is HTTP/2 with
// length-prefixed protobuf messages; the standard library speaks unencrypted HTTP/2 and protowire
// reads the two messages, which keeps a full gRPC stack (4 MB) out of the plugin's image.
func introspectPlugins(ctx context.Context, socket string, filters ...string) ([]string, error) {
	var req []byte
	for _, f := range filters {
		req = protowire.AppendTag(req, 1, protowire.BytesType) // PluginsRequest.filters
		req = protowire.AppendString(req, f)
	}
	body := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(req)))
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	transport := &http.Transport{Protocols: &protocols, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}
	defer transport.CloseIdleConnections()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://containerd/containerd.services.introspection.v1.Introspection/Plugins", bytes.NewReader(append(body, req...)))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/grpc")
	hreq.Header.Set("TE", "trailers")
	resp, err := transport.RoundTrip(hreq)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	status := resp.Trailer.Get("Grpc-Status") + resp.Header.Get("Grpc-Status")
	if resp.StatusCode != http.StatusOK || status != "0" {
		return nil, fmt.Errorf("HTTP %d, grpc-status %q: %s", resp.StatusCode, status, resp.Trailer.Get("Grpc-Message")+resp.Header.Get("Grpc-Message"))
	}
	if len(data) < 5 || int(binary.BigEndian.Uint32(data[1:5])) != len(data)-5 || data[0] != 0 {
		return nil, fmt.Errorf("not one uncompressed gRPC message (%d bytes)", len(data))
	}
	return pluginRoots(data[5:])
}

// pluginRoots reads a PluginsResponse: field 1 holds Plugin messages, whose field 5 is the map of
// exports (entries with key 1, value 2).
func pluginRoots(msg []byte) ([]string, error) {
	var roots []string
	err := eachField(msg, func(num protowire.Number, plugin []byte) error {
		if num != 1 {
			return nil
		}
		return eachField(plugin, func(num protowire.Number, entry []byte) error {
			if num != 5 {
				return nil
			}
			var key, value string
			err := eachField(entry, func(num protowire.Number, b []byte) error {
				switch num {
				case 1:
					key = string(b)
				case 2:
					value = string(b)
				}
				return nil
			})
			if key == "root" {
				roots = append(roots, value)
			}
			return err
		})
	})
	return roots, err
}

// eachField calls f with every length-delimited field of a protobuf message and skips the others.
func eachField(msg []byte, f func(protowire.Number, []byte) error) error {
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return protowire.ParseError(n)
		}
		msg = msg[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, msg)
			if n < 0 {
				return protowire.ParseError(n)
			}
			msg = msg[n:]
			continue
		}
		b, n := protowire.ConsumeBytes(msg)
		if n < 0 {
			return protowire.ParseError(n)
		}
		if err := f(num, b); err != nil {
			return err
		}
		msg = msg[n:]
	}
	return nil
}

// Store asks the daemon where and how it keeps its data (GET /info). On a unix socket the request
// goes without an API version in its path, which the daemon answers in its own version, so that
// the daily no-op needs no version negotiation first (one request, not a ping and then /info); the
// answer's API-Version header then stands in for the ping before the run's next call. With
// DOCKER_API_VERSION set, or on a TCP host, it is the client's own Info.
func (e *Client) Store(ctx context.Context) (Store, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	var (
		info system.Info
		err  error
	)
	if u, perr := client.ParseHostURL(e.api.DaemonHost()); perr == nil && u.Scheme == "unix" && os.Getenv(client.EnvOverrideAPIVersion) == "" {
		info, err = e.unversionedInfo(ctx)
	} else {
		info, err = e.api.Info(ctx)
	}
	var unreachable *unreachableError
	if errors.As(err, &unreachable) {
		return Store{}, &outcome.RuntimeError{What: "asking the daemon for its data root (GET /info)",
			Err: fmt.Errorf("daemon unreachable at %s: %w", e.api.DaemonHost(), unreachable.err)}
	}
	if err != nil {
		return Store{}, e.failed("asking the daemon for its data root (GET /info)", err)
	}
	e.remember(info)
	return readStore(info, e.podman()), nil
}

// unreachableError is a request that never reached the daemon (no socket, nothing listening).
type unreachableError struct{ err error }

func (u *unreachableError) Error() string { return u.err.Error() }
func (u *unreachableError) Unwrap() error { return u.err }

// unversionedInfo is GET /info on the daemon's unix socket, with no API version in its path; it
// reads only the fields readStore and Snapshot use, and hands the API version the daemon names to the client.
func (e *Client) unversionedInfo(ctx context.Context) (system.Info, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+client.DummyHost+"/info", nil)
	if err != nil {
		return system.Info{}, err
	}
	resp, err := e.api.HTTPClient().Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return system.Info{}, context.Cause(ctx)
		}
		return system.Info{}, &unreachableError{err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		err := fmt.Errorf("error response from daemon (HTTP %d): %s", resp.StatusCode, bytes.TrimSpace(body))
		if resp.StatusCode == http.StatusForbidden {
			// As the client types it, so that a socket proxy's refusal is named (proxyRefusal).
			err = fmt.Errorf("%w: %w", cerrdefs.ErrPermissionDenied, err)
		}
		return system.Info{}, err
	}
	var got struct {
		DockerRootDir string
		ServerVersion string
		Driver        string
		DriverStatus  [][2]string
		Containerd    *struct{ Address string }
		SystemTime    string
		Swarm         swarm.Info
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		return system.Info{}, fmt.Errorf("reading the daemon's info: %w", err)
	}
	if v := resp.Header.Get("API-Version"); v != "" {
		e.api.NegotiateAPIVersionPing(types.Ping{APIVersion: v})
	}
	info := system.Info{DockerRootDir: got.DockerRootDir, ServerVersion: got.ServerVersion, Driver: got.Driver, DriverStatus: got.DriverStatus, SystemTime: got.SystemTime, Swarm: got.Swarm}
	if got.Containerd != nil {
		info.Containerd = &system.ContainerdInfo{Address: got.Containerd.Address}
	}
	return info, nil
}
