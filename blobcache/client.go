// Package blobcache is the client of the blob-cache gRPC service that `img registry`
// serves for the cas_registry strategy. Commit registers the blobs a push will
// reference and returns those the registry's remote cache lacks.
package blobcache

import (
	"context"
	"fmt"
	"strings"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/rulesimg/img/proto/blobcache"
)

// Client calls one registry's blob-cache service.
type Client struct {
	endpoint string
	conn     *grpc.ClientConn
	blobs    pb.BlobsClient
}

// Dial connects to grpc://host:port or grpcs://host:port (TLS with the system roots).
func Dial(endpoint string) (*Client, error) {
	var target string
	var transport credentials.TransportCredentials
	switch {
	case strings.HasPrefix(endpoint, "grpc://"):
		target, transport = strings.TrimPrefix(endpoint, "grpc://"), insecure.NewCredentials()
	case strings.HasPrefix(endpoint, "grpcs://"):
		target, transport = strings.TrimPrefix(endpoint, "grpcs://"), credentials.NewClientTLSFromCert(nil, "")
	default:
		return nil, fmt.Errorf("invalid blob-cache endpoint %q: write grpc://host:port or grpcs://host:port", endpoint)
	}
	if target == "" || strings.Contains(target, "/") {
		return nil, fmt.Errorf("invalid blob-cache endpoint %q: write grpc://host:port or grpcs://host:port", endpoint)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(transport))
	if err != nil {
		return nil, fmt.Errorf("blob cache %s: %w", endpoint, err)
	}
	return &Client{endpoint: endpoint, conn: conn, blobs: pb.NewBlobsClient(conn)}, nil
}

// Endpoint names the service in messages.
func (c *Client) Endpoint() string { return c.endpoint }

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Commit registers blobs with the registry and returns those its cache does not have.
// All blobs must share one digest algorithm, because the service takes one digest
// function per call.
func (c *Client) Commit(ctx context.Context, blobs []ocispec.Descriptor) ([]ocispec.Descriptor, error) {
	if len(blobs) == 0 {
		return nil, nil
	}
	algorithm := blobs[0].Digest.Algorithm()
	function, ok := map[digest.Algorithm]repb.DigestFunction_Value{
		digest.SHA256: repb.DigestFunction_SHA256,
		digest.SHA512: repb.DigestFunction_SHA512,
	}[algorithm]
	if !ok {
		return nil, fmt.Errorf("blob cache %s: digest algorithm %s is not supported; use sha256", c.endpoint, algorithm)
	}

	req := &pb.CommitRequest{DigestFunction: function}
	byHash := map[string]ocispec.Descriptor{}
	for _, desc := range blobs {
		if desc.Digest.Algorithm() != algorithm {
			return nil, fmt.Errorf("blob cache %s: blob %s uses %s, but the others use %s", c.endpoint, desc.Digest, desc.Digest.Algorithm(), algorithm)
		}
		byHash[desc.Digest.Encoded()] = desc
		req.BlobDigests = append(req.BlobDigests, &repb.Digest{Hash: desc.Digest.Encoded(), SizeBytes: desc.Size})
	}

	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	res, err := c.blobs.Commit(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("blob cache %s: Commit: %w", c.endpoint, err)
	}
	var missing []ocispec.Descriptor
	for _, d := range res.MissingBlobDigests {
		desc, ok := byHash[d.Hash]
		if !ok {
			return nil, fmt.Errorf("blob cache %s: Commit reported blob %s missing, which was not asked about", c.endpoint, d.Hash)
		}
		missing = append(missing, desc)
	}
	return missing, nil
}
