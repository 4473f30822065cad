package conformance

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/internal/testpeer"
)

// s3Args returns the img registry flags of an s3 store in bucket at endpoint.
func s3Args(endpoint, bucket string, extra ...string) []string {
	return append([]string{"--blob-store", "s3", "--s3-endpoint", endpoint, "--s3-bucket", bucket, "--s3-path-style"}, extra...)
}

func TestConformanceS3Store(t *testing.T) {
	if testing.Short() {
		t.Skip("starts minio and img registry and runs the OCI conformance suite")
	}
	minio := startMinio(t)
	bucket := createBucket(t, minio.client(t), "conformance")
	registry := startImgRegistry(t, t.TempDir(), s3Args(minio.endpoint, bucket, "--s3-prefix", "blobs")...)
	runConformance(t, registry.host())
}

// TestConformanceChainedStores runs the suite against reapi, s3 and upstream chained: uploads
// go to the remote cache, and a blob only in the bucket or only in the upstream registry is
// still served.
func TestConformanceChainedStores(t *testing.T) {
	if testing.Short() {
		t.Skip("starts bazel-remote, minio, a distribution registry and img registry")
	}
	cache := testpeer.StartBazelRemote(t)
	minio := startMinio(t)
	client := minio.client(t)
	bucket := createBucket(t, client, "chained")
	upstream := testpeer.StartRegistry(t)
	t.Setenv("DOCKER_CONFIG", upstream.DockerConfig(t))

	args := []string{"--blob-store", "reapi", "--reapi-endpoint", cache.Endpoint()}
	args = append(args, s3Args(minio.endpoint, bucket)...)
	args = append(args, "--blob-store", "upstream", "--upstream-url", upstream.URL)
	registry := startImgRegistry(t, t.TempDir(), args...)
	runConformance(t, registry.host())

	onlyInBucket := randomBytes(t, 64<<10)
	dgst := digest.FromBytes(onlyInBucket)
	key := "sha256/" + dgst.Encoded()
	if _, err := client.PutObject(context.Background(), &awss3.PutObjectInput{Bucket: &bucket, Key: &key, Body: bytes.NewReader(onlyInBucket)}); err != nil {
		t.Fatal(err)
	}
	if got := getBlob(t, registry.url(), "chained/app", dgst); digest.FromBytes(got) != dgst {
		t.Errorf("blob only in the bucket served with digest %s, want %s", digest.FromBytes(got), dgst)
	}

	layout := testpeer.WriteLayout(t, filepath.Join(t.TempDir(), "layout"), testpeer.LayoutSpec{Layers: []int64{200 << 10}, Gzip: true})
	upstream.Crane(t, "push", layout.Dir, upstream.Ref("chained/upstream", ":v1"))
	if got := testpeer.Crane(t, "digest", registry.host()+"/chained/upstream:v1"); got != layout.RootDigest().String() {
		t.Errorf("crane digest through the chain = %s, want the upstream's %s", got, layout.RootDigest())
	}
	layer := layout.Layers[0].Digest
	if got := getBlob(t, registry.url(), "chained/upstream", layer); digest.FromBytes(got) != layer {
		t.Errorf("upstream layer served with digest %s, want %s", digest.FromBytes(got), layer)
	}
}

func randomBytes(t *testing.T, size int) []byte {
	t.Helper()
	content := make([]byte, size)
	if _, err := rand.Read(content); err != nil {
		t.Fatal(err)
	}
	return content
}

// getBlob fetches a blob through the registry, following redirects, and fails on any status
// but 200.
func getBlob(t *testing.T, base, repository string, dgst digest.Digest) []byte {
	t.Helper()
	resp, err := http.Get(base + "/v2/" + repository + "/blobs/" + dgst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET blob %s in %s = %s: %.300s", dgst, repository, resp.Status, body)
	}
	return body
}

// pushChunked uploads content in PATCH requests of chunk bytes and commits it with PUT, the
// way a chunked client does.
func pushChunked(t *testing.T, base, repository string, content []byte, chunk int) digest.Digest {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Minute}
	dgst := digest.FromBytes(content)

	resp, err := client.Post(base+"/v2/"+repository+"/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start upload: %s", resp.Status)
	}
	location := resp.Header.Get("Location")

	for offset := 0; offset < len(content); offset += chunk {
		end := min(offset+chunk, len(content))
		req, _ := http.NewRequest(http.MethodPatch, absolute(base, location), bytes.NewReader(content[offset:end]))
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", offset, end-1))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("PATCH bytes %d-%d: %s", offset, end-1, resp.Status)
		}
		location = resp.Header.Get("Location")
	}

	separator := "?"
	if strings.Contains(location, "?") {
		separator = "&"
	}
	req, _ := http.NewRequest(http.MethodPut, absolute(base, location)+separator+"digest="+dgst.String(), nil)
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("commit upload of %s: %s", dgst, resp.Status)
	}
	return dgst
}

func absolute(base, location string) string {
	if strings.HasPrefix(location, "http://") || strings.HasPrefix(location, "https://") {
		return location
	}
	return base + location
}

// objectDigest reads an object straight from the bucket and returns the digest of its bytes.
func objectDigest(t *testing.T, client *awss3.Client, bucket, key string) digest.Digest {
	t.Helper()
	object, err := client.GetObject(context.Background(), &awss3.GetObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		t.Fatalf("get object %s/%s: %v", bucket, key, err)
	}
	defer object.Body.Close()
	digester := digest.Canonical.Digester()
	if _, err := io.Copy(digester.Hash(), object.Body); err != nil {
		t.Fatal(err)
	}
	return digester.Digest()
}

