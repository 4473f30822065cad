package filesystem

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/registry/blobstore"
)

func newStore(t *testing.T) (*Store, string) {
	t.Helper()
	dir := t.TempDir()
	store, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	return store, dir
}

func TestStoreCommitThenRead(t *testing.T) {
	ctx := context.Background()
	store, _ := newStore(t)
	content := []byte("hello, blob")
	dgst := digest.FromBytes(content)

	w, err := store.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(content); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, dgst); err != nil {
		t.Fatalf("Commit: %v", err)
	}

	size, err := store.Stat(ctx, dgst)
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if size != int64(len(content)) {
		t.Errorf("Stat size = %d, want %d", size, len(content))
	}

	r, err := store.Open(ctx, dgst, 7)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer r.Close()
	got, _ := io.ReadAll(r)
	if string(got) != "blob" {
		t.Errorf("Open at offset 7 read %q, want %q", got, "blob")
	}
}

func TestStoreSHA512(t *testing.T) {
	ctx := context.Background()
	store, _ := newStore(t)
	content := []byte("sha512 content")
	dgst := digest.SHA512.FromBytes(content)

	w, err := store.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(content)
	if err := w.Commit(ctx, dgst); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if _, err := store.Stat(ctx, dgst); err != nil {
		t.Errorf("Stat: %v", err)
	}
}

func TestStoreCommitMismatchKeepsSession(t *testing.T) {
	ctx := context.Background()
	store, _ := newStore(t)

	w, err := store.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("actual"))
	err = w.Commit(ctx, digest.FromString("other"))
	if !errors.Is(err, blobstore.ErrDigestMismatch) {
		t.Fatalf("Commit error = %v, want ErrDigestMismatch", err)
	}
	if _, err := store.Stat(ctx, digest.FromString("actual")); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat after failed commit = %v, want ErrNotFound", err)
	}
	if err := w.Cancel(ctx); err != nil {
		t.Errorf("Cancel: %v", err)
	}
}

func TestStoreResumeAfterRestart(t *testing.T) {
	ctx := context.Background()
	store, dir := newStore(t)

	w, err := store.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := w.ID()
	w.Write([]byte("first half, "))
	w.Close()

	// A second store on the same folder simulates a restarted process.
	restarted, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	resumed, err := restarted.Resume(ctx, id)
	if err != nil {
		t.Fatalf("Resume: %v", err)
	}
	if resumed.Size() != 12 {
		t.Errorf("resumed Size = %d, want 12", resumed.Size())
	}
	resumed.Write([]byte("second half"))
	want := digest.FromString("first half, second half")
	if err := resumed.Commit(ctx, want); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if _, err := restarted.Stat(ctx, want); err != nil {
		t.Errorf("Stat: %v", err)
	}
}

func TestStoreResumeWaitsForHolder(t *testing.T) {
	ctx := context.Background()
	store, _ := newStore(t)
	w, err := store.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}

	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := store.Resume(short, w.ID()); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Resume of a held session = %v, want a deadline error", err)
	}

	w.Close()
	again, err := store.Resume(ctx, w.ID())
	if err != nil {
		t.Fatalf("Resume after Close: %v", err)
	}
	again.Close()
}

func TestStoreResumeUnknown(t *testing.T) {
	store, _ := newStore(t)
	for _, id := range []string{"0123456789abcdef0123456789abcdef", "../../etc/passwd", ""} {
		if _, err := store.Resume(context.Background(), id); !errors.Is(err, blobstore.ErrUploadUnknown) {
			t.Errorf("Resume(%q) = %v, want ErrUploadUnknown", id, err)
		}
	}
}

func TestStoreCancelRemovesSession(t *testing.T) {
	ctx := context.Background()
	store, dir := newStore(t)
	w, err := store.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("discard me"))
	if err := w.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Resume(ctx, w.ID()); !errors.Is(err, blobstore.ErrUploadUnknown) {
		t.Errorf("Resume after Cancel = %v, want ErrUploadUnknown", err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "uploads"))
	if len(entries) != 0 {
		t.Errorf("upload folder has %d files after Cancel, want 0", len(entries))
	}
}

func TestStoreDelete(t *testing.T) {
	ctx := context.Background()
	store, _ := newStore(t)
	content := []byte("to delete")
	dgst := digest.FromBytes(content)
	w, _ := store.Create(ctx)
	w.Write(content)
	if err := w.Commit(ctx, dgst); err != nil {
		t.Fatal(err)
	}

	if err := store.Delete(ctx, dgst); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := store.Open(ctx, dgst, 0); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Open after Delete = %v, want ErrNotFound", err)
	}
	if err := store.Delete(ctx, dgst); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("second Delete = %v, want ErrNotFound", err)
	}
}

func TestUploadsPurgeStale(t *testing.T) {
	ctx := context.Background()
	store, _ := newStore(t)
	w, _ := store.Create(ctx)
	w.Write([]byte("abandoned"))
	w.Close()
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(filepath.Join(store.Uploads().Dir(), w.ID()), old, old)

	removed, err := store.Uploads().PurgeStale(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if removed != 1 {
		t.Errorf("PurgeStale removed %d sessions, want 1", removed)
	}
}

// TestStoreLargeUploadStreams checks that an upload is never held in memory: the heap grows by
// far less than the blob while 256 MiB pass through a session.
func TestStoreLargeUploadStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 256 MiB")
	}
	ctx := context.Background()
	store, _ := newStore(t)
	const size = 256 << 20

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	w, err := store.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hasher := digest.SHA256.Digester()
	chunk := bytes.Repeat([]byte{0x5a}, 1<<20)
	var peak uint64
	for written := 0; written < size; written += len(chunk) {
		w.Write(chunk)
		hasher.Hash().Write(chunk)
		if written%(32<<20) == 0 {
			var now runtime.MemStats
			runtime.ReadMemStats(&now)
			peak = max(peak, now.HeapInuse)
		}
	}
	if err := w.Commit(ctx, hasher.Digest()); err != nil {
		t.Fatal(err)
	}

	if growth := int64(peak) - int64(before.HeapInuse); growth > 32<<20 {
		t.Errorf("heap grew by %d bytes during a %d-byte upload, want under 32 MiB", growth, size)
	}
}
