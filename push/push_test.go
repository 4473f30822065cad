package push_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rulesimg/img/image"
	"github.com/rulesimg/img/internal/faultproxy"
	"github.com/rulesimg/img/internal/testpeer"
	"github.com/rulesimg/img/push"
)

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real registry; run without -short")
	}
}

// pushLayout reads a layout and pushes it eagerly to the given destinations.
func pushLayout(t *testing.T, dir string, dests []string, opts ...push.Option) (*push.Result, error) {
	t.Helper()
	req, err := image.ReadLayout(dir)
	if err != nil {
		t.Fatalf("ReadLayout: %v", err)
	}
	for _, ref := range dests {
		dest, err := image.ParseDestination(ref)
		if err != nil {
			t.Fatalf("ParseDestination(%q): %v", ref, err)
		}
		req.Destinations = append(req.Destinations, dest)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	opts = append([]push.Option{push.WithBackoff(10*time.Millisecond, 200*time.Millisecond)}, opts...)
	return push.Push(ctx, req, push.Eager(req), opts...)
}

// checkPushed verifies with crane that ref resolves to want, that the manifest bytes
// match the layout's and that every blob reachable from it downloads with its digest.
func checkPushed(t *testing.T, env []string, ref string, info testpeer.LayoutInfo) {
	t.Helper()
	want := info.RootDigest()
	if got := testpeer.CraneEnv(t, env, "digest", ref); got != want.String() {
		t.Errorf("crane digest %s = %s, want %s", ref, got, want)
	}
	manifest := testpeer.CraneEnv(t, env, "manifest", ref)
	local, err := os.ReadFile(info.BlobPath(want))
	if err != nil {
		t.Fatal(err)
	}
	if manifest != strings.TrimSpace(string(local)) {
		t.Errorf("manifest bytes of %s differ from the layout's", ref)
	}
	repo := ref
	if i := strings.LastIndexAny(ref, ":@"); i > strings.LastIndex(ref, "/") {
		repo = ref[:i]
	}
	for _, blob := range append(append([]ocispec.Descriptor(nil), info.Configs...), info.Layers...) {
		// crane verifies the digest of what it downloads and fails otherwise.
		testpeer.CraneEnv(t, env, "blob", repo+"@"+blob.Digest.String())
	}
}

func TestPushLayoutKinds(t *testing.T) {
	skipShort(t)
	reg := testpeer.StartRegistry(t)
	cases := []struct {
		name string
		spec testpeer.LayoutSpec
	}{
		{"single manifest", testpeer.LayoutSpec{Layers: []int64{1 << 10, 3 << 20}, Gzip: true}},
		{"multi-platform index", testpeer.LayoutSpec{Layers: []int64{2 << 10, 2 << 20}, MultiPlatform: true, Gzip: true}},
		{"nested index", testpeer.LayoutSpec{Layers: []int64{4 << 10}, MultiPlatform: true, Nested: true}},
		{"docker media types", testpeer.LayoutSpec{Layers: []int64{1 << 10, 2 << 20}, Docker: true, Gzip: true}},
		{"empty layer", testpeer.LayoutSpec{Layers: []int64{1 << 10}, EmptyLayer: true}},
		{"no layers", testpeer.LayoutSpec{}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			info := testpeer.WriteLayout(t, t.TempDir(), tc.spec)
			ref := reg.Ref("kinds"+string(rune('a'+i)), ":v1")
			result, err := pushLayout(t, info.Dir, []string{ref})
			if err != nil {
				t.Fatalf("push: %v", err)
			}
			if result.Digest != info.RootDigest() {
				t.Errorf("result digest %s, want %s", result.Digest, info.RootDigest())
			}
			checkPushed(t, nil, ref, info)
		})
	}
}

