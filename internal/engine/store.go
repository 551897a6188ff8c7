package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"

	"github.com/docker/docker/api/types/system"
	"google.golang.org/protobuf/encoding/protowire"
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

// Store asks the daemon where and how it keeps its data (GET /info).
func (e *Client) Store(ctx context.Context) (Store, error) {
	ctx, cancel := e.query(ctx)
	defer cancel()
	info, err := e.api.Info(ctx)
	if err != nil {
		return Store{}, e.failed("asking the daemon for its data root (GET /info)", err)
	}
	return readStore(info, e.podman()), nil
}
