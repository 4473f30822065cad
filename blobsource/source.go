// Package blobsource provides the bytes of blobs to the push engine. A source is asked
// for a descriptor's bytes from an offset; the push strategies differ only in which
// sources they chain together.
package blobsource

import (
	"context"
	"errors"
	"fmt"
	"io"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ErrNotFound is returned when a source does not have a blob. Chain then tries the next.
var ErrNotFound = errors.New("blob not found")

// Source opens the bytes of a blob.
type Source interface {
	// Open returns desc's bytes from offset to the end. A source that verifies digests
	// does so only when offset is 0, because the skipped prefix is not hashed. The
	// registry still verifies the whole blob on commit.
	Open(ctx context.Context, desc ocispec.Descriptor, offset int64) (io.ReadCloser, error)
	// Describe names where desc's bytes come from, for error messages and logs.
	Describe(desc ocispec.Descriptor) string
}

// Chain tries each source in turn and returns the first that has the blob.
type Chain []Source

// Open implements Source.
func (c Chain) Open(ctx context.Context, desc ocispec.Descriptor, offset int64) (io.ReadCloser, error) {
	for _, source := range c {
		r, err := source.Open(ctx, desc, offset)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		return r, err
	}
	return nil, fmt.Errorf("blob %s: %w in any source", desc.Digest, ErrNotFound)
}

// Describe implements Source by naming the first source that claims the blob.
func (c Chain) Describe(desc ocispec.Descriptor) string {
	for _, source := range c {
		if has, ok := source.(interface{ Has(ocispec.Descriptor) bool }); ok && !has.Has(desc) {
			continue
		}
		return source.Describe(desc)
	}
	return "no source"
}
