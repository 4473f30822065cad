package filesystem

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestReadFromChunksAtOddSizes sends one blob as chunks whose sizes fall on, just before and
// just after block and buffer boundaries, so every chunk but the first starts inside a block
// the previous chunk wrote through the page cache.
func TestReadFromChunksAtOddSizes(t *testing.T) {
	ctx := context.Background()
	store, _ := newStore(t)
	sizes := []int{1, directAlign - 2, 1, directAlign, directBuffer - 1, directBuffer + 1, 2*directBuffer + directAlign + 7, 0, 3, directBuffer}
	total := 0
	for _, size := range sizes {
		total += size
	}
	content := make([]byte, total)
	rand.NewChaCha8([32]byte{7}).Read(content)

	w, err := store.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := w.ID()
	offset := 0
	for i, size := range sizes {
		// Each chunk comes in its own request, which may find a new writer for the session.
		if i > 0 {
			w.Close()
			if w, err = store.Resume(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		n, err := w.ReadFrom(bytes.NewReader(content[offset : offset+size]))
		if err != nil || n != int64(size) {
			t.Fatalf("chunk %d: ReadFrom = %d, %v; want %d, nil", i, n, err, size)
		}
		offset += size
		if w.Size() != int64(offset) {
			t.Fatalf("after chunk %d: Size = %d, want %d", i, w.Size(), offset)
		}
	}
	if err := w.Commit(ctx, digest.FromBytes(content)); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	assertBlob(t, store, content)
}

// failingReader yields its bytes in small reads, then fails.
type failingReader struct {
	data []byte
}

var errClientGone = errors.New("client went away")

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, errClientGone
	}
	n := copy(p[:min(len(p), 64<<10)], r.data)
	r.data = r.data[n:]
	return n, nil
}

// TestReadFromKeepsBytesBeforeFailure checks that a body that breaks off leaves every byte
// that arrived in the session, so the client can resume right after them, even after a
// restart that loses the in-memory hash.
func TestReadFromKeepsBytesBeforeFailure(t *testing.T) {
	ctx := context.Background()
	store, dir := newStore(t)
	content := make([]byte, 3*directBuffer+12345)
	rand.NewChaCha8([32]byte{9}).Read(content)
	cut := 2*directBuffer + 5000

	w, err := store.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n, err := w.ReadFrom(&failingReader{data: content[:cut]})
	if !errors.Is(err, errClientGone) || n != int64(cut) {
		t.Fatalf("ReadFrom = %d, %v; want %d, %v", n, err, cut, errClientGone)
	}
	w.Close()

	// A new store over the same folder stands for a restarted registry.
	restarted, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	w, err = restarted.Resume(ctx, w.ID())
	if err != nil {
		t.Fatal(err)
	}
	if w.Size() != int64(cut) {
		t.Fatalf("resumed session has %d bytes, want %d", w.Size(), cut)
	}
	if _, err := w.ReadFrom(bytes.NewReader(content[cut:])); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, digest.FromBytes(content)); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	assertBlob(t, restarted, content)
}

// TestReadFromUsesDirectIO checks that the store's own sessions really write with O_DIRECT
// where the folder's filesystem allows it, since the store's upload speed depends on it.
func TestReadFromUsesDirectIO(t *testing.T) {
	store, _ := newStore(t)
	probe, err := os.CreateTemp(store.uploads.Dir(), "probe")
	if err != nil {
		t.Fatal(err)
	}
	probe.Close()
	if file, err := openDirect(probe.Name()); err != nil {
		t.Skipf("the test folder's filesystem refuses O_DIRECT: %v", err)
	} else {
		file.Close()
	}

	w, err := store.Create(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Cancel(context.Background())
	if _, err := w.ReadFrom(bytes.NewReader(make([]byte, directBuffer))); err != nil {
		t.Fatal(err)
	}
	if w.(*writer).direct == nil {
		t.Error("a session of the filesystem store wrote without O_DIRECT")
	}
}

func assertBlob(t *testing.T, store *Store, content []byte) {
	t.Helper()
	r, err := store.Open(context.Background(), digest.FromBytes(content), 0)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, content) {
		t.Errorf("stored blob differs from the uploaded bytes (%d bytes read, %d sent)", len(got), len(content))
	}
}
