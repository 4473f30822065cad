package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/registry/blobstore"
)

const testBucket = "img-blobs"

// setTestAWSEnv points the AWS default chain at static test credentials only, so no test reads
// the machine's AWS files or contacts the instance metadata service.
func setTestAWSEnv(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "img-test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "img-test-secret")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "no-config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "no-credentials"))
}

// startFakeS3 serves gofakes3 with its in-memory backend on 127.0.0.1 and returns a client of
// it with the test bucket created.
func startFakeS3(t *testing.T) *awss3.Client {
	t.Helper()
	setTestAWSEnv(t)

	faker := gofakes3.New(s3mem.New())
	server := httptest.NewServer(faker.Server())
	t.Cleanup(server.Close)

	client, err := NewClient(context.Background(), ClientOptions{Endpoint: server.URL, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CreateBucket(context.Background(), &awss3.CreateBucketInput{Bucket: new(testBucket)}); err != nil {
		t.Fatalf("create bucket %s: %v", testBucket, err)
	}
	return client
}

func newTestStore(t *testing.T, client *awss3.Client, opts Options) *Store {
	t.Helper()
	opts.Bucket = testBucket
	opts.StagingDir = t.TempDir()
	store, err := New(client, opts)
	if err != nil {
		t.Fatal(err)
	}
	return store
}

func randomBlob(t *testing.T, size int) []byte {
	t.Helper()
	content := make([]byte, size)
	if _, err := rand.Read(content); err != nil {
		t.Fatal(err)
	}
	return content
}

// putBlob uploads content in chunks of chunkSize, closing and resuming the session between
// chunks as the registry does between PATCH requests, and commits it.
func putBlob(t *testing.T, store blobstore.Store, content []byte, chunkSize int) digest.Digest {
	t.Helper()
	ctx := context.Background()
	dgst := digest.FromBytes(content)

	w, err := store.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := w.ID()
	for offset := 0; offset < len(content); offset += chunkSize {
		end := min(offset+chunkSize, len(content))
		if _, err := w.Write(content[offset:end]); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if w, err = store.Resume(ctx, id); err != nil {
			t.Fatalf("resume upload %s after %d bytes: %v", id, end, err)
		}
		if w.Size() != int64(end) {
			t.Fatalf("resumed upload holds %d bytes, want %d", w.Size(), end)
		}
	}
	if err := w.Commit(ctx, dgst); err != nil {
		t.Fatalf("commit %s: %v", dgst, err)
	}
	return dgst
}

// objectDigest reads the object straight from the bucket, bypassing the store, and returns the
// digest of its bytes.
func objectDigest(t *testing.T, client *awss3.Client, key string, algorithm digest.Algorithm) digest.Digest {
	t.Helper()
	object, err := client.GetObject(context.Background(), &awss3.GetObjectInput{Bucket: new(testBucket), Key: &key})
	if err != nil {
		t.Fatalf("get object %s: %v", key, err)
	}
	defer object.Body.Close()
	digester := algorithm.Digester()
	if _, err := io.Copy(digester.Hash(), object.Body); err != nil {
		t.Fatal(err)
	}
	return digester.Digest()
}

func TestStoreRoundTripStoresExactBytes(t *testing.T) {
	if testing.Short() {
		t.Skip("uploads 26 MiB through multipart uploads")
	}
	client := startFakeS3(t)
	store := newTestStore(t, client, Options{PartSize: minPartSize})

	cases := []struct {
		name      string
		size      int
		chunkSize int
	}{
		{"empty", 0, 1},
		{"small single put", 1000, 1000},
		{"chunked single put", 3 << 20, 1 << 20},
		{"multipart uneven last part", 12<<20 + 123, 5 << 20},
		{"multipart chunks unaligned with parts", 11 << 20, 3<<20 + 7},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			content := randomBlob(t, tc.size)
			dgst := putBlob(t, store, content, max(tc.chunkSize, 1))

			stored := objectDigest(t, client, store.Key(dgst), digest.SHA256)
			if stored != dgst {
				t.Errorf("object %s holds bytes with digest %s, want %s", store.Key(dgst), stored, dgst)
			}
			size, err := store.Stat(context.Background(), dgst)
			if err != nil {
				t.Fatal(err)
			}
			if size != int64(tc.size) {
				t.Errorf("Stat = %d bytes, want %d", size, tc.size)
			}
		})
	}
}

