// Package reapi is a blob store whose blobs live in the CAS of a Bazel remote cache (REAPI).
//
// A CAS blob is addressed by its SHA-256 and its size, and a registry URL carries only the
// digest, so the store keeps sizes in a blobstore.SizeIndex. A blob is visible in the registry
// when its size is recorded and the cache reports it present. A blob the cache evicted is
// therefore not found, never an error. Uploads are staged in local files and streamed to the
// cache on commit, when their digest and size are known.
//
// A sha512 blob is stored in the CAS under its sha256 digest, and a blobstore.AliasIndex maps
// the sha512 digest to it, because REAPI caches address blobs by one hash function.
package reapi

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/reapi"
	"github.com/rulesimg/img/registry/blobstore"
	"github.com/rulesimg/img/registry/blobstore/filesystem"
)

// CAS is the part of the REAPI client the store uses; *reapi.Client implements it.
type CAS interface {
	FindMissing(ctx context.Context, digests []reapi.Digest) ([]reapi.Digest, error)
	OpenUnverified(ctx context.Context, d reapi.Digest, offset int64) (io.ReadCloser, error)
	Write(ctx context.Context, d reapi.Digest, r io.Reader) error
}

// Index is the store's record beside the cache: blob sizes and sha512 aliases.
// metadata.Bolt implements it.
type Index interface {
	blobstore.SizeIndex
	blobstore.AliasIndex
}

// Store keeps blobs in a remote cache's CAS.
type Store struct {
	cas     CAS
	index   Index
	uploads *filesystem.Uploads
}

var _ blobstore.Store = (*Store)(nil)

// New returns a store over cas that keeps sizes and aliases in index and stages uploads in
// stagingDir.
func New(cas CAS, index Index, stagingDir string) (*Store, error) {
	uploads, err := filesystem.NewUploads(stagingDir)
	if err != nil {
		return nil, err
	}
	return &Store{cas: cas, index: index, uploads: uploads}, nil
}

// Uploads returns the staged upload sessions, for purging stale ones.
func (s *Store) Uploads() *filesystem.Uploads { return s.uploads }

// casDigest returns the CAS digest of dgst, or ErrNotFound when its size is not recorded.
func (s *Store) casDigest(ctx context.Context, dgst digest.Digest) (reapi.Digest, error) {
	if err := blobstore.ValidateDigest(dgst); err != nil {
		return reapi.Digest{}, err
	}
	size, err := s.index.BlobSize(ctx, dgst)
	if err != nil {
		return reapi.Digest{}, err
	}
	stored := dgst
	if dgst.Algorithm() != digest.SHA256 {
		if stored, err = s.index.Alias(ctx, dgst); err != nil {
			return reapi.Digest{}, err
		}
	}
	return reapi.Digest{Hash: stored.Encoded(), Size: size}, nil
}

// Stat returns the recorded size of a blob that the cache holds.
func (s *Store) Stat(ctx context.Context, dgst digest.Digest) (int64, error) {
	d, err := s.casDigest(ctx, dgst)
	if err != nil {
		return 0, err
	}
	missing, err := s.cas.FindMissing(ctx, []reapi.Digest{d})
	if err != nil {
		return 0, fmt.Errorf("check blob %s in the remote cache: %w", dgst, err)
	}
	if len(missing) > 0 {
		return 0, fmt.Errorf("blob %s (%d bytes) is no longer in the remote cache: %w", dgst, d.Size, blobstore.ErrNotFound)
	}
	return d.Size, nil
}

// Open streams the blob from the cache. The bytes are not hashed on the way, because
// registry clients verify the digest of every blob they pull; their length is checked.
func (s *Store) Open(ctx context.Context, dgst digest.Digest, offset int64) (io.ReadCloser, error) {
	d, err := s.casDigest(ctx, dgst)
	if err != nil {
		return nil, err
	}
	reader, err := s.cas.OpenUnverified(ctx, d, offset)
	if errors.Is(err, reapi.ErrNotFound) {
		return nil, fmt.Errorf("blob %s (%d bytes) is no longer in the remote cache: %w", dgst, d.Size, blobstore.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read blob %s from the remote cache: %w", dgst, err)
	}
	return reader, nil
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

// Delete removes the blob's recorded size, which hides it from the registry. REAPI has no delete, so
// the bytes stay in the cache until it evicts them.
func (s *Store) Delete(ctx context.Context, dgst digest.Digest) error {
	if _, err := s.casDigest(ctx, dgst); err != nil {
		return err
	}
	if err := s.index.DeleteBlobSize(ctx, dgst); err != nil {
		return err
	}
	if dgst.Algorithm() != digest.SHA256 {
		return s.index.DeleteAlias(ctx, dgst)
	}
	return nil
}

type writer struct {
	store *Store
	*filesystem.Upload
}

// Commit verifies the staged bytes, writes them to the cache and records the size, which makes
// the blob visible. A sha512 blob gets its alias recorded before its size.
func (w *writer) Commit(ctx context.Context, expected digest.Digest) error {
	if err := w.Verify(expected); err != nil {
		return err
	}
	stored := expected
	if expected.Algorithm() != digest.SHA256 {
		var err error
		if stored, err = w.Digest(digest.SHA256); err != nil {
			return err
		}
	}

	d := reapi.Digest{Hash: stored.Encoded(), Size: w.Size()}
	if err := w.store.writeMissing(ctx, d, w.Upload); err != nil {
		return fmt.Errorf("write blob %s to the remote cache: %w", expected, err)
	}

	if stored != expected {
		if err := w.store.index.PutAlias(ctx, expected, stored); err != nil {
			return fmt.Errorf("blob %s is in the remote cache as %s but the alias was not recorded: %w", expected, stored, err)
		}
	}
	if err := w.store.index.PutBlobSize(ctx, expected, d.Size); err != nil {
		return fmt.Errorf("blob %s is in the remote cache but its size was not recorded: %w", expected, err)
	}
	return w.Discard()
}

// writeMissing writes the staged bytes unless the cache already holds them, which is common:
// a lazy push streams blobs out of this very cache into the registry.
func (s *Store) writeMissing(ctx context.Context, d reapi.Digest, upload *filesystem.Upload) error {
	missing, err := s.cas.FindMissing(ctx, []reapi.Digest{d})
	if err != nil {
		return err
	}
	if len(missing) == 0 {
		return nil
	}

	file, err := upload.OpenReader()
	if err != nil {
		return err
	}
	defer file.Close()
	return s.cas.Write(ctx, d, file)
}

func (w *writer) Cancel(ctx context.Context) error {
	return w.Upload.Cancel()
}
