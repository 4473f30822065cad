package reapi

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeCache is a gRPC server for the two cases bazel-remote cannot produce: a cache without
// SHA-256 and a cache that serves wrong bytes. It implements GetCapabilities and ByteStream
// Read only.
type fakeCache struct {
	repb.UnimplementedCapabilitiesServer
	bytestream.UnimplementedByteStreamServer

	capabilities *repb.ServerCapabilities
	// data is served for every ByteStream Read, whatever the resource name.
	data []byte
}

func (f *fakeCache) GetCapabilities(context.Context, *repb.GetCapabilitiesRequest) (*repb.ServerCapabilities, error) {
	return f.capabilities, nil
}

func (f *fakeCache) Read(req *bytestream.ReadRequest, stream bytestream.ByteStream_ReadServer) error {
	if req.ReadOffset > int64(len(f.data)) {
		return status.Error(codes.OutOfRange, "offset past the end")
	}
	data := f.data[req.ReadOffset:]
	for len(data) > 0 {
		n := min(len(data), 64<<10)
		if err := stream.Send(&bytestream.ReadResponse{Data: data[:n]}); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// startFakeCache serves f on a random 127.0.0.1 port and returns its grpc:// endpoint.
func startFakeCache(t *testing.T, f *fakeCache) string {
	t.Helper()

	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	server := grpc.NewServer()
	repb.RegisterCapabilitiesServer(server, f)
	bytestream.RegisterByteStreamServer(server, f)
	go server.Serve(listener)
	t.Cleanup(server.Stop)
	return "grpc://" + listener.Addr().String()
}

func sha256Capabilities() *repb.ServerCapabilities {
	return &repb.ServerCapabilities{CacheCapabilities: &repb.CacheCapabilities{
		DigestFunctions: []repb.DigestFunction_Value{repb.DigestFunction_SHA256},
	}}
}

func TestDialRejectsCacheWithoutSHA256(t *testing.T) {
	tests := []struct {
		name         string
		capabilities *repb.ServerCapabilities
		want         []string
	}{
		{
			name: "other digest functions",
			capabilities: &repb.ServerCapabilities{CacheCapabilities: &repb.CacheCapabilities{
				DigestFunctions: []repb.DigestFunction_Value{repb.DigestFunction_SHA1, repb.DigestFunction_BLAKE3},
			}},
			want: []string{"does not support SHA-256", "SHA1, BLAKE3"},
		},
		{
			name:         "no digest functions",
			capabilities: &repb.ServerCapabilities{CacheCapabilities: &repb.CacheCapabilities{}},
			want:         []string{"does not support SHA-256", "no digest functions"},
		},
		{
			name:         "no cache capabilities",
			capabilities: &repb.ServerCapabilities{},
			want:         []string{"not a remote cache"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			endpoint := startFakeCache(t, &fakeCache{capabilities: tt.capabilities})

			_, err := Dial(context.Background(), endpoint, Options{})
			if err == nil {
				t.Fatal("Dial succeeded, want an error")
			}
			if !strings.HasPrefix(err.Error(), "remote cache "+endpoint+": ") {
				t.Errorf("error %q does not start with the endpoint", err)
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

func TestReadCorruptBytesFails(t *testing.T) {
	blob := randomBlob{seed: 20, size: 1 << 20}
	good := blob.bytes(t)
	d := DigestOf(good)

	flipped := append([]byte(nil), good...)
	flipped[len(flipped)/2] ^= 1

	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"flipped bit", flipped, "the cache entry is corrupt"},
		{"short", good[:len(good)/2], "the cache ended the stream at offset 524288 of 1048576 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			endpoint := startFakeCache(t, &fakeCache{capabilities: sha256Capabilities(), data: tt.data})
			c := dial(t, endpoint, Options{Retries: 1})

			r, err := c.Open(context.Background(), d, 0)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer r.Close()

			h := sha256.New()
			_, err = io.Copy(h, r)
			if err == nil {
				t.Fatal("reading wrong bytes ended with io.EOF, want an error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "remote cache "+endpoint+": ") {
				t.Errorf("error %q does not start with the endpoint", err)
			}

			// Every later Read repeats the error rather than reporting io.EOF.
			if _, err := r.Read(make([]byte, 1)); err == nil || errors.Is(err, io.EOF) {
				t.Errorf("Read after the failure = %v, want the same error", err)
			}
		})
	}
}

func TestReadFromOffsetChecksLength(t *testing.T) {
	good := randomBlob{seed: 21, size: 1 << 20}.bytes(t)
	d := DigestOf(good)
	endpoint := startFakeCache(t, &fakeCache{capabilities: sha256Capabilities(), data: good[:len(good)-10]})
	c := dial(t, endpoint, Options{Retries: -1})

	r, err := c.Open(context.Background(), d, 1000)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer r.Close()

	_, err = io.Copy(io.Discard, r)
	if err == nil || !strings.Contains(err.Error(), "the cache ended the stream at offset 1048566 of 1048576 bytes") {
		t.Errorf("reading a short blob from an offset: error %v, want one saying the stream ended early", err)
	}
}

func TestOpenUnverifiedChecksOnlyLength(t *testing.T) {
	good := randomBlob{seed: 22, size: 1 << 20}.bytes(t)
	d := DigestOf(good)
	flipped := append([]byte(nil), good...)
	flipped[len(flipped)/2] ^= 1

	endpoint := startFakeCache(t, &fakeCache{capabilities: sha256Capabilities(), data: flipped})
	c := dial(t, endpoint, Options{Retries: -1})
	r, err := c.OpenUnverified(context.Background(), d, 0)
	if err != nil {
		t.Fatalf("OpenUnverified: %v", err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil {
		t.Errorf("reading a blob of the right length without verification: %v", err)
	}
	if len(got) != len(good) {
		t.Errorf("read %d bytes, want %d", len(got), len(good))
	}

	short := startFakeCache(t, &fakeCache{capabilities: sha256Capabilities(), data: good[:len(good)/2]})
	c = dial(t, short, Options{Retries: -1})
	r, err = c.OpenUnverified(context.Background(), d, 0)
	if err != nil {
		t.Fatalf("OpenUnverified: %v", err)
	}
	defer r.Close()
	if _, err := io.Copy(io.Discard, r); err == nil {
		t.Error("a short stream read without verification ended with io.EOF, want an error")
	}
}