func TestPushRepushUploadsNothing(t *testing.T) {
	skipShort(t)
	reg := testpeer.StartRegistry(t)
	proxy := faultproxy.New(t, reg.URL)
	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{1 << 10, 2 << 20, 3 << 20}, MultiPlatform: true})
	ref := proxy.Addr + "/repush:v1"

	if _, err := pushLayout(t, info.Dir, []string{ref}); err != nil {
		t.Fatalf("first push: %v", err)
	}
	firstUploads := proxy.Count("POST", "/blobs/uploads/")
	firstManifestPuts := proxy.Count("PUT", "/manifests/")
	firstRequests := len(proxy.Requests())

	result, err := pushLayout(t, info.Dir, []string{ref})
	if err != nil {
		t.Fatalf("second push: %v", err)
	}
	if got := proxy.Count("POST", "/blobs/uploads/") - firstUploads; got != 0 {
		t.Errorf("re-push started %d blob uploads, want 0", got)
	}
	if got := proxy.Count("PATCH", "/blobs/uploads/"); got != 0 && got != proxy.Count("PATCH", "/blobs/uploads/") {
		t.Errorf("re-push sent PATCHes")
	}
	if got := proxy.Count("PUT", "/manifests/") - firstManifestPuts; got != 0 {
		t.Errorf("re-push wrote %d manifests or tags, want 0 because the tag already points at the digest", got)
	}
	if got := result.Destinations[0].BlobsUploaded; got != 0 {
		t.Errorf("result says %d blobs uploaded, want 0", got)
	}
	if got := len(proxy.Requests()) - firstRequests; got != 1 {
		t.Errorf("re-push to the same tag sent %d requests, want 1 (HEAD of the tag)", got)
	}

	// The registry has the manifest, so a push to a new tag checks no blob at all.
	blobChecks := proxy.Count("HEAD", "/blobs/")
	if _, err := pushLayout(t, info.Dir, []string{proxy.Addr + "/repush:v2"}); err != nil {
		t.Fatalf("push to a new tag: %v", err)
	}
	if got := proxy.Count("HEAD", "/blobs/") - blobChecks; got != 0 {
		t.Errorf("push to a new tag checked %d blobs, want 0", got)
	}
	if got := testpeer.Crane(t, "digest", reg.Ref("repush", ":v2")); got != info.RootDigest().String() {
		t.Errorf("new tag points at %s, want %s", got, info.RootDigest())
	}
}

func TestPushTwoDestinations(t *testing.T) {
	skipShort(t)
	first := testpeer.StartRegistry(t)
	second := testpeer.StartRegistry(t)
	proxy := faultproxy.New(t, first.URL)
	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{1 << 10, 2 << 20}, Gzip: true})

	refs := []string{proxy.Addr + "/one:v1", proxy.Addr + "/two:v1", second.Ref("three", ":v1")}
	result, err := pushLayout(t, info.Dir, refs)
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	checkPushed(t, nil, first.Ref("one", ":v1"), info)
	checkPushed(t, nil, first.Ref("two", ":v1"), info)
	checkPushed(t, nil, second.Ref("three", ":v1"), info)

	// On the first registry each blob is uploaded once and mounted into the other repository.
	blobs := len(info.Blobs) - len(info.Manifests) - len(info.Indexes)
	if got := proxy.Count("PUT", "^/v2/[^/]+/blobs/uploads/"); got != blobs {
		t.Errorf("first registry received %d blob commits, want %d (one per blob)", got, blobs)
	}
	if got := result.Destinations[1].BlobsMounted; got != blobs {
		t.Errorf("second repository got %d mounts, want %d", got, blobs)
	}
}

func TestPushAuth(t *testing.T) {
	skipShort(t)
	for _, tc := range []struct {
		name string
		opt  testpeer.RegistryOption
	}{
		{"htpasswd", testpeer.WithHtpasswd("alice", "secret-1")},
		{"token", testpeer.WithTokenAuth("bob", "secret-2")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := testpeer.StartRegistry(t, tc.opt)
			config := reg.DockerConfig(t)
			t.Setenv("DOCKER_CONFIG", config)
			info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{1 << 10, 2 << 20}})
			ref := reg.Ref("private/app", ":v1")
			if _, err := pushLayout(t, info.Dir, []string{ref}); err != nil {
				t.Fatalf("push: %v", err)
			}
			checkPushed(t, []string{"DOCKER_CONFIG=" + config}, ref, info)
		})
	}
}

func TestPushWrongPassword(t *testing.T) {
	skipShort(t)
	reg := testpeer.StartRegistry(t, testpeer.WithHtpasswd("alice", "secret-1"))
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{1 << 10}})
	_, err := pushLayout(t, info.Dir, []string{reg.Ref("app", ":v1")})
	if err == nil {
		t.Fatal("push without credentials succeeded")
	}
	if !strings.Contains(err.Error(), "401") {
		t.Errorf("error %q does not mention the 401 answer", err)
	}
}

