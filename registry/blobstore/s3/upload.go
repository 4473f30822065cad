package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/rulesimg/img/registry/blobstore/filesystem"
)

// abortTimeout bounds the AbortMultipartUpload sent after a failed commit, which runs even when
// the request's context is done.
const abortTimeout = 30 * time.Second

type writer struct {
	store *Store
	*filesystem.Upload
}

// Commit verifies the staged bytes, copies them to the bucket under the blob's key and removes
// the staged file. The object appears only when the copy is complete, because PutObject and
// CompleteMultipartUpload are atomic in S3.
func (w *writer) Commit(ctx context.Context, expected digest.Digest) error {
	if err := w.Verify(expected); err != nil {
		return err
	}
	key, err := w.store.key(expected)
	if err != nil {
		return err
	}

	// Keys are digests, so an object already under the key with the same size holds these
	// bytes, and copying them again would only cost time.
	if size, err := w.store.Stat(ctx, expected); err == nil && size == w.Size() {
		w.store.logger.Info("blob already in S3; discarding the staged upload", "digest", expected.String(), "key", key, "upload_id", w.ID())
		return w.Discard()
	}

	file, err := os.Open(w.Path())
	if err != nil {
		return fmt.Errorf("open staged upload %s of blob %s: %w", w.ID(), expected, err)
	}
	defer file.Close()

	start := time.Now()
	size := w.Size()
	partSize := w.store.partSizeFor(size)
	if size <= partSize {
		err = w.store.putObject(ctx, key, file, size)
	} else {
		err = w.store.putMultipart(ctx, key, file, size, partSize)
	}
	if err != nil {
		return fmt.Errorf("copy blob %s (%d bytes) to s3://%s/%s: %w", expected, size, w.store.bucket, key, err)
	}
	w.store.logger.Info("blob stored in S3", "digest", expected.String(), "key", key, "bytes", size,
		"upload_id", w.ID(), "duration", time.Since(start))
	return w.Discard()
}

func (w *writer) Cancel(ctx context.Context) error {
	return w.Upload.Cancel()
}

// partSizeFor returns the part size for a blob of size bytes: the configured size, or larger
// when the blob would otherwise need more than S3's 10,000 parts.
func (s *Store) partSizeFor(size int64) int64 {
	needed := (size + maxParts - 1) / maxParts
	return max(s.partSize, needed)
}

// putObject sends the whole file in one request. The body is an io.ReadSeeker with a known
// length, so the SDK hashes it for the signature and sends it as is: some S3 servers
// (gofakes3 v1.2.0) store the frames of an aws-chunked body as object data.
func (s *Store) putObject(ctx context.Context, key string, file *os.File, size int64) error {
	_, err := s.client.PutObject(ctx, &awss3.PutObjectInput{
		Bucket:        &s.bucket,
		Key:           &key,
		Body:          io.NewSectionReader(file, 0, size),
		ContentLength: aws.Int64(size),
		ContentType:   aws.String("application/octet-stream"),
	})
	return err
}

// putMultipart sends the file as parts of partSize bytes, each a section of the staged file,
// with up to partConcurrency parts in flight. On failure it aborts the multipart upload, so
// the bucket keeps no orphaned parts.
func (s *Store) putMultipart(ctx context.Context, key string, file *os.File, size, partSize int64) error {
	created, err := s.client.CreateMultipartUpload(ctx, &awss3.CreateMultipartUploadInput{
		Bucket:      &s.bucket,
		Key:         &key,
		ContentType: aws.String("application/octet-stream"),
	})
	if err != nil {
		return fmt.Errorf("start multipart upload: %w", err)
	}
	uploadID := aws.ToString(created.UploadId)

	parts, err := s.uploadParts(ctx, key, uploadID, file, size, partSize)
	if err == nil {
		_, err = s.client.CompleteMultipartUpload(ctx, &awss3.CompleteMultipartUploadInput{
			Bucket:          &s.bucket,
			Key:             &key,
			UploadId:        &uploadID,
			MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
		})
		if err != nil {
			err = fmt.Errorf("complete multipart upload %s: %w", uploadID, err)
		}
	}
	if err != nil {
		s.abortMultipart(key, uploadID)
		return err
	}
	return nil
}

func (s *Store) uploadParts(ctx context.Context, key, uploadID string, file *os.File, size, partSize int64) ([]types.CompletedPart, error) {
	count := int((size + partSize - 1) / partSize)
	parts := make([]types.CompletedPart, count)

	group, groupCtx := errgroup.WithContext(ctx)
	group.SetLimit(s.partConcurrency)
	for i := range count {
		offset := int64(i) * partSize
		length := min(partSize, size-offset)
		number := int32(i + 1)
		group.Go(func() error {
			part, err := s.client.UploadPart(groupCtx, &awss3.UploadPartInput{
				Bucket:        &s.bucket,
				Key:           &key,
				UploadId:      &uploadID,
				PartNumber:    &number,
				Body:          io.NewSectionReader(file, offset, length),
				ContentLength: aws.Int64(length),
			})
			if err != nil {
				return fmt.Errorf("upload part %d of %d (bytes %d-%d): %w", number, count, offset, offset+length-1, err)
			}
			parts[i] = types.CompletedPart{ETag: part.ETag, PartNumber: &number}
			return nil
		})
	}
	if err := group.Wait(); err != nil {
		return nil, err
	}
	return parts, nil
}

func (s *Store) abortMultipart(key, uploadID string) {
	ctx, cancel := context.WithTimeout(context.Background(), abortTimeout)
	defer cancel()
	_, err := s.client.AbortMultipartUpload(ctx, &awss3.AbortMultipartUploadInput{
		Bucket:   &s.bucket,
		Key:      &key,
		UploadId: &uploadID,
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		s.logger.Warn("aborting a failed multipart upload failed; its parts stay in the bucket until a lifecycle rule removes them",
			slog.String("bucket", s.bucket), slog.String("key", key), slog.String("s3_upload_id", uploadID), slog.String("error", err.Error()))
	}
}
