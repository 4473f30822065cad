package upstream

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
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
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rulesimg/img/credhelper"
	"github.com/rulesimg/img/internal/testpeer"
	"github.com/rulesimg/img/registry/blobstore"
	"github.com/rulesimg/img/registry/metadata"
)

// pushImage writes a one-platform image layout and pushes it to reg as repository:v1.
func pushImage(t *testing.T, reg *testpeer.Registry, repository string) testpeer.LayoutInfo {
	t.Helper()
	layout := testpeer.WriteLayout(t, filepath.Join(t.TempDir(), "layout"), testpeer.LayoutSpec{
		Layers: []int64{1000, 300 << 10},
		Gzip:   true,
	})
	reg.Crane(t, "push", layout.Dir, reg.Ref(repository, ":v1"))
	return layout
}

// useDockerConfig points authn.DefaultKeychain at dir for the rest of the test.
func useDockerConfig(t *testing.T, dir string) {
	t.Setenv("DOCKER_CONFIG", dir)
}

// writeDockerConfig writes a docker config.json with one auths entry and returns its folder.
func writeDockerConfig(t *testing.T, host, user, password string) string {
	t.Helper()
	dir := t.TempDir()
	config := map[string]any{"auths": map[string]any{
		host: map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + password))},
	}}
	data, _ := json.Marshal(config)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func newTestStore(t *testing.T, opts Options) *Store {
	t.Helper()
	store, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return store
}

// checkBlob reads blob through the store in repository and compares its size and digest.
func checkBlob(t *testing.T, store *Store, repository string, blob ocispec.Descriptor) {
	t.Helper()
	ctx := blobstore.WithRepository(context.Background(), repository)

	size, err := store.Stat(ctx, blob.Digest)
	if err != nil {
		t.Fatalf("Stat %s: %v", blob.Digest, err)
	}
	if size != blob.Size {
		t.Errorf("Stat %s = %d bytes, want %d", blob.Digest, size, blob.Size)
	}

	reader, err := store.Open(ctx, blob.Digest, 0)
	if err != nil {
		t.Fatalf("Open %s: %v", blob.Digest, err)
	}
	defer reader.Close()
	digester := digest.Canonical.Digester()
	if _, err := io.Copy(digester.Hash(), reader); err != nil {
		t.Fatal(err)
	}
	if digester.Digest() != blob.Digest {
		t.Errorf("Open %s streamed bytes with digest %s", blob.Digest, digester.Digest())
	}
}

func TestStoreReadsPushedImage(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a distribution registry")
	}
	useDockerConfig(t, t.TempDir())
	reg := testpeer.StartRegistry(t)
	layout := pushImage(t, reg, "team/app")
	store := newTestStore(t, Options{URL: reg.URL})

	for _, blob := range append(layout.Configs, layout.Layers...) {
		checkBlob(t, store, "team/app", blob)
	}

	for _, reference := range []string{"v1", layout.RootDigest().String()} {
		manifest, err := store.Manifest(context.Background(), "team/app", reference)
		if err != nil {
			t.Fatalf("Manifest %s: %v", reference, err)
		}
		if manifest.Digest != layout.RootDigest() {
			t.Errorf("Manifest %s digest = %s, want %s", reference, manifest.Digest, layout.RootDigest())
		}
		if manifest.MediaType != layout.Root.MediaType {
			t.Errorf("Manifest %s media type = %s, want %s", reference, manifest.MediaType, layout.Root.MediaType)
		}
		if digest.FromBytes(manifest.Content) != layout.RootDigest() {
			t.Errorf("Manifest %s content has digest %s", reference, digest.FromBytes(manifest.Content))
		}
	}
}

