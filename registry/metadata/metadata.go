// Package metadata stores the registry's state beyond blob bytes: manifests, tags, referrers
// and the blob size index. Store is the interface; Bolt is the embedded, crash-safe default.
package metadata

import (
	"context"
	"errors"

	"github.com/opencontainers/go-digest"
)

var (
	// ErrManifestUnknown reports a manifest digest or tag that the repository does not hold.
	ErrManifestUnknown = errors.New("manifest not found")

	// ErrRepositoryUnknown reports a repository that holds no manifest.
	ErrRepositoryUnknown = errors.New("repository not found")
)

// Manifest is a stored manifest with what the handlers need to serve and index it.
type Manifest struct {
	Digest    digest.Digest
	MediaType string
	Content   []byte

	// Subject is the digest of the manifest this one refers to, empty when it has none.
	Subject digest.Digest

	// Referrer is the descriptor listed by the referrers API for Subject.
	Referrer *Descriptor
}

// Descriptor is an entry of a referrers list, in the OCI descriptor's JSON form.
type Descriptor struct {
	MediaType    string            `json:"mediaType"`
	Digest       digest.Digest     `json:"digest"`
	Size         int64             `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

// Store is the registry's metadata. Every method is atomic: after a crash, a write is either
// complete or absent.
type Store interface {
	// PutManifest stores the manifest in repository and points each of tags at it, in one
	// transaction.
	PutManifest(ctx context.Context, repository string, manifest Manifest, tags []string) error

	// Manifest returns a manifest by digest, or ErrManifestUnknown.
	Manifest(ctx context.Context, repository string, dgst digest.Digest) (Manifest, error)

	// ResolveTag returns the digest a tag points at, or ErrManifestUnknown.
	ResolveTag(ctx context.Context, repository, tag string) (digest.Digest, error)

	// DeleteManifest removes a manifest, the tags pointing at it and its referrers entry, or
	// returns ErrManifestUnknown.
	DeleteManifest(ctx context.Context, repository string, dgst digest.Digest) error

	// DeleteTag removes a tag, or returns ErrManifestUnknown.
	DeleteTag(ctx context.Context, repository, tag string) error

	// Tags returns up to n tags in lexical order after last (all when n < 0), or
	// ErrRepositoryUnknown.
	Tags(ctx context.Context, repository, last string, n int) ([]string, error)

	// Referrers returns the descriptors of manifests whose subject is dgst.
	Referrers(ctx context.Context, repository string, subject digest.Digest) ([]Descriptor, error)

	// Repositories returns up to n repository names in lexical order after last (all when n < 0).
	Repositories(ctx context.Context, last string, n int) ([]string, error)

	// BlobSize, PutBlobSize and DeleteBlobSize are the size index (blobstore.SizeIndex);
	// BlobSize returns blobstore.ErrNotFound for an unrecorded digest.
	BlobSize(ctx context.Context, dgst digest.Digest) (int64, error)
	PutBlobSize(ctx context.Context, dgst digest.Digest, size int64) error
	DeleteBlobSize(ctx context.Context, dgst digest.Digest) error

	// UnlinkBlob hides a blob from one repository: HEAD and GET there report it unknown
	// until LinkBlobs links it again. The bytes stay, because every repository shares them.
	UnlinkBlob(ctx context.Context, repository string, dgst digest.Digest) error
	// LinkBlobs undoes UnlinkBlob for each of dgsts in repository.
	LinkBlobs(ctx context.Context, repository string, dgsts ...digest.Digest) error
	// BlobUnlinked reports whether UnlinkBlob hid the blob from repository.
	BlobUnlinked(ctx context.Context, repository string, dgst digest.Digest) (bool, error)

	// Alias, PutAlias and DeleteAlias map a digest to another digest of the same bytes
	// (blobstore.AliasIndex), for stores that keep blobs under one algorithm.
	Alias(ctx context.Context, dgst digest.Digest) (digest.Digest, error)
	PutAlias(ctx context.Context, dgst, target digest.Digest) error
	DeleteAlias(ctx context.Context, dgst digest.Digest) error

	Close() error
}
