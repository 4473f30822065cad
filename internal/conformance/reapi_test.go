package conformance

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/rulesimg/img/internal/testpeer"
	blobcachepb "github.com/rulesimg/img/proto/blobcache"
	"github.com/rulesimg/img/reapi"
)

func TestConformanceREAPIStore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts bazel-remote and img registry and runs the OCI conformance suite")
	}
	cache := testpeer.StartBazelRemote(t)
	registry := startImgRegistry(t, t.TempDir(), "--blob-store", "reapi", "--reapi-endpoint", cache.Endpoint())
	runConformance(t, registry.host())
}

// TestREAPIEvictedBlobIsUnknown pushes a blob through img registry into bazel-remote, evicts it
// from the cache, and checks that HEAD and GET return 404 BLOB_UNKNOWN, not a server error.
func TestREAPIEvictedBlobIsUnknown(t *testing.T) {
	if testing.Short() {
		t.Skip("starts bazel-remote and img registry")
	}
	cache := testpeer.StartBazelRemote(t)
	registry := startImgRegistry(t, t.TempDir(), "--blob-store", "reapi", "--reapi-endpoint", cache.Endpoint())
	client := &http.Client{Timeout: 30 * time.Second}

	for _, size := range []int{1000, 2 << 20} {
		content := bytes.Repeat([]byte("evicted "), size/8)
		dgst := digest.FromBytes(content)
		if err := pushBlob(client, registry.url(), "evict/app", content); err != nil {
			t.Fatal(err)
		}
		blobURL := registry.url() + "/v2/evict/app/blobs/" + dgst.String()
		if status := requestStatus(t, client, http.MethodHead, blobURL); status != http.StatusOK {
			t.Fatalf("HEAD before eviction = %d, want 200", status)
		}

		cache.EvictBlob(t, dgst.Encoded())

		for _, method := range []string{http.MethodHead, http.MethodGet} {
			req, _ := http.NewRequest(method, blobURL, nil)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("%s of evicted %d-byte blob = %d, want 404", method, size, resp.StatusCode)
			}
			if method == http.MethodGet && !strings.Contains(string(body), "BLOB_UNKNOWN") {
				t.Errorf("GET of evicted %d-byte blob body = %s, want BLOB_UNKNOWN", size, body)
			}
		}
	}
}

func requestStatus(t *testing.T, client *http.Client, method, url string) int {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestBlobcacheCommitThenPushManifest follows the cas_registry strategy: blobs go to the cache
// only, the blob-cache Commit registers them, and the manifest push then needs no blob upload.
func TestBlobcacheCommitThenPushManifest(t *testing.T) {
	if testing.Short() {
		t.Skip("starts bazel-remote and img registry")
	}
	ctx := context.Background()
	cache := testpeer.StartBazelRemote(t)
	grpcPort := testpeer.FreePort(t)
	registry := startImgRegistry(t, t.TempDir(), "--blob-store", "reapi", "--reapi-endpoint", cache.Endpoint(),
		"--enable-blobcache", "--grpc-port", strconv.Itoa(grpcPort))

	cas, err := reapi.Dial(ctx, cache.Endpoint(), reapi.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cas.Close()
	config := []byte(`{"architecture":"amd64","os":"linux"}`)
	layer := bytes.Repeat([]byte("cached layer "), 50_000)
	var digests []*repb.Digest
	for _, blob := range [][]byte{config, layer} {
		d := reapi.DigestOf(blob)
		if err := cas.Write(ctx, d, bytes.NewReader(blob)); err != nil {
			t.Fatal(err)
		}
		digests = append(digests, &repb.Digest{Hash: d.Hash, SizeBytes: d.Size})
	}

	conn, err := grpc.NewClient(net.JoinHostPort("127.0.0.1", strconv.Itoa(grpcPort)), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := blobcachepb.NewBlobsClient(conn).Commit(ctx, &blobcachepb.CommitRequest{BlobDigests: digests})
	if err != nil {
		t.Fatalf("blob-cache Commit: %v", err)
	}
	if len(resp.MissingBlobDigests) != 0 {
		t.Fatalf("Commit reported %d missing blobs, want 0", len(resp.MissingBlobDigests))
	}

	manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"%s",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%d}]}`,
		ociManifestType, digest.FromBytes(config), len(config), digest.FromBytes(layer), len(layer)))
	client := &http.Client{Timeout: 30 * time.Second}
	if err := pushManifest(client, registry.url(), "cas/app", "v1", manifest); err != nil {
		t.Fatal(err)
	}

	blob, err := client.Get(registry.url() + "/v2/cas/app/blobs/" + digest.FromBytes(layer).String())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(blob.Body)
	blob.Body.Close()
	if !bytes.Equal(body, layer) {
		t.Errorf("layer served from the cache: %d bytes, want the %d pushed", len(body), len(layer))
	}
	uploads, err := registry.requestCount("upload_start", "POST")
	if err != nil {
		t.Fatal(err)
	}
	if uploads != 0 {
		t.Errorf("registry saw %v blob uploads, want 0", uploads)
	}
}

// TestREAPIStoreCredentialHelperFromEnv runs the reapi store against a bazel-remote that
// requires basic auth. The endpoint and the credential helper come from IMG_REAPI_ENDPOINT and
// IMG_CREDENTIAL_HELPER, and without the helper the registry fails to start.
func TestREAPIStoreCredentialHelperFromEnv(t *testing.T) {
	if testing.Short() {
		t.Skip("starts bazel-remote and img registry")
	}
	cache := testpeer.StartBazelRemote(t, testpeer.WithBazelRemoteHtpasswd("builder", "s3cret"))
	helper := filepath.Join(t.TempDir(), "credential-helper")
	token := base64.StdEncoding.EncodeToString([]byte("builder:s3cret"))
	script := "#!/bin/sh\ncat >/dev/null\nprintf '{\"headers\":{\"Authorization\":[\"Basic " + token + "\"]}}'\n"
	if err := os.WriteFile(helper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, imgBinary(t), "registry", "--address", "127.0.0.1", "--port", "0",
		"--data-dir", t.TempDir(), "--blob-store", "reapi")
	cmd.Env = append(os.Environ(), "IMG_REAPI_ENDPOINT="+cache.Endpoint(), "IMG_CREDENTIAL_HELPER=")
	output, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("img registry started without credentials for an authenticated cache:\n%s", output)
	}
	if !strings.Contains(string(output), "--reapi-endpoint") {
		t.Errorf("startup error does not name --reapi-endpoint:\n%s", output)
	}

	t.Setenv("IMG_REAPI_ENDPOINT", cache.Endpoint())
	t.Setenv("IMG_CREDENTIAL_HELPER", helper)
	registry := startImgRegistry(t, t.TempDir(), "--blob-store", "reapi")
	client := &http.Client{Timeout: 30 * time.Second}
	content := []byte("stored with credentials")
	if err := pushBlob(client, registry.url(), "auth/app", content); err != nil {
		t.Fatal(err)
	}
	if status := requestStatus(t, client, http.MethodHead, registry.url()+"/v2/auth/app/blobs/"+digest.FromBytes(content).String()); status != http.StatusOK {
		t.Errorf("HEAD of pushed blob = %d, want 200", status)
	}
	if paths := cache.BlobPaths(t, digest.FromBytes(content).Encoded()); len(paths) == 0 {
		t.Error("the blob is not in bazel-remote's CAS")
	}
}
