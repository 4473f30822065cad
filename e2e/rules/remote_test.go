package rules

import (
	"context"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/rulesimg/img/internal/testpeer"
)

// TestPushLazyMinimal fills bazel-remote with a first build, cleans the output tree,
// then runs the push target with --remote_download_minimal and the lazy strategy. The
// layers must reach the registry from the cache without ever being written locally.
func TestPushLazyMinimal(t *testing.T) {
	ws := newWorkspace(t, true)
	cache := testpeer.StartBazelRemote(t)
	registry := testpeer.StartRegistry(t)
	remote := []string{"--remote_cache=" + cache.Endpoint(), "--//:registry=" + registry.Addr}

	ws.bazel(t, append([]string{"build"}, append(remote, "//:index")...)...)
	built := ws.graph(t, "index.image.json").Image.Root.Digest
	layer := ws.layerDigest(t, "app_layer")
	ws.bazel(t, "clean")

	lazy := append(remote,
		"--remote_download_minimal",
		"--@rules_img//img/settings:push_strategy=lazy",
		"--@rules_img//img/settings:remote_cache="+cache.Endpoint(),
	)
	ws.bazel(t, append(append([]string{"run"}, lazy...), "//:push")...)

	for _, path := range layerFiles(t, ws.info(t, "bazel-bin")) {
		t.Errorf("layer file %s is in the output tree after a lazy push with --remote_download_minimal", path)
	}

	req := readRequest(t, ws, "push.request.json")
	if req.Strategy != "lazy" {
		t.Errorf("request strategy is %q, expected lazy", req.Strategy)
	}
	if _, ok := req.Files[layer]; ok {
		t.Errorf("lazy request lists a file for layer %s", layer)
	}
	for _, tag := range []string{"dev-latest", "v1"} {
		got := registry.Crane(t, "digest", registry.Ref("e2e/app", ":"+tag))
		if got != built.String() {
			t.Errorf("tag %s has digest %s, expected the built index %s", tag, got, built)
		}
	}
	// The registry must have the layer's bytes, which only the cache could supply.
	blob := registry.Crane(t, "blob", registry.Ref("e2e/app", "@"+layer.String()))
	if len(blob) == 0 {
		t.Errorf("registry returns an empty blob for layer %s", layer)
	}

	t.Run("eager under minimal downloads", func(t *testing.T) {
		eager := append(remote, "--remote_download_minimal")
		ws.bazel(t, append(append([]string{"run"}, eager...), "//:push", "--", "--repository", "e2e/eager")...)
		got := registry.Crane(t, "digest", registry.Ref("e2e/eager", ":v1"))
		if got != built.String() {
			t.Errorf("e2e/eager:v1 has digest %s, expected %s", got, built)
		}
		if found := layerFiles(t, ws.info(t, "bazel-bin")); len(found) == 0 {
			t.Error("no layer file is local after an eager push under --remote_download_minimal")
		}
	})
}

// TestPushCASRegistry pushes to `img registry` whose blob store is the remote cache:
// the launcher finds the blob-cache endpoint through the blob_cache setting.
func TestPushCASRegistry(t *testing.T) {
	ws := newWorkspace(t, true)
	cache := testpeer.StartBazelRemote(t)
	reg := startImgRegistry(t, prebuiltImg(t), cache.Endpoint())
	remote := []string{"--remote_cache=" + cache.Endpoint(), "--//:registry=" + reg.addr}

	ws.bazel(t, append([]string{"build"}, append(remote, "//:scratch")...)...)
	built := ws.graph(t, "scratch.image.json").Image.Root.Digest
	layer := ws.layerDigest(t, "app_layer")
	ws.bazel(t, "clean")

	cas := append(remote,
		"--remote_download_minimal",
		"--@rules_img//img/settings:push_strategy=cas_registry",
		"--@rules_img//img/settings:blob_cache="+reg.blobCache,
	)
	ws.bazel(t, append(append([]string{"run"}, cas...), "//:push_scratch")...)

	got := testpeer.Crane(t, "digest", reg.addr+"/e2e/scratch:latest")
	if got != built.String() {
		t.Errorf("e2e/scratch:latest has digest %s, expected %s", got, built)
	}
	blob := testpeer.Crane(t, "blob", reg.addr+"/e2e/scratch@"+layer.String())
	if len(blob) == 0 {
		t.Errorf("registry returns an empty blob for layer %s", layer)
	}
	for _, path := range layerFiles(t, ws.info(t, "bazel-bin")) {
		t.Errorf("layer file %s is in the output tree after a cas_registry push", path)
	}
}

type imgRegistry struct {
	addr      string // host:port of the registry HTTP API
	blobCache string // grpc://host:port of the blob-cache service
}

// startImgRegistry runs `img registry` on 127.0.0.1 with the remote cache as its only
// blob store and the blob-cache service enabled, and stops it on cleanup.
func startImgRegistry(t *testing.T, img, cacheEndpoint string) imgRegistry {
	t.Helper()

	port, grpcPort := testpeer.FreePort(t), testpeer.FreePort(t)
	reg := imgRegistry{
		addr:      "127.0.0.1:" + strconv.Itoa(port),
		blobCache: "grpc://127.0.0.1:" + strconv.Itoa(grpcPort),
	}
	logPath := filepath.Join(t.TempDir(), "img-registry.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()

	cmd := exec.Command(img, "registry",
		"--address", "127.0.0.1",
		"--port", strconv.Itoa(port),
		"--grpc-port", strconv.Itoa(grpcPort),
		"--enable-blobcache",
		"--blob-store", "reapi",
		"--reapi-endpoint", cacheEndpoint,
		"--data-dir", t.TempDir(),
	)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start img registry: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			body, _ := os.ReadFile(logPath)
			t.Logf("img registry log:\n%s", body)
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := waitHTTP(ctx, "http://"+reg.addr+"/v2/"); err != nil {
		body, _ := os.ReadFile(logPath)
		t.Fatalf("img registry did not start: %v\n%s", err, body)
	}
	return reg
}

func waitHTTP(ctx context.Context, url string) error {
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		res, err := http.DefaultClient.Do(req)
		if err == nil {
			res.Body.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("GET %s: %w", url, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// layerFiles returns every layer blob of the testdata workspace found under dir, the
// runfiles trees and the launchers' local copies included. A symlink counts only when
// its target exists.
func layerFiles(t *testing.T, dir string) []string {
	t.Helper()

	var found []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch d.Name() {
		case "app_layer.tar.gz", "zstd_layer.tar.zst":
			if _, err := os.Stat(path); err == nil {
				found = append(found, path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}
