package conformance

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/internal/testpeer"
)

// TestPullThroughMultiPlatformImage pushes a two-platform image to a distribution registry with
// crane and pulls it with crane through img registry, whose filesystem store is empty, so every
// manifest and blob comes from the upstream.
func TestPullThroughMultiPlatformImage(t *testing.T) {
	if testing.Short() {
		t.Skip("starts distribution registries and img registry")
	}
	cases := []struct {
		name   string
		option testpeer.RegistryOption
	}{
		{"anonymous", nil},
		{"htpasswd", testpeer.WithHtpasswd("puller", "pull-secret")},
		{"token", testpeer.WithTokenAuth("puller", "pull-secret")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var opts []testpeer.RegistryOption
			if tc.option != nil {
				opts = append(opts, tc.option)
			}
			upstream := testpeer.StartRegistry(t, opts...)
			layout := testpeer.WriteLayout(t, filepath.Join(t.TempDir(), "layout"), testpeer.LayoutSpec{
				Layers:        []int64{300 << 10, 2 << 20},
				Gzip:          true,
				MultiPlatform: true,
			})
			upstream.Crane(t, "push", layout.Dir, upstream.Ref("team/app", ":v1"))

			// img registry reads the upstream's credentials from the docker config; crane talks
			// to img registry, which needs none.
			t.Setenv("DOCKER_CONFIG", upstream.DockerConfig(t))
			registry := startImgRegistry(t, t.TempDir(), "--blob-store", "filesystem", "--blob-store", "upstream", "--upstream-url", upstream.URL)
			t.Setenv("DOCKER_CONFIG", t.TempDir())
			ref := registry.host() + "/team/app"

			if got := testpeer.Crane(t, "digest", ref+":v1"); got != layout.RootDigest().String() {
				t.Errorf("crane digest through img registry = %s, want the upstream's %s", got, layout.RootDigest())
			}
			pulled := filepath.Join(t.TempDir(), "pulled")
			testpeer.Crane(t, "pull", "--format", "oci", "--platform", "all", ref+":v1", pulled)
			for _, blob := range layout.Blobs {
				path := filepath.Join(pulled, "blobs", "sha256", blob.Digest.Encoded())
				content, err := os.ReadFile(path)
				if err != nil {
					t.Errorf("pulled layout lacks %s (%s): %v", blob.Digest, blob.MediaType, err)
					continue
				}
				if digest.FromBytes(content) != blob.Digest {
					t.Errorf("pulled %s has digest %s", blob.Digest, digest.FromBytes(content))
				}
			}

			child := layout.Manifests[1].Digest
			if got := testpeer.Crane(t, "digest", ref+"@"+child.String()); got != child.String() {
				t.Errorf("crane digest of platform manifest by digest = %s, want %s", got, child)
			}
		})
	}
}

// writeWrongDockerConfig writes a docker config with a wrong password for host and returns its
// folder.
func writeWrongDockerConfig(t *testing.T, host string) string {
	t.Helper()
	dir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("puller:wrong-password"))
	data, _ := json.Marshal(map[string]any{"auths": map[string]any{host: map[string]string{"auth": auth}}})
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestPullThroughRejectedCredentials checks that an upstream's 401 reaches the client as a
// server error that names the credentials, never as BLOB_UNKNOWN or MANIFEST_UNKNOWN, which
// would make a client believe the image does not exist.
func TestPullThroughRejectedCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a distribution registry and img registry")
	}
	upstream := testpeer.StartRegistry(t, testpeer.WithHtpasswd("puller", "pull-secret"))
	layout := testpeer.WriteLayout(t, filepath.Join(t.TempDir(), "layout"), testpeer.LayoutSpec{Layers: []int64{1000}})
	upstream.Crane(t, "push", layout.Dir, upstream.Ref("private/app", ":v1"))
	t.Setenv("DOCKER_CONFIG", writeWrongDockerConfig(t, upstream.Addr))
	registry := startImgRegistry(t, t.TempDir(), "--blob-store", "filesystem", "--blob-store", "upstream", "--upstream-url", upstream.URL)

	for _, path := range []string{
		"/v2/private/app/manifests/v1",
		"/v2/private/app/blobs/" + layout.Layers[0].Digest.String(),
	} {
		resp, err := http.Get(registry.url() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			t.Errorf("GET %s = 404 %s, which reads as a missing image", path, body)
		}
		if resp.StatusCode < 500 {
			t.Errorf("GET %s = %s, want a server error", path, resp.Status)
		}
		if !strings.Contains(string(body), "rejected our credentials") {
			t.Errorf("GET %s body %s does not say the upstream rejected the credentials", path, body)
		}
	}
}

