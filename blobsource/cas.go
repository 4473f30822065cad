package blobsource

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rulesimg/img/reapi"
)

// CAS serves blobs from a Bazel remote cache. OCI digests of SHA-256 blobs are the
// cache's digests, so a blob built by Bazel is found under its OCI digest.
type CAS struct {
	Client *reapi.Client
}

// Open streams desc's bytes from the cache. Reads from offset 0 are hashed, and a
// mismatch fails the read before its last byte is delivered.
func (c CAS) Open(ctx context.Context, desc ocispec.Descriptor, offset int64) (io.ReadCloser, error) {
	d, err := casDigest(desc)
	if err != nil {
		return nil, err
	}
	r, err := c.Client.Open(ctx, d, offset)
	if errors.Is(err, reapi.ErrNotFound) {
		return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return r, err
}

// Describe implements Source.
func (c CAS) Describe(desc ocispec.Descriptor) string {
	return "remote cache " + c.Client.Endpoint()
}

// Endpoint names the cache in messages.
func (c CAS) Endpoint() string {
	return c.Client.Endpoint()
}

// FindMissing returns the blobs the cache does not have.
func (c CAS) FindMissing(ctx context.Context, blobs []ocispec.Descriptor) ([]ocispec.Descriptor, error) {
	byDigest := map[reapi.Digest]ocispec.Descriptor{}
	var digests []reapi.Digest
	for _, desc := range blobs {
		d, err := casDigest(desc)
		if err != nil {
			return nil, err
		}
		byDigest[d] = desc
		digests = append(digests, d)
	}
	missing, err := c.Client.FindMissing(ctx, digests)
	if err != nil {
		return nil, err
	}
	var out []ocispec.Descriptor
	for _, d := range missing {
		out = append(out, byDigest[d])
	}
	return out, nil
}

func casDigest(desc ocispec.Descriptor) (reapi.Digest, error) {
	if desc.Digest.Algorithm() != digest.SHA256 {
		return reapi.Digest{}, fmt.Errorf("blob %s: the remote cache stores SHA-256 digests only", desc.Digest)
	}
	return reapi.Digest{Hash: desc.Digest.Encoded(), Size: desc.Size}, nil
}
