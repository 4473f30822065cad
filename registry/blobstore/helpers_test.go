package blobstore_test

import (
	"context"
	"io"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/registry/blobstore"
	"github.com/rulesimg/img/registry/blobstore/filesystem"
)

func newFilesystem(t *testing.T) *filesystem.Store {
	t.Helper()
	store, err := filesystem.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return store
}

func put(t *testing.T, store blobstore.Store, content string) digest.Digest {
	t.Helper()
	ctx := context.Background()
	w, err := store.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, content); err != nil {
		t.Fatal(err)
	}
	dgst := digest.FromString(content)
	if err := w.Commit(ctx, dgst); err != nil {
		t.Fatal(err)
	}
	return dgst
}

func read(t *testing.T, store blobstore.Store, dgst digest.Digest) string {
	t.Helper()
	r, err := store.Open(context.Background(), dgst, 0)
	if err != nil {
		t.Fatalf("Open %s: %v", dgst, err)
	}
	defer r.Close()
	content, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(content)
}

// memoryIndex is a SizeIndex in a map, standing in for the metadata store.
type memoryIndex struct {
	mu    sync.Mutex
	sizes map[digest.Digest]int64
}

func newMemoryIndex() *memoryIndex { return &memoryIndex{sizes: map[digest.Digest]int64{}} }

func (m *memoryIndex) BlobSize(ctx context.Context, dgst digest.Digest) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	size, ok := m.sizes[dgst]
	if !ok {
		return 0, blobstore.ErrNotFound
	}
	return size, nil
}

func (m *memoryIndex) PutBlobSize(ctx context.Context, dgst digest.Digest, size int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sizes[dgst] = size
	return nil
}

func (m *memoryIndex) DeleteBlobSize(ctx context.Context, dgst digest.Digest) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.sizes, dgst)
	return nil
}

// countingStore counts Stat calls that reach the wrapped store.
type countingStore struct {
	blobstore.Store
	mu    sync.Mutex
	stats int
}

func (c *countingStore) Stat(ctx context.Context, dgst digest.Digest) (int64, error) {
	c.mu.Lock()
	c.stats++
	c.mu.Unlock()
	return c.Store.Stat(ctx, dgst)
}

// readOnlyStore marks a store read-only for the chain.
type readOnlyStore struct{ blobstore.Store }

func (readOnlyStore) ReadOnly() bool { return true }
