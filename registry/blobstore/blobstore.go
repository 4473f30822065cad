// Package blobstore defines the content interface behind the registry's blob endpoints and
// the decorators that compose stores: a chain of stores, a size index, an existence cache and
// metrics. Stores hold content addressed by digest; they know nothing of repositories.
//
// A store is a small type (filesystem, reapi, upstream, s3) and behaviour is added by wrapping,
// the way Buildbarn's BlobAccess decorators compose, so the registry gets one Store.
package blobstore

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
)

// Registering the hash functions makes digest.SHA256 and digest.SHA512 available to go-digest,
// which looks them up in the crypto registry.
var (
	_ = sha256.New
	_ = sha512.New
)

var (
	// ErrNotFound reports that a store does not hold the blob (never stored, deleted, or evicted
	// by a cache). Handlers turn it into 404 BLOB_UNKNOWN.
	ErrNotFound = errors.New("blob not found")

	// ErrUploadUnknown reports that an upload session id names no open session.
	ErrUploadUnknown = errors.New("upload session not found")

	// ErrDigestMismatch reports that the uploaded bytes do not hash to the digest given at commit.
	ErrDigestMismatch = errors.New("uploaded content does not match the digest")

	// ErrReadOnly reports that a store does not accept uploads or deletes, for example a store
	// that reads from another registry.
	ErrReadOnly = errors.New("blob store is read-only")

	// ErrUnsupportedDigest reports a digest algorithm that the store cannot address, for
	// example sha512 in a cache that speaks only sha256.
	ErrUnsupportedDigest = errors.New("digest algorithm not supported by this blob store")
)

// Store holds blobs by digest.
type Store interface {
	// Stat returns the size of a blob in bytes, or ErrNotFound.
	Stat(ctx context.Context, dgst digest.Digest) (int64, error)

	// Open returns a reader of the blob's bytes from offset to the end, or ErrNotFound.
	Open(ctx context.Context, dgst digest.Digest, offset int64) (io.ReadCloser, error)

	// Create starts an upload session. The returned Writer is held by the caller until Close,
	// Commit or Cancel.
	Create(ctx context.Context) (Writer, error)

	// Resume reopens an upload session by its id, so the next request of a chunked upload (or a
	// retry after a dropped connection) continues where the stored bytes end. It waits while
	// another request holds the session, and returns ErrUploadUnknown for an unknown id.
	Resume(ctx context.Context, id string) (Writer, error)

	// Delete removes a blob, or returns ErrNotFound.
	Delete(ctx context.Context, dgst digest.Digest) error
}

// Writer is one upload session. Bytes written are stored at once, so Size reports what a
// resumed session holds even after the request that wrote them failed midway.
type Writer interface {
	io.Writer

	// ReadFrom appends everything the reader yields, like Write, in whatever pieces suit the
	// store. It keeps the bytes that arrived before a read error.
	io.ReaderFrom

	// ID names the session for Resume. It contains only URL-safe characters.
	ID() string

	// Size returns the number of bytes stored in the session so far.
	Size() int64

	// Commit checks that the stored bytes hash to expected and makes the blob visible under
	// it. On ErrDigestMismatch the session stays open, so the caller decides to cancel it.
	// Commit ends the session on success.
	Commit(ctx context.Context, expected digest.Digest) error

	// Cancel ends the session and discards its bytes.
	Cancel(ctx context.Context) error

	// Close releases the caller's hold on the session and keeps its bytes for Resume.
	Close() error
}

// Redirector is implemented by stores that can send clients elsewhere for a blob's bytes, for
// example a presigned object-store URL. Handlers respond to GET with a temporary redirect to the
// URL. A store returns ok=false when it has no URL for this blob, and the handler then reads
// the bytes through Open.
type Redirector interface {
	RedirectURL(ctx context.Context, dgst digest.Digest) (url string, ok bool, err error)
}

// ReadOnlyStore is implemented by stores that serve blobs but accept no uploads, such as a store
// that reads from another registry. Chain sends uploads past them.
type ReadOnlyStore interface {
	ReadOnly() bool
}

// IsReadOnly reports whether store declares itself read-only.
func IsReadOnly(store Store) bool {
	readOnly, ok := store.(ReadOnlyStore)
	return ok && readOnly.ReadOnly()
}

// SizeIndex records blob sizes by digest. Stores whose backend addresses blobs by digest and
// size (a REAPI cache) need it, because a registry URL carries only the digest.
type SizeIndex interface {
	// BlobSize returns the recorded size, or ErrNotFound.
	BlobSize(ctx context.Context, dgst digest.Digest) (int64, error)
	PutBlobSize(ctx context.Context, dgst digest.Digest, size int64) error
	DeleteBlobSize(ctx context.Context, dgst digest.Digest) error
}

// AliasIndex maps a digest to another digest of the same bytes. A store whose backend addresses
// blobs only by sha256 (a REAPI cache) keeps sha512 blobs under their sha256 digest with an alias.
type AliasIndex interface {
	// Alias returns the digest recorded for dgst, or ErrNotFound.
	Alias(ctx context.Context, dgst digest.Digest) (digest.Digest, error)
	PutAlias(ctx context.Context, dgst, target digest.Digest) error
	DeleteAlias(ctx context.Context, dgst digest.Digest) error
}

// ValidateDigest checks that dgst is well formed and uses sha256 or sha512, the algorithms the
// registry accepts.
func ValidateDigest(dgst digest.Digest) error {
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("invalid digest %q: %w", dgst, err)
	}
	switch dgst.Algorithm() {
	case digest.SHA256, digest.SHA512:
		return nil
	default:
		return fmt.Errorf("invalid digest %q: algorithm %s is not supported; use sha256 or sha512", dgst, dgst.Algorithm())
	}
}

type repositoryKey struct{}

// WithRepository returns ctx carrying the repository a request names. Stores address blobs by
// digest alone, except one that reads from another registry, whose URLs name a repository.
func WithRepository(ctx context.Context, repository string) context.Context {
	return context.WithValue(ctx, repositoryKey{}, repository)
}

// RepositoryFrom returns the repository set by WithRepository, and false when there is none
// (for example a blob-cache Commit, which names no repository).
func RepositoryFrom(ctx context.Context) (string, bool) {
	repository, ok := ctx.Value(repositoryKey{}).(string)
	return repository, ok && repository != ""
}
