// Package filesystem is the registry's embedded blob store, where blobs are files under a data
// folder. Uploads stream into session files in the same filesystem, hashed while written and
// renamed into place on commit, so no upload is buffered in memory.
//
// Layout under the folder given to New:
//
//	blobs/<algorithm>/<first two hex digits>/<hex>   committed blobs
//	uploads/<session id>                            upload sessions
package filesystem

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/registry/blobstore"
)

// Store keeps blobs as files.
type Store struct {
	blobDir string
	uploads *Uploads
}

var _ blobstore.Store = (*Store)(nil)

// New returns the store kept in dir, creating its folders if needed.
func New(dir string) (*Store, error) {
	blobDir := filepath.Join(dir, "blobs")
	if err := os.MkdirAll(blobDir, 0o755); err != nil {
		return nil, fmt.Errorf("create blob folder %s: %w", blobDir, err)
	}
	uploads, err := NewUploads(filepath.Join(dir, "uploads"))
	if err != nil {
		return nil, err
	}
	uploads.direct.Store(true)
	return &Store{blobDir: blobDir, uploads: uploads}, nil
}

// Uploads returns the store's upload sessions, for purging stale ones.
func (s *Store) Uploads() *Uploads { return s.uploads }

func (s *Store) path(dgst digest.Digest) (string, error) {
	if err := blobstore.ValidateDigest(dgst); err != nil {
		return "", err
	}
	hex := dgst.Encoded()
	return filepath.Join(s.blobDir, string(dgst.Algorithm()), hex[:2], hex), nil
}

// Stat returns the blob's size.
func (s *Store) Stat(ctx context.Context, dgst digest.Digest) (int64, error) {
	path, err := s.path(dgst)
	if err != nil {
		return 0, err
	}
	info, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("blob %s: %w", dgst, blobstore.ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("stat blob %s: %w", dgst, err)
	}
	return info.Size(), nil
}

// Open returns the blob's bytes from offset.
func (s *Store) Open(ctx context.Context, dgst digest.Digest, offset int64) (io.ReadCloser, error) {
	path, err := s.path(dgst)
	if err != nil {
		return nil, err
	}
	file, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s: %w", dgst, blobstore.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", dgst, err)
	}
	if offset > 0 {
		if _, err := file.Seek(offset, io.SeekStart); err != nil {
			file.Close()
			return nil, fmt.Errorf("seek blob %s to offset %d: %w", dgst, offset, err)
		}
	}
	return file, nil
}

// Create starts an upload session.
func (s *Store) Create(ctx context.Context) (blobstore.Writer, error) {
	upload, err := s.uploads.Create(ctx)
	if err != nil {
		return nil, err
	}
	return &writer{store: s, Upload: upload}, nil
}

// Resume reopens an upload session.
func (s *Store) Resume(ctx context.Context, id string) (blobstore.Writer, error) {
	upload, err := s.uploads.Resume(ctx, id)
	if err != nil {
		return nil, err
	}
	return &writer{store: s, Upload: upload}, nil
}

// Delete removes the blob's file.
func (s *Store) Delete(ctx context.Context, dgst digest.Digest) error {
	path, err := s.path(dgst)
	if err != nil {
		return err
	}
	err = os.Remove(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("blob %s: %w", dgst, blobstore.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("delete blob %s: %w", dgst, err)
	}
	return nil
}

type writer struct {
	store *Store
	*Upload
}

func (w *writer) Commit(ctx context.Context, expected digest.Digest) error {
	if err := w.Verify(expected); err != nil {
		return err
	}
	path, err := w.store.path(expected)
	if err != nil {
		return err
	}
	return w.MoveTo(path)
}

func (w *writer) Cancel(ctx context.Context) error {
	return w.Upload.Cancel()
}
