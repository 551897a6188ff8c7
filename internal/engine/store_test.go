package engine

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// plugin is a containerd Plugin message with the given exports (field 5, a map).
func plugin(exports map[string]string) []byte {
	var msg []byte
	msg = protowire.AppendTag(msg, 2, protowire.BytesType) // id, a field the reader skips
	msg = protowire.AppendString(msg, "overlayfs")
	for k, v := range exports {
		var entry []byte
		entry = protowire.AppendTag(entry, 1, protowire.BytesType)
		entry = protowire.AppendString(entry, k)
		entry = protowire.AppendTag(entry, 2, protowire.BytesType)
		entry = protowire.AppendString(entry, v)
		msg = protowire.AppendTag(msg, 5, protowire.BytesType)
		msg = protowire.AppendBytes(msg, entry)
	}
	msg = protowire.AppendTag(msg, 7, protowire.VarintType) // a varint field, skipped too
	msg = protowire.AppendVarint(msg, 1)
	return msg
}

// The introspection call's framing, against a gRPC-speaking server on a unix socket: one POST
// over unencrypted HTTP/2 to the Plugins method, the request a length-prefixed PluginsRequest
// holding the filters, the answer a length-prefixed PluginsResponse whose plugins' "root" exports
// are read, grpc-status in the trailers.
func TestIntrospectPluginsFraming(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "containerd.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	var gotFilters []string
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protocols, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 || r.Method != http.MethodPost || r.URL.Path != "/containerd.services.introspection.v1.Introspection/Plugins" || r.Header.Get("Content-Type") != "application/grpc" {
			t.Errorf("%s %s %s content-type %q", r.Proto, r.Method, r.URL.Path, r.Header.Get("Content-Type"))
		}
		body, _ := io.ReadAll(r.Body)
		if len(body) < 5 || body[0] != 0 || int(binary.BigEndian.Uint32(body[1:5])) != len(body)-5 {
			t.Errorf("request not one length-prefixed message: %x", body)
		} else if err := eachField(body[5:], func(num protowire.Number, b []byte) error {
			if num == 1 {
				gotFilters = append(gotFilters, string(b))
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		var resp []byte
		for _, p := range [][]byte{plugin(map[string]string{"root": "/var/lib/containerd/content"}), plugin(nil), plugin(map[string]string{"other": "x", "root": "/snap"})} {
			resp = protowire.AppendTag(resp, 1, protowire.BytesType)
			resp = protowire.AppendBytes(resp, p)
		}
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status")
		_, _ = w.Write(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(resp))))
		_, _ = w.Write(resp)
		w.Header().Set("Grpc-Status", "0")
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	roots, err := introspectPlugins(context.Background(), socket, `type=="a"`, `type=="b",id=="c"`)
	if err != nil || !slices.Equal(roots, []string{"/var/lib/containerd/content", "/snap"}) {
		t.Fatalf("roots %q, %v", roots, err)
	}
	if !slices.Equal(gotFilters, []string{`type=="a"`, `type=="b",id=="c"`}) {
		t.Errorf("filters sent %q", gotFilters)
	}
}

// A truncated or mis-framed answer is an error, not an empty list.
func TestPluginRootsRejectsBrokenMessages(t *testing.T) {
	good := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), plugin(map[string]string{"root": "/r"}))
	if roots, err := pluginRoots(good); err != nil || !slices.Equal(roots, []string{"/r"}) {
		t.Fatalf("roots %q, %v", roots, err)
	}
	if _, err := pluginRoots(good[:len(good)-2]); err == nil {
		t.Error("a truncated message was read")
	}
}