func TestPushRetriesAndResume(t *testing.T) {
	skipShort(t)
	reg := testpeer.StartRegistry(t)
	proxy := faultproxy.New(t, reg.URL)
	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{8 << 20}, RawLayers: true})

	proxy.FailNext("HEAD", "/blobs/", 1, 429, "1")
	proxy.FailNext("POST", "/blobs/uploads/", 1, 503, "")
	proxy.ResetAfter("PATCH", "/blobs/uploads/", 1, 3<<20)
	started := time.Now()
	ref := proxy.Addr + "/faults:v1"
	if _, err := pushLayout(t, info.Dir, []string{ref}); err != nil {
		t.Fatalf("push through faults: %v", err)
	}
	if waited := time.Since(started); waited < time.Second {
		t.Errorf("push took %s; the 429's Retry-After of 1s was not honoured", waited)
	}
	checkPushed(t, nil, reg.Ref("faults", ":v1"), info)

	statusQueries := 0
	for _, r := range proxy.Requests() {
		if r.Method == "GET" && strings.Contains(r.Path, "/blobs/uploads/") {
			statusQueries++
		}
	}
	if statusQueries == 0 {
		t.Error("after the reset the upload did not ask the session for its committed range")
	}
}

func TestPushNoRetryOnClientError(t *testing.T) {
	skipShort(t)
	reg := testpeer.StartRegistry(t)
	proxy := faultproxy.New(t, reg.URL)
	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{1 << 10}})
	proxy.FailNext("POST", "/blobs/uploads/", 10, 400, "")
	_, err := pushLayout(t, info.Dir, []string{proxy.Addr + "/bad:v1"})
	if err == nil {
		t.Fatal("push succeeded although every upload start answered 400")
	}
	if got := proxy.Count("POST", "/blobs/uploads/"); got != 2 {
		t.Errorf("sent %d upload starts, want 2 (one per blob, no retries of a 400)", got)
	}
}

func TestPushCorruptFileNamesIt(t *testing.T) {
	skipShort(t)
	reg := testpeer.StartRegistry(t)
	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{2 << 20}, RawLayers: true})
	layer := info.Layers[0]
	path := info.BlobPath(layer.Digest)
	corrupt(t, path)

	for _, verify := range []bool{false, true} {
		_, err := pushLayout(t, info.Dir, []string{reg.Ref("corrupt", ":v1")}, push.WithVerify(verify))
		if err == nil {
			t.Fatalf("verify=%v: push of a corrupt layer succeeded", verify)
		}
		if !strings.Contains(err.Error(), path) {
			t.Errorf("verify=%v: error %q does not name the file %s", verify, err, path)
		}
		if !strings.Contains(err.Error(), layer.Digest.String()) {
			t.Errorf("verify=%v: error %q does not name the expected digest", verify, err)
		}
	}
}

func corrupt(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("corrupted"), 100); err != nil {
		t.Fatal(err)
	}
}

func TestPushChunked(t *testing.T) {
	skipShort(t)
	reg := testpeer.StartRegistry(t)
	proxy := faultproxy.New(t, reg.URL)
	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{5<<20 + 123}, RawLayers: true})
	if _, err := pushLayout(t, info.Dir, []string{proxy.Addr + "/chunked:v1"}, push.WithChunkSize(1<<20)); err != nil {
		t.Fatalf("push: %v", err)
	}
	// Six chunks for the layer, one for the small config.
	if got := proxy.Count("PATCH", "/blobs/uploads/"); got != 7 {
		t.Errorf("sent %d PATCHes for a 5 MiB + 123 B layer and a config in 1 MiB chunks, want 7", got)
	}
	checkPushed(t, nil, reg.Ref("chunked", ":v1"), info)
}

func TestPushRetagMovesTag(t *testing.T) {
	skipShort(t)
	reg := testpeer.StartRegistry(t)
	first := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{1 << 10}})
	second := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{2 << 10}})
	ref := reg.Ref("retag", ":latest")
	for _, info := range []testpeer.LayoutInfo{first, second} {
		if _, err := pushLayout(t, info.Dir, []string{ref}); err != nil {
			t.Fatal(err)
		}
	}
	if got := testpeer.Crane(t, "digest", ref); got != second.RootDigest().String() {
		t.Errorf("tag points at %s, want the second image %s", got, second.RootDigest())
	}
}

