package testpeer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func TestRepoRootHasGoMod(t *testing.T) {
	root := RepoRoot(t)

	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Errorf("RepoRoot() = %s without go.mod: %v", root, err)
	}
	if _, err := os.Stat(filepath.Join(root, "tools", "go.mod")); err != nil {
		t.Errorf("RepoRoot() = %s without tools/go.mod: %v", root, err)
	}
}

func TestFreePortBindable(t *testing.T) {
	port := FreePort(t)

	if port <= 0 || port > 65535 {
		t.Errorf("FreePort() = %d, want a TCP port", port)
	}
}

func TestStartRegistryPlain(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a registry")
	}
	reg := StartRegistry(t)

	resp, err := http.Get(reg.URL + "/v2/")
	if err != nil {
		t.Fatalf("GET /v2/: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /v2/ status = %d, want 200", resp.StatusCode)
	}

	catalog := Crane(t, "catalog", reg.Addr)
	if catalog != "" {
		t.Errorf("crane catalog of a new registry = %q, want empty", catalog)
	}
}

func TestStartBazelRemotePlain(t *testing.T) {
	if testing.Short() {
		t.Skip("starts bazel-remote")
	}
	cache := StartBazelRemote(t)
	blob := []byte("testpeer blob for bazel-remote")
	hash := hexSHA256(blob)

	putCAS(t, cache, hash, blob)

	if missing := findMissing(t, cache, hash, int64(len(blob))); missing {
		t.Fatalf("FindMissingBlobs reports blob %s missing right after upload", hash)
	}
	if paths := cache.BlobPaths(t, hash); len(paths) != 1 {
		t.Errorf("BlobPaths(%s) = %v, want one file", hash, paths)
	}

	cache.EvictBlob(t, hash)

	if missing := findMissing(t, cache, hash, int64(len(blob))); !missing {
		t.Errorf("FindMissingBlobs reports blob %s present after EvictBlob", hash)
	}
	if status := getCASStatus(t, cache, hash); status != http.StatusNotFound {
		t.Errorf("GET /cas/%s after EvictBlob status = %d, want 404", hash, status)
	}
}

func hexSHA256(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func putCAS(t *testing.T, cache *BazelRemote, hash string, blob []byte) {
	t.Helper()

	req, err := http.NewRequest(http.MethodPut, cache.HTTPURL()+"/cas/"+hash, bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	if cache.User != "" {
		req.SetBasicAuth(cache.User, cache.Password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("PUT /cas/%s: %v", hash, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("PUT /cas/%s status = %d: %s", hash, resp.StatusCode, body)
	}
}

func getCASStatus(t *testing.T, cache *BazelRemote, hash string) int {
	t.Helper()

	req, err := http.NewRequest(http.MethodGet, cache.HTTPURL()+"/cas/"+hash, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cache.User != "" {
		req.SetBasicAuth(cache.User, cache.Password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /cas/%s: %v", hash, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// findMissing calls FindMissingBlobs for one blob and reports whether the cache lists it missing.
func findMissing(t *testing.T, cache *BazelRemote, hash string, size int64) bool {
	t.Helper()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if cache.User != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(basicAuth{cache.User, cache.Password}))
	}
	conn, err := grpc.NewClient(strings.TrimPrefix(cache.Endpoint(), "grpc://"), opts...)
	if err != nil {
		t.Fatalf("connect to %s: %v", cache.Endpoint(), err)
	}
	defer conn.Close()

	resp, err := repb.NewContentAddressableStorageClient(conn).FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{
		BlobDigests: []*repb.Digest{{Hash: hash, SizeBytes: size}},
	})
	if err != nil {
		t.Fatalf("FindMissingBlobs on %s: %v", cache.Endpoint(), err)
	}
	return len(resp.MissingBlobDigests) == 1
}

// basicAuth sends HTTP basic credentials as gRPC metadata, which bazel-remote accepts.
type basicAuth struct{ user, password string }

func (a basicAuth) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Basic " + base64Std(a.user+":"+a.password)}, nil
}

func (basicAuth) RequireTransportSecurity() bool { return false }

func base64Std(s string) string {
	return base64.StdEncoding.EncodeToString([]byte(s))
}

func TestStartBazelRemoteHtpasswd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts bazel-remote")
	}
	cache := StartBazelRemote(t, WithBazelRemoteHtpasswd("carol", "secret-3"))
	blob := []byte("testpeer blob behind basic auth")
	hash := hexSHA256(blob)

	putCAS(t, cache, hash, blob)

	if missing := findMissing(t, cache, hash, int64(len(blob))); missing {
		t.Errorf("FindMissingBlobs with credentials reports blob %s missing", hash)
	}
	unauthenticated := *cache
	unauthenticated.User, unauthenticated.Password = "", ""
	if status := getCASStatus(t, &unauthenticated, hash); status != http.StatusUnauthorized {
		t.Errorf("GET /cas/%s without credentials status = %d, want 401", hash, status)
	}
}