func TestStoreSHA512Key(t *testing.T) {
	client := startFakeS3(t)
	store := newTestStore(t, client, Options{Prefix: "mirror"})
	content := randomBlob(t, 4096)
	dgst := digest.SHA512.FromBytes(content)

	w, err := store.Create(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	w.Write(content)
	if err := w.Commit(context.Background(), dgst); err != nil {
		t.Fatal(err)
	}

	wantKey := "mirror/sha512/" + dgst.Encoded()
	if store.Key(dgst) != wantKey {
		t.Errorf("Key = %q, want %q", store.Key(dgst), wantKey)
	}
	if stored := objectDigest(t, client, wantKey, digest.SHA512); stored != dgst {
		t.Errorf("object %s has digest %s, want %s", wantKey, stored, dgst)
	}
}

func TestStoreOpenFromOffset(t *testing.T) {
	client := startFakeS3(t)
	store := newTestStore(t, client, Options{})
	content := randomBlob(t, 100_000)
	dgst := putBlob(t, store, content, len(content))

	for _, offset := range []int64{0, 1, 65_536, 99_999, 100_000} {
		reader, err := store.Open(context.Background(), dgst, offset)
		if err != nil {
			t.Fatalf("Open at %d: %v", offset, err)
		}
		got, err := io.ReadAll(reader)
		reader.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, content[offset:]) {
			t.Errorf("Open at %d returned %d bytes, want the %d from that offset", offset, len(got), len(content)-int(offset))
		}
	}
}

func TestStoreMissingBlobNotFound(t *testing.T) {
	client := startFakeS3(t)
	store := newTestStore(t, client, Options{})
	ctx := context.Background()
	missing := digest.FromString("never stored")

	if _, err := store.Stat(ctx, missing); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat of missing blob = %v, want ErrNotFound", err)
	}
	if _, err := store.Open(ctx, missing, 0); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Open of missing blob = %v, want ErrNotFound", err)
	}
	if err := store.Delete(ctx, missing); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Delete of missing blob = %v, want ErrNotFound", err)
	}
}

func TestStoreDeleteRemovesObject(t *testing.T) {
	client := startFakeS3(t)
	store := newTestStore(t, client, Options{})
	dgst := putBlob(t, store, randomBlob(t, 2048), 2048)

	if err := store.Delete(context.Background(), dgst); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Stat(context.Background(), dgst); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat after Delete = %v, want ErrNotFound", err)
	}
}

func TestStoreDigestMismatchStoresNothing(t *testing.T) {
	client := startFakeS3(t)
	store := newTestStore(t, client, Options{})
	ctx := context.Background()
	wrong := digest.FromString("other bytes")

	w, err := store.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("these bytes"))
	if err := w.Commit(ctx, wrong); !errors.Is(err, blobstore.ErrDigestMismatch) {
		t.Fatalf("Commit with wrong digest = %v, want ErrDigestMismatch", err)
	}
	if _, err := store.Stat(ctx, wrong); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat after rejected commit = %v, want ErrNotFound", err)
	}
	if err := w.Cancel(ctx); err != nil {
		t.Errorf("Cancel after rejected commit: %v", err)
	}
}

