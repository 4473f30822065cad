package blobstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
)

// sizeIndexed records the size of every committed blob in an index and removes it on delete.
type sizeIndexed struct {
	Store
	index SizeIndex
}

// WithSizeIndex returns store with its committed blob sizes recorded in index. Stores that
// need a size to address a blob (a REAPI cache) read the same index.
func WithSizeIndex(store Store, index SizeIndex) Store {
	return &sizeIndexed{Store: store, index: index}
}

func (s *sizeIndexed) Create(ctx context.Context) (Writer, error) {
	w, err := s.Store.Create(ctx)
	if err != nil {
		return nil, err
	}
	return &sizeIndexedWriter{Writer: w, index: s.index}, nil
}

func (s *sizeIndexed) Resume(ctx context.Context, id string) (Writer, error) {
	w, err := s.Store.Resume(ctx, id)
	if err != nil {
		return nil, err
	}
	return &sizeIndexedWriter{Writer: w, index: s.index}, nil
}

func (s *sizeIndexed) Delete(ctx context.Context, dgst digest.Digest) error {
	err := s.Store.Delete(ctx, dgst)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	if indexErr := s.index.DeleteBlobSize(ctx, dgst); indexErr != nil {
		return indexErr
	}
	return err
}

func (s *sizeIndexed) RedirectURL(ctx context.Context, dgst digest.Digest) (string, bool, error) {
	if redirector, ok := s.Store.(Redirector); ok {
		return redirector.RedirectURL(ctx, dgst)
	}
	return "", false, nil
}

type sizeIndexedWriter struct {
	Writer
	index SizeIndex
}

func (w *sizeIndexedWriter) Commit(ctx context.Context, expected digest.Digest) error {
	size := w.Size()
	if err := w.Writer.Commit(ctx, expected); err != nil {
		return err
	}
	if err := w.index.PutBlobSize(ctx, expected, size); err != nil {
		return fmt.Errorf("blob %s is stored but its size was not recorded: %w", expected, err)
	}
	return nil
}