// TestPullThroughPassesRedirectOn starts an upstream whose blob GETs redirect to a storage
// server on another port, and checks that img registry with --upstream-redirect hands that
// redirect to the client and that the storage server never sees the upstream's credentials.
func TestPullThroughPassesRedirectOn(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a distribution registry and img registry")
	}
	var storageRoot atomic.Pointer[string]
	var storageRequests, storageWithAuth atomic.Int64
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		storageRequests.Add(1)
		if r.Header.Get("Authorization") != "" {
			storageWithAuth.Add(1)
		}
		http.FileServer(http.Dir(*storageRoot.Load())).ServeHTTP(w, r)
	}))
	t.Cleanup(storage.Close)
	upstream := testpeer.StartRegistry(t, testpeer.WithHtpasswd("puller", "pull-secret"),
		testpeer.WithRegistryConfigYAML(fmt.Sprintf("middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: %q\n", storage.URL)))
	storageRoot.Store(&upstream.Dir)

	layout := testpeer.WriteLayout(t, filepath.Join(t.TempDir(), "layout"), testpeer.LayoutSpec{Layers: []int64{1 << 20}, Gzip: true})
	upstream.Crane(t, "push", layout.Dir, upstream.Ref("private/app", ":v1"))
	t.Setenv("DOCKER_CONFIG", upstream.DockerConfig(t))
	registry := startImgRegistry(t, t.TempDir(), "--blob-store", "filesystem", "--blob-store", "upstream",
		"--upstream-url", upstream.URL, "--upstream-redirect")
	layer := layout.Layers[0].Digest

	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(registry.url() + "/v2/private/app/blobs/" + layer.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTemporaryRedirect {
		t.Fatalf("GET blob with --upstream-redirect = %s, want 307", resp.Status)
	}
	if location := resp.Header.Get("Location"); !strings.HasPrefix(location, storage.URL+"/") {
		t.Errorf("redirect Location %q is not on the storage server %s", location, storage.URL)
	}

	if got := getBlob(t, registry.url(), "private/app", layer); digest.FromBytes(got) != layer {
		t.Errorf("redirected GET served digest %s, want %s", digest.FromBytes(got), layer)
	}
	if storageRequests.Load() == 0 {
		t.Error("storage server saw no request; the redirect was not followed")
	}
	if storageWithAuth.Load() != 0 {
		t.Errorf("storage server received %d requests with an Authorization header, want 0", storageWithAuth.Load())
	}
}

// TestPullThroughCredentialHelper gives img registry the upstream's credentials only through a
// Bazel credential helper named by $IMG_CREDENTIAL_HELPER, with an empty docker config.
func TestPullThroughCredentialHelper(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a distribution registry and img registry")
	}
	upstream := testpeer.StartRegistry(t, testpeer.WithHtpasswd("puller", "pull-secret"))
	layout := testpeer.WriteLayout(t, filepath.Join(t.TempDir(), "layout"), testpeer.LayoutSpec{Layers: []int64{4096}, Gzip: true})
	upstream.Crane(t, "push", layout.Dir, upstream.Ref("private/app", ":v1"))

	helper := filepath.Join(t.TempDir(), "credential-helper")
	auth := base64.StdEncoding.EncodeToString([]byte("puller:pull-secret"))
	script := "#!/bin/sh\ncat > /dev/null\necho '{\"headers\":{\"Authorization\":[\"Basic " + auth + "\"]}}'\n"
	if err := os.WriteFile(helper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	t.Setenv("IMG_CREDENTIAL_HELPER", helper)
	registry := startImgRegistry(t, t.TempDir(), "--blob-store", "filesystem", "--blob-store", "upstream", "--upstream-url", upstream.URL)

	if got := testpeer.Crane(t, "digest", registry.host()+"/private/app:v1"); got != layout.RootDigest().String() {
		t.Errorf("crane digest through img registry = %s, want %s", got, layout.RootDigest())
	}
	layer := layout.Layers[0].Digest
	if got := getBlob(t, registry.url(), "private/app", layer); digest.FromBytes(got) != layer {
		t.Errorf("layer served with digest %s, want %s", digest.FromBytes(got), layer)
	}
}
