// Package blobcache serves the gRPC blob-cache service that cas_registry pushes call before
// they put manifests: Commit records the sizes of blobs the remote cache holds, so the
// registry's reapi store can serve them, and returns the blobs the cache lacks.
package blobcache

import (
	"context"
	"log/slog"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/rulesimg/img/proto/blobcache"
	"github.com/rulesimg/img/reapi"
	"github.com/rulesimg/img/registry/blobstore"
)

// maxDigestsPerCommit bounds one request. A Digest message is about 75 bytes, so 50,000 of them
// stay under the 4 MiB message limit gRPC servers apply by default.
const maxDigestsPerCommit = 50_000

// FindMissinger is the part of the REAPI client Commit uses; *reapi.Client implements it.
type FindMissinger interface {
	FindMissing(ctx context.Context, digests []reapi.Digest) ([]reapi.Digest, error)
}

// Server implements blobcache.BlobsServer.
type Server struct {
	blobcache.UnimplementedBlobsServer

	cas    FindMissinger
	sizes  blobstore.SizeIndex
	logger *slog.Logger
}

// NewServer returns a Server that checks blobs in cas and records sizes in sizes.
func NewServer(cas FindMissinger, sizes blobstore.SizeIndex, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.Default()
	}
	return &Server{cas: cas, sizes: sizes, logger: logger}
}

// Commit queries the cache for the blobs it lacks, records the sizes of the others and returns
// the missing ones.
func (s *Server) Commit(ctx context.Context, req *blobcache.CommitRequest) (*blobcache.CommitResponse, error) {
	switch req.GetDigestFunction() {
	case repb.DigestFunction_UNKNOWN, repb.DigestFunction_SHA256:
	default:
		return nil, status.Errorf(codes.InvalidArgument, "digest function %s is not supported; the registry addresses cache blobs by SHA256", req.GetDigestFunction())
	}
	if len(req.GetBlobDigests()) > maxDigestsPerCommit {
		return nil, status.Errorf(codes.InvalidArgument, "request lists %d digests; send at most %d per Commit", len(req.GetBlobDigests()), maxDigestsPerCommit)
	}

	digests := make([]reapi.Digest, 0, len(req.GetBlobDigests()))
	for _, d := range req.GetBlobDigests() {
		casDigest := reapi.Digest{Hash: d.GetHash(), Size: d.GetSizeBytes()}
		if err := casDigest.Validate(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "%v", err)
		}
		digests = append(digests, casDigest)
	}

	missing, err := s.cas.FindMissing(ctx, digests)
	if err != nil {
		s.logger.Error("blob-cache Commit: FindMissingBlobs failed", "blobs", len(digests), "error", err)
		return nil, status.Errorf(codes.Unavailable, "check blobs in the remote cache: %v", err)
	}
	isMissing := make(map[reapi.Digest]bool, len(missing))
	for _, d := range missing {
		isMissing[d] = true
	}

	response := &blobcache.CommitResponse{}
	present := map[digest.Digest]int64{}
	for _, d := range digests {
		if isMissing[d] {
			response.MissingBlobDigests = append(response.MissingBlobDigests, &repb.Digest{Hash: d.Hash, SizeBytes: d.Size})
			continue
		}
		present[digest.NewDigestFromEncoded(digest.SHA256, d.Hash)] = d.Size
	}
	if err := s.recordSizes(ctx, present); err != nil {
		s.logger.Error("blob-cache Commit: recording blob sizes failed", "blobs", len(present), "error", err)
		return nil, status.Errorf(codes.Internal, "record blob sizes: %v", err)
	}
	s.logger.Info("blob-cache Commit", "blobs", len(digests), "recorded", len(present), "missing", len(response.MissingBlobDigests))
	return response, nil
}

// bulkSizeIndex is implemented by size indexes that record many sizes in one transaction, such
// as metadata.Bolt, which saves one disk sync per blob.
type bulkSizeIndex interface {
	PutBlobSizes(ctx context.Context, sizes map[digest.Digest]int64) error
}

func (s *Server) recordSizes(ctx context.Context, sizes map[digest.Digest]int64) error {
	if bulk, ok := s.sizes.(bulkSizeIndex); ok {
		return bulk.PutBlobSizes(ctx, sizes)
	}
	for dgst, size := range sizes {
		if err := s.sizes.PutBlobSize(ctx, dgst, size); err != nil {
			return err
		}
	}
	return nil
}