func TestStoreOpenFromOffset(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a distribution registry")
	}
	useDockerConfig(t, t.TempDir())
	reg := testpeer.StartRegistry(t)
	layout := pushImage(t, reg, "app")
	store := newTestStore(t, Options{URL: reg.URL})
	ctx := blobstore.WithRepository(context.Background(), "app")
	layer := layout.Layers[1]
	whole, err := os.ReadFile(layout.BlobPath(layer.Digest))
	if err != nil {
		t.Fatal(err)
	}

	for _, offset := range []int64{1, layer.Size / 2, layer.Size - 1, layer.Size} {
		reader, err := store.Open(ctx, layer.Digest, offset)
		if err != nil {
			t.Fatalf("Open at %d: %v", offset, err)
		}
		got, err := io.ReadAll(reader)
		reader.Close()
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(whole[offset:]) {
			t.Errorf("Open at %d returned %d bytes, want the %d from that offset", offset, len(got), int64(len(whole))-offset)
		}
	}
}

func TestStoreMissingIsUnknown(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a distribution registry")
	}
	useDockerConfig(t, t.TempDir())
	reg := testpeer.StartRegistry(t)
	pushImage(t, reg, "app")
	store := newTestStore(t, Options{URL: reg.URL})
	missing := digest.FromString("not in the upstream")

	for _, repository := range []string{"app", "no/such/repository"} {
		ctx := blobstore.WithRepository(context.Background(), repository)
		if _, err := store.Stat(ctx, missing); !errors.Is(err, blobstore.ErrNotFound) {
			t.Errorf("Stat of missing blob in %s = %v, want ErrNotFound", repository, err)
		}
		if _, err := store.Open(ctx, missing, 0); !errors.Is(err, blobstore.ErrNotFound) {
			t.Errorf("Open of missing blob in %s = %v, want ErrNotFound", repository, err)
		}
		for _, reference := range []string{"no-such-tag", missing.String()} {
			if _, err := store.Manifest(context.Background(), repository, reference); !errors.Is(err, metadata.ErrManifestUnknown) {
				t.Errorf("Manifest %s in %s = %v, want ErrManifestUnknown", reference, repository, err)
			}
		}
	}

	if _, err := store.Stat(context.Background(), missing); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat without a repository = %v, want ErrNotFound", err)
	}
}

func TestStoreIsReadOnly(t *testing.T) {
	store := newTestStore(t, Options{URL: "http://127.0.0.1:1"})
	if !store.ReadOnly() {
		t.Error("ReadOnly = false")
	}
	if _, err := store.Create(context.Background()); !errors.Is(err, blobstore.ErrReadOnly) {
		t.Errorf("Create = %v, want ErrReadOnly", err)
	}
	if err := store.Delete(context.Background(), digest.FromString("x")); !errors.Is(err, blobstore.ErrReadOnly) {
		t.Errorf("Delete = %v, want ErrReadOnly", err)
	}
}

func TestStoreAuthFromDockerConfig(t *testing.T) {
	if testing.Short() {
		t.Skip("starts distribution registries and a token server")
	}
	cases := []struct {
		name   string
		option testpeer.RegistryOption
	}{
		{"htpasswd", testpeer.WithHtpasswd("puller", "pull-secret")},
		{"token", testpeer.WithTokenAuth("puller", "pull-secret")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reg := testpeer.StartRegistry(t, tc.option)
			useDockerConfig(t, reg.DockerConfig(t))
			layout := pushImage(t, reg, "private/app")
			store := newTestStore(t, Options{URL: reg.URL})

			checkBlob(t, store, "private/app", layout.Layers[0])
			if _, err := store.Manifest(context.Background(), "private/app", "v1"); err != nil {
				t.Errorf("Manifest v1: %v", err)
			}
		})
	}
}