// s3Server is an S3 endpoint for a test: gofakes3 in this process, or minio as its own process.
type s3Server struct {
	name  string
	start func(t *testing.T) (endpoint string, client *awss3.Client)
}

var s3Servers = []s3Server{
	{"gofakes3", func(t *testing.T) (string, *awss3.Client) {
		setS3TestEnv(t)
		server := httptest.NewServer(gofakes3.New(s3mem.New()).Server())
		t.Cleanup(server.Close)
		minio := &minioServer{endpoint: server.URL}
		return server.URL, minio.client(t)
	}},
	{"minio", func(t *testing.T) (string, *awss3.Client) {
		minio := startMinio(t)
		return minio.endpoint, minio.client(t)
	}},
}

// TestS3PushStoresExactBytes pushes through img registry into each S3 server, with chunked
// uploads, regctl and crane, then reads every object straight from the bucket: its bytes must
// hash to the blob's digest, which catches a server that stores signing frames as data.
func TestS3PushStoresExactBytes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts S3 servers and img registry")
	}
	for _, server := range s3Servers {
		t.Run(server.name, func(t *testing.T) {
			endpoint, client := server.start(t)
			bucket := createBucket(t, client, "exact")
			registry := startImgRegistry(t, t.TempDir(), s3Args(endpoint, bucket, "--s3-prefix", "img")...)

			var digests []digest.Digest
			for _, size := range []int{0, 1000, 12<<20 + 5} {
				digests = append(digests, pushChunked(t, registry.url(), "exact/chunked", randomBytes(t, size), 5<<20))
			}

			layout := testpeer.WriteLayout(t, filepath.Join(t.TempDir(), "layout"), testpeer.LayoutSpec{
				Layers: []int64{3 << 20, 70 << 20},
				Gzip:   true,
				Tags:   []string{"v1"},
			})
			testpeer.Regctl(t, "--host", "reg="+registry.host()+",tls=disabled",
				"image", "copy", "ocidir://"+layout.Dir+":v1", registry.host()+"/exact/regctl:v1")
			testpeer.Crane(t, "push", layout.Dir, registry.host()+"/exact/crane:v1")
			for _, blob := range append(layout.Configs, layout.Layers...) {
				digests = append(digests, blob.Digest)
			}

			for _, dgst := range digests {
				key := "img/sha256/" + dgst.Encoded()
				if stored := objectDigest(t, client, bucket, key); stored != dgst {
					t.Errorf("object %s holds bytes with digest %s, want %s", key, stored, dgst)
				}
			}
		})
	}
}

func TestS3RedirectServesBlob(t *testing.T) {
	if testing.Short() {
		t.Skip("starts minio and img registry")
	}
	minio := startMinio(t)
	bucket := createBucket(t, minio.client(t), "redirect")
	registry := startImgRegistry(t, t.TempDir(), s3Args(minio.endpoint, bucket, "--s3-redirect")...)
	content := randomBytes(t, 6<<20)
	dgst := pushChunked(t, registry.url(), "redirect/app", content, 6<<20)

	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(registry.url() + "/v2/redirect/app/blobs/" + dgst.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTemporaryRedirect {
		t.Fatalf("GET blob with --s3-redirect = %s, want 307", resp.Status)
	}
	if location := resp.Header.Get("Location"); !strings.HasPrefix(location, minio.endpoint+"/") {
		t.Errorf("redirect Location %q is not on minio %s", location, minio.endpoint)
	}

	if got := getBlob(t, registry.url(), "redirect/app", dgst); !bytes.Equal(got, content) {
		t.Errorf("redirected GET returned %d bytes with digest %s, want the %d pushed", len(got), digest.FromBytes(got), len(content))
	}

	req, _ := http.NewRequest(http.MethodGet, registry.url()+"/v2/redirect/app/blobs/"+dgst.String(), nil)
	req.Header.Set("Range", "bytes=100-199")
	resp, err = noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	ranged, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(ranged, content[100:200]) {
		t.Errorf("range GET with --s3-redirect = %s with %d bytes, want 206 with bytes 100-199 streamed", resp.Status, len(ranged))
	}
}

// TestS3ChunkedUploadSurvivesRestart sends the first chunk of an upload, kills img registry,
// starts it again on the same --data-dir, sends the rest and commits: the staged session must
// carry over, and the object in the bucket must hash to the blob's digest.
func TestS3ChunkedUploadSurvivesRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts minio and img registry")
	}
	minio := startMinio(t)
	client := minio.client(t)
	bucket := createBucket(t, client, "restart")
	registry := startImgRegistry(t, t.TempDir(), s3Args(minio.endpoint, bucket)...)
	content := randomBytes(t, 11<<20)
	dgst := digest.FromBytes(content)
	split := 6 << 20

	resp, err := http.Post(registry.url()+"/v2/restart/app/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	location := resp.Header.Get("Location")
	patch := func(chunk []byte, first int) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPatch, absolute(registry.url(), location), bytes.NewReader(chunk))
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", first, first+len(chunk)-1))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("PATCH bytes %d-%d: %s", first, first+len(chunk)-1, resp.Status)
		}
		location = resp.Header.Get("Location")
	}
	patch(content[:split], 0)

	registry.kill()
	registry.start()

	patch(content[split:], split)
	separator := "?"
	if strings.Contains(location, "?") {
		separator = "&"
	}
	req, _ := http.NewRequest(http.MethodPut, absolute(registry.url(), location)+separator+"digest="+dgst.String(), nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("commit after restart: %s", resp.Status)
	}
	if stored := objectDigest(t, client, bucket, "sha256/"+dgst.Encoded()); stored != dgst {
		t.Errorf("object holds bytes with digest %s, want %s", stored, dgst)
	}
}
