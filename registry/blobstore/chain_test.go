package blobstore_test

import (
	"context"
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rulesimg/img/registry/blobstore"
)

func TestChainReadsInOrder(t *testing.T) {
	first, second := newFilesystem(t), newFilesystem(t)
	onlySecond := put(t, second, "only in second")
	chain := blobstore.Chain(first, second)

	if got := read(t, chain, onlySecond); got != "only in second" {
		t.Errorf("read through chain = %q", got)
	}
	size, err := chain.Stat(context.Background(), onlySecond)
	if err != nil || size != int64(len("only in second")) {
		t.Errorf("Stat = %d, %v", size, err)
	}
	if _, err := chain.Stat(context.Background(), digest.FromString("nowhere")); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat of missing blob = %v, want ErrNotFound", err)
	}
}

func TestChainUploadsToFirstWritable(t *testing.T) {
	readOnly, writable := newFilesystem(t), newFilesystem(t)
	chain := blobstore.Chain(readOnlyStore{readOnly}, writable)

	dgst := put(t, chain, "uploaded")

	if _, err := writable.Stat(context.Background(), dgst); err != nil {
		t.Errorf("writable store Stat = %v, want the blob", err)
	}
	if _, err := readOnly.Stat(context.Background(), dgst); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("read-only store Stat = %v, want ErrNotFound", err)
	}
}

func TestChainDeleteRemovesEverywhere(t *testing.T) {
	first, second := newFilesystem(t), newFilesystem(t)
	dgst := put(t, first, "twice")
	put(t, second, "twice")
	chain := blobstore.Chain(first, second)

	if err := chain.Delete(context.Background(), dgst); err != nil {
		t.Fatal(err)
	}
	for i, store := range []blobstore.Store{first, second} {
		if _, err := store.Stat(context.Background(), dgst); !errors.Is(err, blobstore.ErrNotFound) {
			t.Errorf("store %d Stat after delete = %v, want ErrNotFound", i, err)
		}
	}
	if err := chain.Delete(context.Background(), dgst); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("second Delete = %v, want ErrNotFound", err)
	}
}

func TestChainSkipsMeteredReadOnlyStore(t *testing.T) {
	metrics, err := blobstore.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	readOnly, writable := newFilesystem(t), newFilesystem(t)
	chain := blobstore.Chain(metrics.Wrap(readOnlyStore{readOnly}, "upstream"), metrics.Wrap(writable, "fs"))

	dgst := put(t, chain, "uploaded past the metered read-only store")

	if _, err := writable.Stat(context.Background(), dgst); err != nil {
		t.Errorf("writable store Stat = %v, want the blob", err)
	}
}
