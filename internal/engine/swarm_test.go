package engine

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/docker/docker/pkg/stdcopy"
)

// A followed log hands over whole lines however the stream cuts them, stdout only, and stops at
// the line wanted.
func TestLineWriter(t *testing.T) {
	var stream bytes.Buffer
	out := stdcopy.NewStdWriter(&stream, stdcopy.Stdout)
	errw := stdcopy.NewStdWriter(&stream, stdcopy.Stderr)
	for _, chunk := range []string{"first li", "ne\nsecond\n", "thi"} {
		_, _ = out.Write([]byte(chunk))
		_, _ = errw.Write([]byte("on stderr\n"))
	}
	_, _ = out.Write([]byte("rd\nWANTED\nafter\n"))

	var got []string
	w := &lineWriter{line: func(l []byte) bool {
		got = append(got, string(l))
		return string(l) == "WANTED"
	}}
	_, err := stdcopy.StdCopy(w, io.Discard, &stream)
	if !errors.Is(err, errLineTaken) {
		t.Fatalf("copy ended with %v, want the line taken", err)
	}
	if want := []string{"first line", "second", "third", "WANTED"}; !slices.Equal(got, want) {
		t.Errorf("lines %q, want %q", got, want)
	}

	long := &lineWriter{line: func([]byte) bool { return false }}
	if _, err := long.Write([]byte(strings.Repeat("x", maxLine+1))); err == nil {
		t.Error("a line over maxLine was kept without end")
	}
}
