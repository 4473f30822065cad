package blobcache_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/rulesimg/img/internal/testpeer"
	blobcachepb "github.com/rulesimg/img/proto/blobcache"
	"github.com/rulesimg/img/reapi"
	"github.com/rulesimg/img/registry/blobcache"
	"github.com/rulesimg/img/registry/blobstore"
	"github.com/rulesimg/img/registry/metadata"
)

// startService serves the blob-cache service over a bazel-remote cache on 127.0.0.1 and
// returns a client of it, the cache client and the size index.
func startService(t *testing.T) (blobcachepb.BlobsClient, *reapi.Client, *metadata.Bolt) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts bazel-remote")
	}
	ctx := context.Background()
	cache := testpeer.StartBazelRemote(t)
	cas, err := reapi.Dial(ctx, cache.Endpoint(), reapi.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cas.Close() })
	index, err := metadata.OpenBolt(filepath.Join(t.TempDir(), "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { index.Close() })

	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer()
	blobcachepb.RegisterBlobsServer(server, blobcache.NewServer(cas, index, nil))
	go server.Serve(listener)
	t.Cleanup(server.Stop)

	conn, err := grpc.NewClient(listener.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return blobcachepb.NewBlobsClient(conn), cas, index
}

func TestCommitRecordsPresentReturnsMissing(t *testing.T) {
	ctx := context.Background()
	client, cas, index := startService(t)
	present := []byte("already in the cache")
	presentDigest := reapi.DigestOf(present)
	if err := cas.Write(ctx, presentDigest, bytes.NewReader(present)); err != nil {
		t.Fatal(err)
	}
	missingDigest := reapi.DigestOf([]byte("never uploaded"))

	resp, err := client.Commit(ctx, &blobcachepb.CommitRequest{
		BlobDigests: []*repb.Digest{
			{Hash: presentDigest.Hash, SizeBytes: presentDigest.Size},
			{Hash: missingDigest.Hash, SizeBytes: missingDigest.Size},
		},
		DigestFunction: repb.DigestFunction_SHA256,
	})
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}

	if len(resp.MissingBlobDigests) != 1 || resp.MissingBlobDigests[0].Hash != missingDigest.Hash {
		t.Errorf("missing = %v, want only %s", resp.MissingBlobDigests, missingDigest)
	}
	size, err := index.BlobSize(ctx, digest.NewDigestFromEncoded(digest.SHA256, presentDigest.Hash))
	if err != nil || size != presentDigest.Size {
		t.Errorf("recorded size of present blob = %d, %v, want %d", size, err, presentDigest.Size)
	}
	_, err = index.BlobSize(ctx, digest.NewDigestFromEncoded(digest.SHA256, missingDigest.Hash))
	if !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("recorded size of missing blob = %v, want ErrNotFound", err)
	}
}

func TestCommitRejectsInvalidRequests(t *testing.T) {
	ctx := context.Background()
	client, _, _ := startService(t)

	cases := []struct {
		name    string
		request *blobcachepb.CommitRequest
	}{
		{"sha512 digest function", &blobcachepb.CommitRequest{DigestFunction: repb.DigestFunction_SHA512}},
		{"malformed hash", &blobcachepb.CommitRequest{BlobDigests: []*repb.Digest{{Hash: "xyz", SizeBytes: 3}}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := client.Commit(ctx, tc.request)
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("Commit = %v, want InvalidArgument", err)
			}
		})
	}
}
