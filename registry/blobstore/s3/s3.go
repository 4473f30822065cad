// Package s3 is a blob store whose blobs are objects in an S3 bucket, under the key
// <prefix><algorithm>/<hex>.
//
// Uploads are staged in local files (filesystem.Uploads) and copied to the bucket on commit,
// once their digest is verified. So a chunked upload keeps its bytes and its running sha256 in
// one local file across PATCH requests and registry restarts, and no object ever holds bytes
// that do not match its key. Large blobs go to the bucket as a multipart upload whose parts are
// sections of the staged file, so no part is held in memory.
//
// GET is streamed from the bucket, or redirected to a presigned URL when
// Options.Redirect is set.
//
// NOTE: upload sessions live on this machine's disk, so registry replicas that share a bucket
// behind a load balancer need sticky sessions for chunked uploads.
package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/registry/blobstore"
	"github.com/rulesimg/img/registry/blobstore/filesystem"
)

// Default sizes of the multipart upload made on commit.
const (
	// DefaultPartSize is the size of one part. S3 accepts parts of 5 MiB to 5 GiB and at most
	// 10,000 parts, so blobs over 625 GiB get larger parts (see partSizeFor).
	DefaultPartSize = 64 << 20

	// DefaultPartConcurrency is how many parts are sent at once.
	DefaultPartConcurrency = 4

	// maxParts is S3's limit on the parts of one multipart upload.
	maxParts = 10_000

	// minPartSize is S3's smallest part other than the last.
	minPartSize = 5 << 20
)

// Options configures a Store.
type Options struct {
	// Bucket is the bucket that holds the blobs. Required.
	Bucket string

	// Prefix is put before every key, for example "registry/"; a missing trailing slash is
	// added.
	Prefix string

	// StagingDir holds upload sessions until their commit. Required.
	StagingDir string

	// Redirect makes GET of a whole blob respond with a redirect to a presigned URL.
	Redirect bool

	// PresignExpiry is how long a presigned URL is valid; 0 means 15 minutes.
	PresignExpiry time.Duration

	// PresignMargin is the validity a cached presigned URL must have left to be handed out
	// again; 0 means 5 minutes. A client that follows the redirect later than that, or reads
	// a blob for longer, can see the URL expire.
	PresignMargin time.Duration

	// PartSize and PartConcurrency shape the multipart upload on commit; 0 means
	// DefaultPartSize and DefaultPartConcurrency.
	PartSize        int64
	PartConcurrency int

	// Logger receives the store's log lines; nil means slog.Default().
	Logger *slog.Logger
}

// Store keeps blobs as objects in a bucket.
type Store struct {
	client  *awss3.Client
	bucket  string
	prefix  string
	uploads *filesystem.Uploads
	logger  *slog.Logger

	partSize        int64
	partConcurrency int

	// presigner is nil unless Options.Redirect is set.
	presigner *presigner
}

var (
	_ blobstore.Store      = (*Store)(nil)
	_ blobstore.Redirector = (*Store)(nil)
)

// New returns a store over client with the given options.
func New(client *awss3.Client, opts Options) (*Store, error) {
	if opts.Bucket == "" {
		return nil, errors.New("s3 blob store: a bucket is required; pass --s3-bucket")
	}
	if opts.StagingDir == "" {
		return nil, errors.New("s3 blob store: a staging folder for uploads is required")
	}
	uploads, err := filesystem.NewUploads(opts.StagingDir)
	if err != nil {
		return nil, err
	}

	prefix := opts.Prefix
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	s := &Store{
		client:          client,
		bucket:          opts.Bucket,
		prefix:          prefix,
		uploads:         uploads,
		logger:          opts.Logger,
		partSize:        opts.PartSize,
		partConcurrency: opts.PartConcurrency,
	}
	if s.logger == nil {
		s.logger = slog.Default()
	}
	if s.partSize <= 0 {
		s.partSize = DefaultPartSize
	}
	if s.partSize < minPartSize {
		return nil, fmt.Errorf("s3 blob store: part size %d is below S3's minimum of %d bytes", s.partSize, minPartSize)
	}
	if s.partConcurrency <= 0 {
		s.partConcurrency = DefaultPartConcurrency
	}
	if opts.Redirect {
		s.presigner = newPresigner(client, s.bucket, opts.PresignExpiry, opts.PresignMargin)
	}
	return s, nil
}

// Uploads returns the staged upload sessions, for purging stale ones.
func (s *Store) Uploads() *filesystem.Uploads { return s.uploads }