func TestStoreMissingBucketFailsCheck(t *testing.T) {
	client := startFakeS3(t)
	store, err := New(client, Options{Bucket: "no-such-bucket", StagingDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	err = store.CheckBucket(context.Background())
	if err == nil {
		t.Fatal("CheckBucket of a missing bucket succeeded")
	}
	if !strings.Contains(err.Error(), "no-such-bucket") {
		t.Errorf("error %q does not name the bucket", err)
	}
}

func TestRedirectURLServesBlob(t *testing.T) {
	client := startFakeS3(t)
	store := newTestStore(t, client, Options{Redirect: true})
	content := randomBlob(t, 50_000)
	dgst := putBlob(t, store, content, len(content))

	url, ok, err := store.RedirectURL(context.Background(), dgst)
	if err != nil || !ok {
		t.Fatalf("RedirectURL = %q, %v, %v; want a URL", url, ok, err)
	}
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Errorf("presigned URL %q is not on the test endpoint", url)
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET presigned URL = %s: %s", resp.Status, got)
	}
	if digest.FromBytes(got) != dgst {
		t.Errorf("presigned URL served digest %s, want %s", digest.FromBytes(got), dgst)
	}
}

func TestRedirectURLReusedWithinMargin(t *testing.T) {
	if testing.Short() {
		t.Skip("waits a second for a new signature time")
	}
	client := startFakeS3(t)
	store := newTestStore(t, client, Options{Redirect: true, PresignExpiry: 10 * time.Minute, PresignMargin: 2 * time.Minute})
	clock := time.Now()
	store.presigner.now = func() time.Time { return clock }
	dgst := putBlob(t, store, randomBlob(t, 100), 100)
	ctx := context.Background()

	first, _, err := store.RedirectURL(ctx, dgst)
	if err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(7 * time.Minute)
	second, _, _ := store.RedirectURL(ctx, dgst)
	if second != first {
		t.Errorf("URL with 3 minutes left (margin 2) was not reused")
	}

	// The signature's own clock is real time, so advance it too for a different URL.
	clock = clock.Add(90 * time.Second)
	time.Sleep(1100 * time.Millisecond)
	third, _, _ := store.RedirectURL(ctx, dgst)
	if third == first {
		t.Errorf("URL with 90 seconds left (margin 2 minutes) was reused")
	}
}

func TestNewRejectsSmallParts(t *testing.T) {
	if _, err := New(nil, Options{Bucket: "b", StagingDir: t.TempDir(), PartSize: 1 << 20}); err == nil {
		t.Error("New accepted a 1 MiB part size, below S3's 5 MiB minimum")
	}
}

func TestPartSizeGrowsForHugeBlobs(t *testing.T) {
	store := &Store{partSize: DefaultPartSize}
	huge := int64(5) << 40
	size := store.partSizeFor(huge)
	if parts := (huge + size - 1) / size; parts > maxParts {
		t.Errorf("5 TiB blob with %d-byte parts needs %d parts, over S3's %d", size, parts, maxParts)
	}
	if store.partSizeFor(1<<30) != DefaultPartSize {
		t.Errorf("1 GiB blob part size = %d, want the default %d", store.partSizeFor(1<<30), DefaultPartSize)
	}
}

func TestCommitOfStoredBlobSkipsCopy(t *testing.T) {
	if testing.Short() {
		t.Skip("waits a second for a new Last-Modified")
	}
	client := startFakeS3(t)
	store := newTestStore(t, client, Options{})
	content := randomBlob(t, 4096)
	dgst := putBlob(t, store, content, len(content))
	key := store.Key(dgst)
	before, err := client.HeadObject(context.Background(), &awss3.HeadObjectInput{Bucket: new(testBucket), Key: &key})
	if err != nil {
		t.Fatal(err)
	}

	time.Sleep(1100 * time.Millisecond) // Last-Modified has a resolution of one second.
	putBlob(t, store, content, len(content))

	after, err := client.HeadObject(context.Background(), &awss3.HeadObjectInput{Bucket: new(testBucket), Key: &key})
	if err != nil {
		t.Fatal(err)
	}
	if !after.LastModified.Equal(*before.LastModified) {
		t.Errorf("second commit of %s rewrote the object (Last-Modified %s, then %s)", dgst, before.LastModified, after.LastModified)
	}
	if entries, _ := os.ReadDir(store.Uploads().Dir()); len(entries) != 0 {
		t.Errorf("staging folder keeps %d files after the commits, want 0", len(entries))
	}
}
