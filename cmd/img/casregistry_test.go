package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rulesimg/img/internal/testpeer"
)

// startImgRegistry runs `img registry` on a free loopback port with args added and
// returns its base URL. The process is stopped when the test ends.
func startImgRegistry(t *testing.T, args ...string) (url string) {
	t.Helper()
	port := testpeer.FreePort(t)
	args = append([]string{"registry", "--address", "127.0.0.1", "--port", fmt.Sprint(port), "--data-dir", t.TempDir()}, args...)
	cmd := exec.Command(imgBinary, args...)
	logPath := filepath.Join(t.TempDir(), "registry.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logFile.Close()
		if t.Failed() {
			body, _ := os.ReadFile(logPath)
			t.Logf("img registry log:\n%s", body)
		}
	})
	url = fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if res, err := http.Get(url + "/v2/"); err == nil {
			res.Body.Close()
			return url
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("img registry did not answer on %s within 20s", url)
	return ""
}

// blobUploadRequests sums img_registry_requests_total over the blob upload routes.
func blobUploadRequests(t *testing.T, registryURL string) int {
	t.Helper()
	res, err := http.Get(registryURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	total := 0
	scanner := bufio.NewScanner(res.Body)
	for scanner.Scan() {
		line := scanner.Text()
		if strings.HasPrefix(line, "img_registry_requests_total{") && strings.Contains(line, "upload") {
			var n float64
			fmt.Sscanf(line[strings.LastIndex(line, " ")+1:], "%g", &n)
			total += int(n)
		}
	}
	return total
}

func TestCASRegistryPushMovesOnlyManifests(t *testing.T) {
	if testing.Short() {
		t.Skip("starts bazel-remote and img registry")
	}
	cache := testpeer.StartBazelRemote(t)
	grpcPort := testpeer.FreePort(t)
	registryURL := startImgRegistry(t, "--blob-store", "reapi", "--reapi-endpoint", cache.Endpoint(),
		"--enable-blobcache", "--grpc-port", fmt.Sprint(grpcPort))
	host := strings.TrimPrefix(registryURL, "http://")
	blobCache := fmt.Sprintf("grpc://127.0.0.1:%d", grpcPort)

	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{1 << 10, 4 << 20}, MultiPlatform: true, Gzip: true})
	request := filepath.Join(t.TempDir(), "push.json")
	if _, stderr, err := runImg(t, nil, "cas", "upload", info.Dir, "--remote-cache", cache.Endpoint(), "--strategy", "cas_registry", "--output", request); err != nil {
		t.Fatalf("img cas upload: %v\n%s", err, stderr)
	}

	stdout, stderr, err := runImg(t, nil, "push", "--request", request, host+"/cas/app:v1", "--blob-cache", blobCache)
	if err != nil {
		t.Fatalf("cas_registry push: %v\n%s", err, stderr)
	}
	if !strings.HasPrefix(stdout, host+"/cas/app@"+info.RootDigest().String()) {
		t.Errorf("stdout = %q", stdout)
	}
	if n := blobUploadRequests(t, registryURL); n != 0 {
		t.Errorf("the push made %d blob upload requests; cas_registry should send only manifests", n)
	}
	if got := testpeer.Crane(t, "digest", host+"/cas/app:v1"); got != info.RootDigest().String() {
		t.Errorf("crane digest = %s, want %s", got, info.RootDigest())
	}
	for _, layer := range info.Layers {
		testpeer.Crane(t, "blob", host+"/cas/app@"+layer.Digest.String())
	}
}

func TestCASRegistryPushMissingBlob(t *testing.T) {
	if testing.Short() {
		t.Skip("starts bazel-remote and img registry")
	}
	cache := testpeer.StartBazelRemote(t)
	grpcPort := testpeer.FreePort(t)
	registryURL := startImgRegistry(t, "--blob-store", "reapi", "--reapi-endpoint", cache.Endpoint(),
		"--enable-blobcache", "--grpc-port", fmt.Sprint(grpcPort))
	host := strings.TrimPrefix(registryURL, "http://")

	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{1 << 10, 2 << 10}})
	request := filepath.Join(t.TempDir(), "push.json")
	if _, stderr, err := runImg(t, nil, "cas", "upload", info.Dir, "--remote-cache", cache.Endpoint(), "--strategy", "cas_registry", "--output", request); err != nil {
		t.Fatalf("img cas upload: %v\n%s", err, stderr)
	}
	evicted := info.Layers[0]
	cache.EvictBlob(t, evicted.Digest.Encoded())

	_, stderr, err := runImg(t, nil, "push", "--request", request, host+"/cas/missing:v1", "--blob-cache", fmt.Sprintf("grpc://127.0.0.1:%d", grpcPort))
	if err == nil {
		t.Fatal("cas_registry push succeeded although a layer is not in the cache")
	}
	for _, want := range []string{evicted.Digest.String(), "layer 1 of manifest", "nothing was pushed"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("error does not mention %q:\n%s", want, stderr)
		}
	}
	res, err := http.Get(registryURL + "/v2/cas/missing/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Errorf("tag v1 answers %d after a failed push, want 404", res.StatusCode)
	}
}

// TestPushToImgRegistry pushes to img registry, which sends relative Location headers and
// announces OCI-Chunk-Min-Length, in chunks of the announced 1 MiB.
func TestPushToImgRegistry(t *testing.T) {
	if testing.Short() {
		t.Skip("starts img registry")
	}
	registryURL := startImgRegistry(t, "--chunk-min-length", fmt.Sprint(1<<20))
	host := strings.TrimPrefix(registryURL, "http://")
	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{3<<20 + 17, 1 << 10}, RawLayers: true})
	if _, stderr, err := runImg(t, nil, "push", info.Dir, host+"/own/app:v1", "--chunk-size", "1"); err != nil {
		t.Fatalf("push: %v\n%s", err, stderr)
	}
	if got := testpeer.Crane(t, "digest", host+"/own/app:v1"); got != info.RootDigest().String() {
		t.Errorf("crane digest = %s, want %s", got, info.RootDigest())
	}
	for _, layer := range info.Layers {
		testpeer.Crane(t, "blob", host+"/own/app@"+layer.Digest.String())
	}
}