// Key returns the object key of a blob: <prefix><algorithm>/<hex>.
func (s *Store) Key(dgst digest.Digest) string {
	return s.prefix + string(dgst.Algorithm()) + "/" + dgst.Encoded()
}

func (s *Store) key(dgst digest.Digest) (string, error) {
	if err := blobstore.ValidateDigest(dgst); err != nil {
		return "", err
	}
	return s.Key(dgst), nil
}

// Stat returns the object's size from HeadObject.
func (s *Store) Stat(ctx context.Context, dgst digest.Digest) (int64, error) {
	key, err := s.key(dgst)
	if err != nil {
		return 0, err
	}
	head, err := s.client.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		return 0, s.objectError("stat", dgst, key, err)
	}
	return aws.ToInt64(head.ContentLength), nil
}

// Open streams the object from offset. The body comes straight from the bucket's response.
func (s *Store) Open(ctx context.Context, dgst digest.Digest, offset int64) (io.ReadCloser, error) {
	key, err := s.key(dgst)
	if err != nil {
		return nil, err
	}
	input := &awss3.GetObjectInput{Bucket: &s.bucket, Key: &key}
	if offset > 0 {
		input.Range = aws.String(fmt.Sprintf("bytes=%d-", offset))
	}
	object, err := s.client.GetObject(ctx, input)
	if err != nil {
		if offset > 0 && httpStatus(err) == http.StatusRequestedRangeNotSatisfiable {
			// The offset is at the end of the object: nothing is left to read.
			return io.NopCloser(strings.NewReader("")), nil
		}
		return nil, s.objectError("read", dgst, key, err)
	}
	return object.Body, nil
}

// Create starts an upload staged in a local file.
func (s *Store) Create(ctx context.Context) (blobstore.Writer, error) {
	upload, err := s.uploads.Create(ctx)
	if err != nil {
		return nil, err
	}
	return &writer{store: s, Upload: upload}, nil
}

// Resume reopens a staged upload.
func (s *Store) Resume(ctx context.Context, id string) (blobstore.Writer, error) {
	upload, err := s.uploads.Resume(ctx, id)
	if err != nil {
		return nil, err
	}
	return &writer{store: s, Upload: upload}, nil
}

// Delete removes the object. S3 reports success for a missing key, so the store checks with
// HeadObject first to return ErrNotFound as the interface promises.
func (s *Store) Delete(ctx context.Context, dgst digest.Digest) error {
	key, err := s.key(dgst)
	if err != nil {
		return err
	}
	if _, err := s.Stat(ctx, dgst); err != nil {
		return err
	}
	if _, err := s.client.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: &s.bucket, Key: &key}); err != nil {
		return s.objectError("delete", dgst, key, err)
	}
	if s.presigner != nil {
		s.presigner.forget(key)
	}
	return nil
}

// RedirectURL returns a presigned GET URL of the blob when Options.Redirect is set.
func (s *Store) RedirectURL(ctx context.Context, dgst digest.Digest) (string, bool, error) {
	if s.presigner == nil {
		return "", false, nil
	}
	key, err := s.key(dgst)
	if err != nil {
		return "", false, err
	}
	url, err := s.presigner.url(ctx, key)
	if err != nil {
		return "", false, fmt.Errorf("presign GET of blob %s (s3://%s/%s): %w", dgst, s.bucket, key, err)
	}
	return url, true, nil
}

// objectError wraps an S3 error with the blob and key, turning a missing key into
// blobstore.ErrNotFound.
func (s *Store) objectError(operation string, dgst digest.Digest, key string, err error) error {
	var noKey *types.NoSuchKey
	var notFound *types.NotFound
	if errors.As(err, &noKey) || errors.As(err, &notFound) {
		return fmt.Errorf("blob %s (s3://%s/%s): %w", dgst, s.bucket, key, blobstore.ErrNotFound)
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode() == "NoSuchBucket" {
		return fmt.Errorf("%s blob %s: bucket %s does not exist; create it or fix --s3-bucket: %w", operation, dgst, s.bucket, err)
	}
	if httpStatus(err) == http.StatusNotFound {
		return fmt.Errorf("blob %s (s3://%s/%s): %w", dgst, s.bucket, key, blobstore.ErrNotFound)
	}
	return fmt.Errorf("%s blob %s (s3://%s/%s): %w", operation, dgst, s.bucket, key, err)
}

// httpStatus returns the HTTP status of an S3 error response, or 0.
func httpStatus(err error) int {
	var response *smithyhttp.ResponseError
	if errors.As(err, &response) {
		return response.HTTPStatusCode()
	}
	return 0
}
