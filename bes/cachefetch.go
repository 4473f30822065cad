package bes

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"

	bytestreampb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// maxPushRequestSize bounds a push request read from the cache. A request lists
// descriptors only, so even an index of many platforms stays far below it; the image
// package's decoder reads at most the same 64 MiB.
const maxPushRequestSize = 64 << 20

// HeaderSource returns request headers, for example credentials from a Bazel credential
// helper, for a URI. credhelper.Helper implements it.
type HeaderSource interface {
	Get(ctx context.Context, uri string) (http.Header, error)
}

// CacheFetcher reads push request files from a remote cache over the ByteStream API,
// at the bytestream:// URIs that Bazel puts in build events.
//
// TODO: replace the ByteStream read here with the reapi package's client once it
// exists, so the remote cache has one client package.
type CacheFetcher struct {
	// Endpoint, when set (grpc://host:port), replaces the host of every bytestream URI,
	// for a server that reaches the cache under another name than Bazel does.
	Endpoint string
	// Headers, when set, adds headers such as credentials to every read.
	Headers HeaderSource

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// Fetch reads the blob at uri, a bytestream://host:port[/instance]/blobs/<hash>/<size> URI.
func (f *CacheFetcher) Fetch(ctx context.Context, uri string) ([]byte, error) {
	blob, err := parseBytestreamURI(uri)
	if err != nil {
		return nil, Permanent(err)
	}
	if blob.size > maxPushRequestSize {
		return nil, Permanent(fmt.Errorf("blob %s is %d bytes; a push request is at most %d bytes", uri, blob.size, maxPushRequestSize))
	}

	host := blob.host
	if f.Endpoint != "" {
		host, err = grpcHost(f.Endpoint)
		if err != nil {
			return nil, Permanent(err)
		}
	}
	conn, err := f.conn(host)
	if err != nil {
		return nil, err
	}

	if f.Headers != nil {
		headers, err := f.Headers.Get(ctx, "grpc://"+host)
		if err != nil {
			return nil, fmt.Errorf("get credentials for grpc://%s: %w", host, err)
		}
		for name, values := range headers {
			for _, value := range values {
				ctx = metadata.AppendToOutgoingContext(ctx, strings.ToLower(name), value)
			}
		}
	}

	stream, err := bytestreampb.NewByteStreamClient(conn).Read(ctx, &bytestreampb.ReadRequest{ResourceName: blob.resourceName()})
	if err != nil {
		return nil, err
	}
	data := make([]byte, 0, blob.size)
	for {
		response, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("ByteStream read of %s from %s: %w", blob.resourceName(), host, err)
		}
		data = append(data, response.GetData()...)
		if int64(len(data)) > blob.size {
			return nil, fmt.Errorf("ByteStream read of %s from %s returned more than %d bytes", blob.resourceName(), host, blob.size)
		}
	}
	if int64(len(data)) != blob.size {
		return nil, fmt.Errorf("ByteStream read of %s from %s returned %d bytes; expected %d", blob.resourceName(), host, len(data), blob.size)
	}
	return data, nil
}

// Close closes the connections to the caches.
func (f *CacheFetcher) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for host, conn := range f.conns {
		conn.Close()
		delete(f.conns, host)
	}
	return nil
}

func (f *CacheFetcher) conn(host string) (*grpc.ClientConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	if conn, ok := f.conns[host]; ok {
		return conn, nil
	}
	// NOTE: plain-text gRPC only, like Bazel's grpc:// endpoints; grpcs:// caches need
	// the reapi client.
	conn, err := grpc.NewClient(host, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, Permanent(fmt.Errorf("connect to the remote cache %s: %w", host, err))
	}
	if f.conns == nil {
		f.conns = map[string]*grpc.ClientConn{}
	}
	f.conns[host] = conn
	return conn, nil
}

// bytestreamBlob is a parsed bytestream:// URI.
type bytestreamBlob struct {
	host     string
	instance string
	hash     string
	size     int64
}

func (b bytestreamBlob) resourceName() string {
	name := fmt.Sprintf("blobs/%s/%d", b.hash, b.size)
	if b.instance != "" {
		name = b.instance + "/" + name
	}
	return name
}

// parseBytestreamURI splits bytestream://host:port/<instance>/blobs/<hash>/<size>. The
// instance name may have several segments or none.
func parseBytestreamURI(uri string) (bytestreamBlob, error) {
	parsed, err := url.Parse(uri)
	if err != nil || parsed.Scheme != "bytestream" || parsed.Host == "" {
		return bytestreamBlob{}, fmt.Errorf("invalid push request URI %q; expected bytestream://host:port[/instance]/blobs/<hash>/<size>, which Bazel sends when it runs with --remote_cache", uri)
	}

	segments := strings.Split(strings.Trim(parsed.Path, "/"), "/")
	n := len(segments)
	if n < 3 || segments[n-3] != "blobs" {
		return bytestreamBlob{}, fmt.Errorf("invalid push request URI %q: the path must end in /blobs/<hash>/<size>", uri)
	}
	size, err := strconv.ParseInt(segments[n-1], 10, 64)
	if err != nil || size < 0 {
		return bytestreamBlob{}, fmt.Errorf("invalid push request URI %q: size %q is not a non-negative integer", uri, segments[n-1])
	}
	hash := segments[n-2]
	if hash == "" {
		return bytestreamBlob{}, fmt.Errorf("invalid push request URI %q: empty hash", uri)
	}

	return bytestreamBlob{
		host:     parsed.Host,
		instance: strings.Join(segments[:n-3], "/"),
		hash:     hash,
		size:     size,
	}, nil
}

// grpcHost returns host:port of a grpc://host:port endpoint.
func grpcHost(endpoint string) (string, error) {
	host, ok := strings.CutPrefix(endpoint, "grpc://")
	if !ok || host == "" || strings.Contains(host, "/") {
		return "", fmt.Errorf("invalid cache endpoint %q; expected grpc://host:port", endpoint)
	}
	return host, nil
}
