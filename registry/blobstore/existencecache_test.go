package blobstore_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rulesimg/img/registry/blobstore"
	"github.com/rulesimg/img/registry/blobstore/filesystem"
)

func TestExistenceCacheAvoidsRepeatedStat(t *testing.T) {
	ctx := context.Background()
	backend := &countingStore{Store: newFilesystem(t)}
	dgst := put(t, backend, "cached")
	store := blobstore.WithExistenceCache(backend, time.Minute, 10)

	for range 3 {
		if _, err := store.Stat(ctx, dgst); err != nil {
			t.Fatal(err)
		}
	}
	if backend.stats != 1 {
		t.Errorf("backend Stat calls = %d, want 1", backend.stats)
	}
}

func TestExistenceCacheNeverCachesAbsence(t *testing.T) {
	ctx := context.Background()
	backend := newFilesystem(t)
	store := blobstore.WithExistenceCache(backend, time.Minute, 10)
	dgst := put(t, newFilesystem(t), "arrives later")

	if _, err := store.Stat(ctx, dgst); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("Stat before upload = %v, want ErrNotFound", err)
	}
	put(t, store, "arrives later")
	if _, err := store.Stat(ctx, dgst); err != nil {
		t.Errorf("Stat after upload = %v, want the blob", err)
	}
}

func TestExistenceCacheForgetsOnDeleteAndFailedOpen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	backend, err := filesystem.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	store := blobstore.WithExistenceCache(backend, time.Minute, 10)

	deleted := put(t, store, "deleted through the cache")
	store.Stat(ctx, deleted)
	store.Delete(ctx, deleted)
	if _, err := store.Stat(ctx, deleted); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat after Delete = %v, want ErrNotFound", err)
	}

	// Removing the file behind the cache's back simulates a cache eviction.
	evicted := put(t, store, "evicted behind the cache")
	store.Stat(ctx, evicted)
	os.Remove(filepath.Join(dir, "blobs", "sha256", evicted.Encoded()[:2], evicted.Encoded()))
	if _, err := store.Open(ctx, evicted, 0); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("Open of evicted blob = %v, want ErrNotFound", err)
	}
	if _, err := store.Stat(ctx, evicted); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat after failed Open = %v, want ErrNotFound", err)
	}
}

func TestExistenceCacheBounded(t *testing.T) {
	ctx := context.Background()
	backend := &countingStore{Store: newFilesystem(t)}
	store := blobstore.WithExistenceCache(backend, time.Minute, 2)
	a, b, c := put(t, backend, "a"), put(t, backend, "b"), put(t, backend, "c")

	store.Stat(ctx, a)
	store.Stat(ctx, b)
	store.Stat(ctx, c) // over the bound: the cache starts over
	store.Stat(ctx, a)
	if backend.stats != 4 {
		t.Errorf("backend Stat calls = %d, want 4 after the cache was cleared", backend.stats)
	}
}
