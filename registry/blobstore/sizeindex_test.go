package blobstore_test

import (
	"context"
	"errors"
	"testing"

	"github.com/rulesimg/img/registry/blobstore"
)

func TestSizeIndexRecordsCommitAndDelete(t *testing.T) {
	ctx := context.Background()
	index := newMemoryIndex()
	store := blobstore.WithSizeIndex(newFilesystem(t), index)

	dgst := put(t, store, "indexed content")
	size, err := index.BlobSize(ctx, dgst)
	if err != nil || size != int64(len("indexed content")) {
		t.Errorf("index after commit = %d, %v, want %d", size, err, len("indexed content"))
	}

	if err := store.Delete(ctx, dgst); err != nil {
		t.Fatal(err)
	}
	if _, err := index.BlobSize(ctx, dgst); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("index after delete = %v, want ErrNotFound", err)
	}
}

func TestSizeIndexSkipsFailedCommit(t *testing.T) {
	ctx := context.Background()
	index := newMemoryIndex()
	store := blobstore.WithSizeIndex(newFilesystem(t), index)

	w, err := store.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("actual"))
	wrong := put(t, newFilesystem(t), "expected")
	if err := w.Commit(ctx, wrong); !errors.Is(err, blobstore.ErrDigestMismatch) {
		t.Fatalf("Commit = %v, want ErrDigestMismatch", err)
	}
	if _, err := index.BlobSize(ctx, wrong); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("index after failed commit = %v, want ErrNotFound", err)
	}
}
