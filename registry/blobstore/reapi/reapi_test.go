package reapi_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/internal/testpeer"
	"github.com/rulesimg/img/reapi"
	"github.com/rulesimg/img/registry/blobstore"
	reapistore "github.com/rulesimg/img/registry/blobstore/reapi"
	"github.com/rulesimg/img/registry/metadata"
)

type fixture struct {
	cache *testpeer.BazelRemote
	index *metadata.Bolt
	store *reapistore.Store
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	if testing.Short() {
		t.Skip("starts bazel-remote")
	}
	cache := testpeer.StartBazelRemote(t)
	client, err := reapi.Dial(context.Background(), cache.Endpoint(), reapi.Options{Retries: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	dir := t.TempDir()
	index, err := metadata.OpenBolt(filepath.Join(dir, "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { index.Close() })
	store, err := reapistore.New(client, index, filepath.Join(dir, "staging"))
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{cache: cache, index: index, store: store}
}

func (f *fixture) put(t *testing.T, content []byte, dgst digest.Digest) {
	t.Helper()
	ctx := context.Background()
	w, err := f.store.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(content); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, dgst); err != nil {
		t.Fatalf("Commit %s: %v", dgst, err)
	}
}

func (f *fixture) read(t *testing.T, dgst digest.Digest, offset int64) []byte {
	t.Helper()
	r, err := f.store.Open(context.Background(), dgst, offset)
	if err != nil {
		t.Fatalf("Open %s: %v", dgst, err)
	}
	defer r.Close()
	content, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read %s: %v", dgst, err)
	}
	return content
}

func TestStoreRoundTrip(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()

	for _, size := range []int{0, 1000, 3 << 20} {
		content := bytes.Repeat([]byte{byte(size % 251)}, size)
		dgst := digest.FromBytes(content)
		f.put(t, content, dgst)

		got, err := f.store.Stat(ctx, dgst)
		if err != nil || got != int64(size) {
			t.Errorf("Stat of %d-byte blob = %d, %v", size, got, err)
		}
		if read := f.read(t, dgst, 0); !bytes.Equal(read, content) {
			t.Errorf("Open of %d-byte blob returned %d different bytes", size, len(read))
		}
		if size > 0 {
			if read := f.read(t, dgst, int64(size/2)); !bytes.Equal(read, content[size/2:]) {
				t.Errorf("Open of %d-byte blob at offset %d returned wrong bytes", size, size/2)
			}
		}
	}
}

func TestStoreSHA512UsesAlias(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	content := []byte("a sha512 blob in a sha256 cache")
	dgst := digest.SHA512.FromBytes(content)

	f.put(t, content, dgst)

	if read := f.read(t, dgst, 0); !bytes.Equal(read, content) {
		t.Errorf("Open = %q, want %q", read, content)
	}
	if got := f.cache.BlobPaths(t, digest.FromBytes(content).Encoded()); len(got) == 0 {
		t.Error("the cache holds no blob under the sha256 digest")
	}
	if err := f.store.Delete(ctx, dgst); err != nil {
		t.Fatal(err)
	}
	if _, err := f.index.Alias(ctx, dgst); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("alias after Delete = %v, want ErrNotFound", err)
	}
}

func TestStoreEvictedBlobNotFound(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	content := bytes.Repeat([]byte("evict me "), 100_000)
	dgst := digest.FromBytes(content)
	f.put(t, content, dgst)

	f.cache.EvictBlob(t, dgst.Encoded())

	if _, err := f.store.Stat(ctx, dgst); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat of evicted blob = %v, want ErrNotFound", err)
	}
	if _, err := f.store.Open(ctx, dgst, 0); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Open of evicted blob = %v, want ErrNotFound", err)
	}
}

func TestStoreUnrecordedSizeNotFound(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	content := []byte("in the cache, unknown to the registry")
	dgst := digest.FromBytes(content)
	f.put(t, content, dgst)
	f.index.DeleteBlobSize(ctx, dgst)

	if _, err := f.store.Stat(ctx, dgst); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat without a recorded size = %v, want ErrNotFound", err)
	}
}

func TestStoreCommitMismatchWritesNothing(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	w, err := f.store.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("actual"))
	wrong := digest.FromString("expected")
	if err := w.Commit(ctx, wrong); !errors.Is(err, blobstore.ErrDigestMismatch) {
		t.Fatalf("Commit = %v, want ErrDigestMismatch", err)
	}
	if got := f.cache.BlobPaths(t, digest.FromString("actual").Encoded()); len(got) != 0 {
		t.Errorf("the cache holds %d files of the rejected upload", len(got))
	}
	w.Cancel(ctx)
}

// countingCAS counts the writes that reach the cache.
type countingCAS struct {
	reapistore.CAS
	writes int
}

func (c *countingCAS) Write(ctx context.Context, d reapi.Digest, r io.Reader) error {
	c.writes++
	return c.CAS.Write(ctx, d, r)
}

func TestStoreSkipsWriteOfCachedBlob(t *testing.T) {
	if testing.Short() {
		t.Skip("starts bazel-remote")
	}
	ctx := context.Background()
	cache := testpeer.StartBazelRemote(t)
	client, err := reapi.Dial(ctx, cache.Endpoint(), reapi.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	index, err := metadata.OpenBolt(filepath.Join(t.TempDir(), "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer index.Close()
	cas := &countingCAS{CAS: client}
	store, err := reapistore.New(cas, index, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("built by bazel "), 100_000)
	if err := client.Write(ctx, reapi.DigestOf(content), bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}

	f := &fixture{cache: cache, index: index, store: store}
	f.put(t, content, digest.FromBytes(content))

	if cas.writes != 0 {
		t.Errorf("store wrote %d times to the cache, want 0 for a blob it already holds", cas.writes)
	}
	if got := f.read(t, digest.FromBytes(content), 0); !bytes.Equal(got, content) {
		t.Error("blob read back differs")
	}
}