func TestStoreWrongCredentialsNotUnknown(t *testing.T) {
	if testing.Short() {
		t.Skip("starts distribution registries and a token server")
	}
	cases := []struct {
		name   string
		option testpeer.RegistryOption
	}{
		{"htpasswd", testpeer.WithHtpasswd("puller", "pull-secret")},
		{"token", testpeer.WithTokenAuth("puller", "pull-secret")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reg := testpeer.StartRegistry(t, tc.option)
			useDockerConfig(t, reg.DockerConfig(t))
			layout := pushImage(t, reg, "private/app")
			useDockerConfig(t, writeDockerConfig(t, reg.Addr, "puller", "wrong-password"))
			store := newTestStore(t, Options{URL: reg.URL})
			ctx := blobstore.WithRepository(context.Background(), "private/app")

			_, err := store.Stat(ctx, layout.Layers[0].Digest)
			if err == nil {
				t.Fatal("Stat with a wrong password succeeded")
			}
			if errors.Is(err, blobstore.ErrNotFound) {
				t.Errorf("Stat with a wrong password = %v, which reads as a missing blob", err)
			}
			if !strings.Contains(err.Error(), "rejected our credentials") {
				t.Errorf("Stat error %q does not say the upstream rejected the credentials", err)
			}

			_, err = store.Manifest(context.Background(), "private/app", "v1")
			if errors.Is(err, metadata.ErrManifestUnknown) {
				t.Errorf("Manifest with a wrong password = %v, which reads as a missing manifest", err)
			}
			if err == nil || !strings.Contains(err.Error(), "rejected our credentials") {
				t.Errorf("Manifest error %v does not say the upstream rejected the credentials", err)
			}
		})
	}
}

// writeCredentialHelper writes a Bazel credential helper that returns a Basic Authorization
// header for user and password, and logs each URI it was given to a file.
func writeCredentialHelper(t *testing.T, user, password string) (path, uriLog string) {
	t.Helper()
	dir := t.TempDir()
	path = filepath.Join(dir, "helper")
	uriLog = filepath.Join(dir, "uris")
	token := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	script := fmt.Sprintf("#!/bin/sh\ncat >> %q\necho >> %q\necho '{\"headers\":{\"Authorization\":[\"Basic %s\"]}}'\n", uriLog, uriLog, token)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, uriLog
}

func TestStoreAuthFromCredentialHelper(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a distribution registry")
	}
	reg := testpeer.StartRegistry(t, testpeer.WithHtpasswd("puller", "pull-secret"))
	useDockerConfig(t, reg.DockerConfig(t))
	layout := pushImage(t, reg, "private/app")
	useDockerConfig(t, t.TempDir())

	helperPath, uriLog := writeCredentialHelper(t, "puller", "pull-secret")
	store := newTestStore(t, Options{URL: reg.URL, CredentialHelper: credhelper.New(helperPath)})

	checkBlob(t, store, "private/app", layout.Layers[1])
	uris, err := os.ReadFile(uriLog)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(uris), reg.URL+"/v2/") {
		t.Errorf("credential helper was asked for %q, want %s/v2/", uris, reg.URL)
	}
}

// storageServer serves the distribution registry's storage folder over HTTP, as its redirect
// middleware expects, and counts requests that carried an Authorization header.
type storageServer struct {
	*httptest.Server
	root        atomic.Pointer[string]
	requests    atomic.Int64
	withAuthHdr atomic.Int64
}

func startStorageServer(t *testing.T) *storageServer {
	t.Helper()
	s := &storageServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		if r.Header.Get("Authorization") != "" {
			s.withAuthHdr.Add(1)
		}
		http.FileServer(http.Dir(*s.root.Load())).ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

// startRedirectingRegistry starts a registry with basic auth whose blob GETs redirect to a
// storage server on another port.
func startRedirectingRegistry(t *testing.T) (*testpeer.Registry, *storageServer) {
	t.Helper()
	storage := startStorageServer(t)
	reg := testpeer.StartRegistry(t, testpeer.WithHtpasswd("puller", "pull-secret"),
		testpeer.WithRegistryConfigYAML(fmt.Sprintf("middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: %q\n", storage.URL)))
	storage.root.Store(&reg.Dir)
	return reg, storage
}

func TestStoreRedirectPassedOnWithoutCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a distribution registry")
	}
	reg, storage := startRedirectingRegistry(t)
	useDockerConfig(t, reg.DockerConfig(t))
	layout := pushImage(t, reg, "private/app")
	layer := layout.Layers[1]
	store := newTestStore(t, Options{URL: reg.URL, Redirect: true})
	ctx := blobstore.WithRepository(context.Background(), "private/app")

	location, ok, err := store.RedirectURL(ctx, layer.Digest)
	if err != nil || !ok {
		t.Fatalf("RedirectURL = %q, %v, %v; want the storage server's URL", location, ok, err)
	}
	if !strings.HasPrefix(location, storage.URL+"/") {
		t.Errorf("RedirectURL = %q, want a URL on the storage server %s", location, storage.URL)
	}
	if storage.requests.Load() != 0 {
		t.Errorf("storage server saw %d requests before the client followed the redirect, want 0", storage.requests.Load())
	}

	resp, err := http.Get(location)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if digest.FromBytes(body) != layer.Digest {
		t.Errorf("redirect target served digest %s, want %s", digest.FromBytes(body), layer.Digest)
	}
}

func TestStoreFollowsRedirectWithoutCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a distribution registry")
	}
	reg, storage := startRedirectingRegistry(t)
	useDockerConfig(t, reg.DockerConfig(t))
	layout := pushImage(t, reg, "private/app")
	store := newTestStore(t, Options{URL: reg.URL})

	if _, ok, _ := store.RedirectURL(context.Background(), layout.Layers[0].Digest); ok {
		t.Error("RedirectURL returned a URL without Options.Redirect")
	}
	checkBlob(t, store, "private/app", layout.Layers[1])

	if storage.requests.Load() == 0 {
		t.Fatal("storage server saw no request; the registry did not redirect, so the test proves nothing")
	}
	if storage.withAuthHdr.Load() != 0 {
		t.Errorf("storage server received %d requests with an Authorization header, want 0", storage.withAuthHdr.Load())
	}
}

func TestNewChecksURL(t *testing.T) {
	cases := []struct {
		url       string
		plainHTTP bool
		valid     bool
	}{
		{"http://127.0.0.1:5000", false, true},
		{"http://localhost:5000", false, true},
		{"http://[::1]:5000", false, true},
		{"https://registry.example.com", false, true},
		{"http://registry.example.com", false, false},
		{"http://registry.example.com", true, true},
		{"http://127.0.0.1:5000/v2/", false, false},
		{"registry.example.com", false, false},
		{"ftp://127.0.0.1", false, false},
	}
	for _, tc := range cases {
		_, err := New(Options{URL: tc.url, AllowPlainHTTP: tc.plainHTTP})
		if tc.valid && err != nil {
			t.Errorf("New(%q, plain HTTP allowed: %v) = %v, want success", tc.url, tc.plainHTTP, err)
		}
		if !tc.valid && err == nil {
			t.Errorf("New(%q, plain HTTP allowed: %v) succeeded, want an error", tc.url, tc.plainHTTP)
		}
	}
}

// TestStoreOpenReportsCorruptBlob corrupts a layer in the upstream's storage (same length,
// other bytes) and checks that reading it whole ends in an error naming the digest.
func TestStoreOpenReportsCorruptBlob(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a distribution registry")
	}
	useDockerConfig(t, t.TempDir())
	reg := testpeer.StartRegistry(t)
	layout := pushImage(t, reg, "app")
	layer := layout.Layers[0]
	hex := layer.Digest.Encoded()
	stored := filepath.Join(reg.Dir, "docker", "registry", "v2", "blobs", "sha256", hex[:2], hex, "data")
	if err := os.WriteFile(stored, make([]byte, layer.Size), 0o644); err != nil {
		t.Fatal(err)
	}
	store := newTestStore(t, Options{URL: reg.URL})

	reader, err := store.Open(blobstore.WithRepository(context.Background(), "app"), layer.Digest, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	// Read exactly the blob's size, as the registry's handler does, without waiting for EOF.
	_, err = io.Copy(io.Discard, io.LimitReader(reader, layer.Size))
	if err == nil || !strings.Contains(err.Error(), layer.Digest.String()) {
		t.Errorf("reading a corrupted blob = %v, want an error naming %s", err, layer.Digest)
	}
}
