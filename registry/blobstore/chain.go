package blobstore

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
)

// chain looks blobs up in several stores in order and uploads to the first one that accepts
// writes.
type chain struct {
	stores []Store
}

// Chain returns a store that reads from stores in order. Stat and Open use the first store that
// contains the blob, and Create and Resume use the first store that accepts uploads. Delete
// removes the blob from every store that contains it. With one store, Chain returns it
// unchanged.
func Chain(stores ...Store) Store {
	if len(stores) == 1 {
		return stores[0]
	}
	return &chain{stores: stores}
}

// lookup calls fn on each store until one does not return ErrNotFound (or
// ErrUnsupportedDigest, which means the next store may address the blob).
func lookup[T any](c *chain, dgst digest.Digest, fn func(Store) (T, error)) (T, error) {
	var zero T
	for _, store := range c.stores {
		value, err := fn(store)
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnsupportedDigest) {
			continue
		}
		return value, err
	}
	return zero, fmt.Errorf("blob %s is in none of %d stores: %w", dgst, len(c.stores), ErrNotFound)
}

func (c *chain) Stat(ctx context.Context, dgst digest.Digest) (int64, error) {
	return lookup(c, dgst, func(store Store) (int64, error) { return store.Stat(ctx, dgst) })
}

func (c *chain) Open(ctx context.Context, dgst digest.Digest, offset int64) (io.ReadCloser, error) {
	return lookup(c, dgst, func(store Store) (io.ReadCloser, error) { return store.Open(ctx, dgst, offset) })
}

func (c *chain) writable() (Store, error) {
	for _, store := range c.stores {
		if IsReadOnly(store) {
			continue
		}
		return store, nil
	}
	return nil, fmt.Errorf("none of %d blob stores accepts uploads: %w", len(c.stores), ErrReadOnly)
}

func (c *chain) Create(ctx context.Context) (Writer, error) {
	store, err := c.writable()
	if err != nil {
		return nil, err
	}
	return store.Create(ctx)
}

func (c *chain) Resume(ctx context.Context, id string) (Writer, error) {
	store, err := c.writable()
	if err != nil {
		return nil, err
	}
	return store.Resume(ctx, id)
}

func (c *chain) Delete(ctx context.Context, dgst digest.Digest) error {
	deleted := false
	var errs []error
	for _, store := range c.stores {
		err := store.Delete(ctx, dgst)
		switch {
		case err == nil:
			deleted = true
		case errors.Is(err, ErrNotFound), errors.Is(err, ErrReadOnly), errors.Is(err, ErrUnsupportedDigest):
		default:
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if !deleted {
		return fmt.Errorf("blob %s: %w", dgst, ErrNotFound)
	}
	return nil
}

// RedirectURL returns the redirect of the store that contains the blob, when that store offers
// redirects.
func (c *chain) RedirectURL(ctx context.Context, dgst digest.Digest) (string, bool, error) {
	for _, store := range c.stores {
		if _, err := store.Stat(ctx, dgst); err != nil {
			if errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnsupportedDigest) {
				continue
			}
			return "", false, err
		}
		if redirector, ok := store.(Redirector); ok {
			return redirector.RedirectURL(ctx, dgst)
		}
		return "", false, nil
	}
	return "", false, nil
}