func TestPushMissingDestination(t *testing.T) {
	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{16}})
	req, err := image.ReadLayout(info.Dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = push.Push(context.Background(), req, push.Eager(req))
	if err == nil || !strings.Contains(err.Error(), "no destination") {
		t.Errorf("err = %v, want a no-destination error", err)
	}
}

func httpHead(url string) (int, error) {
	res, err := http.Head(url)
	if err != nil {
		return 0, err
	}
	res.Body.Close()
	return res.StatusCode, nil
}

func TestEagerPushMissingFileFailsBeforeWriting(t *testing.T) {
	skipShort(t)
	reg := testpeer.StartRegistry(t)
	proxy := faultproxy.New(t, reg.URL)
	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{1 << 10, 2 << 10}})
	req, err := image.ReadLayout(info.Dir)
	if err != nil {
		t.Fatal(err)
	}
	delete(req.Files, info.Layers[1].Digest)
	dest, _ := image.ParseDestination(proxy.Addr + "/missing:v1")
	req.Destinations = []image.Destination{dest}
	_, err = push.Push(context.Background(), req, push.Eager(req))
	if err == nil {
		t.Fatal("eager push without a layer file succeeded")
	}
	if !strings.Contains(err.Error(), "layer 2 of manifest") || !strings.Contains(err.Error(), "--strategy lazy") {
		t.Errorf("error does not name the layer and the fix: %v", err)
	}
	if n := proxy.Count("POST", "."); n != 0 {
		t.Errorf("%d uploads started before the missing file was found", n)
	}
}

// TestPushZeroByteConfig pushes an image whose config blob is empty, which registries
// must accept like any other blob.
func TestPushZeroByteConfig(t *testing.T) {
	skipShort(t)
	reg := testpeer.StartRegistry(t)
	dir := t.TempDir()
	write := func(name string, body []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, body, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	config := ocispec.Descriptor{MediaType: "application/vnd.example.empty+json", Digest: digest.FromBytes(nil), Size: 0}
	layerBody := []byte("a layer of an artifact")
	layer := ocispec.Descriptor{MediaType: "application/vnd.example.data", Digest: digest.FromBytes(layerBody), Size: int64(len(layerBody))}
	manifestBody, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    config,
		Layers:    []ocispec.Descriptor{layer},
	})
	if err != nil {
		t.Fatal(err)
	}
	root := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(manifestBody), Size: int64(len(manifestBody))}
	dest, _ := image.ParseDestination(reg.Ref("empty-config", ":v1"))
	req := &image.Request{
		Image: &image.Image{Root: root, Manifests: map[digest.Digest]*image.Manifest{
			root.Digest: {Descriptor: root, Config: &config, Layers: []ocispec.Descriptor{layer}},
		}},
		Files: map[digest.Digest]string{
			config.Digest: write("config", nil),
			layer.Digest:  write("layer", layerBody),
			root.Digest:   write("manifest", manifestBody),
		},
		Destinations: []image.Destination{dest},
	}
	if _, err := push.Push(context.Background(), req, push.Eager(req)); err != nil {
		t.Fatalf("push: %v", err)
	}
	if got := testpeer.Crane(t, "digest", reg.Ref("empty-config", ":v1")); got != root.Digest.String() {
		t.Errorf("crane digest = %s, want %s", got, root.Digest)
	}
	testpeer.Crane(t, "blob", reg.Ref("empty-config", "@"+config.Digest.String()))
}

func TestEagerPushDeletedFileFailsBeforeWriting(t *testing.T) {
	skipShort(t)
	reg := testpeer.StartRegistry(t)
	proxy := faultproxy.New(t, reg.URL)
	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{1 << 10, 2 << 10}})
	req, err := image.ReadLayout(info.Dir)
	if err != nil {
		t.Fatal(err)
	}
	path := info.BlobPath(info.Layers[0].Digest)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	dest, _ := image.ParseDestination(proxy.Addr + "/deleted:v1")
	req.Destinations = []image.Destination{dest}
	_, err = push.Push(context.Background(), req, push.Eager(req))
	if err == nil {
		t.Fatal("eager push with a deleted layer file succeeded")
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "layer 1 of manifest") {
		t.Errorf("error does not name the file and the layer: %v", err)
	}
	if n := proxy.Count("POST", "."); n != 0 {
		t.Errorf("%d uploads started before the missing file was found", n)
	}
}
