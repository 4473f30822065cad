package push_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"

	"github.com/rulesimg/img/blobsource"
	"github.com/rulesimg/img/image"
	"github.com/rulesimg/img/internal/faultproxy"
	"github.com/rulesimg/img/internal/testpeer"
	"github.com/rulesimg/img/push"
	"github.com/rulesimg/img/reapi"
)

// cachedLayout writes a layout, uploads all its blobs to the cache and returns a push
// request with no local files, as a Bazel build without the bytes leaves it.
func cachedLayout(t *testing.T, client *reapi.Client, spec testpeer.LayoutSpec) (*image.Request, testpeer.LayoutInfo) {
	t.Helper()
	info := testpeer.WriteLayout(t, t.TempDir(), spec)
	req, err := image.ReadLayout(info.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for d, path := range req.Files {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		stat, _ := f.Stat()
		err = client.Write(context.Background(), reapi.Digest{Hash: d.Encoded(), Size: stat.Size()}, f)
		f.Close()
		if err != nil {
			t.Fatalf("uploading %s to the cache: %v", d, err)
		}
	}
	req.Files = map[digest.Digest]string{}
	req.Strategy = image.StrategyLazy
	return req, info
}

func dialCache(t *testing.T, endpoint string) *reapi.Client {
	t.Helper()
	client, err := reapi.Dial(context.Background(), endpoint, reapi.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

func lazyPush(t *testing.T, req *image.Request, client *reapi.Client, refs ...string) (*push.Result, error) {
	t.Helper()
	req.Destinations = nil
	for _, ref := range refs {
		dest, err := image.ParseDestination(ref)
		if err != nil {
			t.Fatal(err)
		}
		req.Destinations = append(req.Destinations, dest)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	return push.Push(ctx, req, push.Lazy(req, blobsource.CAS{Client: client}), push.WithBackoff(10*time.Millisecond, 200*time.Millisecond))
}

func TestLazyPush(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t)
	reg := testpeer.StartRegistry(t)
	client := dialCache(t, cache.Endpoint())
	for _, tc := range []struct {
		name string
		spec testpeer.LayoutSpec
	}{
		{"multi-layer image", testpeer.LayoutSpec{Layers: []int64{1 << 10, 3 << 20, 6 << 20}, Gzip: true}},
		{"multi-platform index", testpeer.LayoutSpec{Layers: []int64{2 << 10, 2 << 20}, MultiPlatform: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, info := cachedLayout(t, client, tc.spec)
			ref := reg.Ref("lazy/"+strings.ReplaceAll(tc.name, " ", "-"), ":v1")
			if _, err := lazyPush(t, req, client, ref); err != nil {
				t.Fatalf("lazy push: %v", err)
			}
			checkPushed(t, nil, ref, info)
		})
	}
}

func TestLazyPushTwoRegistries(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t)
	first, second := testpeer.StartRegistry(t), testpeer.StartRegistry(t)
	client := dialCache(t, cache.Endpoint())
	req, info := cachedLayout(t, client, testpeer.LayoutSpec{Layers: []int64{4 << 20, 1 << 10}})
	refs := []string{first.Ref("app", ":v1"), second.Ref("app", ":v1")}
	if _, err := lazyPush(t, req, client, refs...); err != nil {
		t.Fatalf("lazy push: %v", err)
	}
	for _, ref := range refs {
		checkPushed(t, nil, ref, info)
	}
}

func TestLazyPushPreflightEvicted(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t)
	reg := testpeer.StartRegistry(t)
	proxy := faultproxy.New(t, reg.URL)
	client := dialCache(t, cache.Endpoint())
	req, info := cachedLayout(t, client, testpeer.LayoutSpec{Layers: []int64{1 << 10, 2 << 10, 3 << 10}})
	evicted := info.Layers[1]
	client.Close()
	cache.EvictBlob(t, evicted.Digest.Encoded())
	client = dialCache(t, cache.Endpoint())

	_, err := lazyPush(t, req, client, proxy.Addr+"/evicted:v1")
	if err == nil {
		t.Fatal("lazy push succeeded although a layer is not in the cache")
	}
	for _, want := range []string{evicted.Digest.String(), "layer 2 of manifest", cache.Endpoint(), "evicted"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
	for _, method := range []string{"POST", "PATCH", "PUT"} {
		if n := proxy.Count(method, "."); n != 0 {
			t.Errorf("preflight failure still sent %d %s requests to the registry", n, method)
		}
	}
}

func TestLazyPushStreamCut(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t)
	reg := testpeer.StartRegistry(t)
	direct := dialCache(t, cache.Endpoint())
	req, info := cachedLayout(t, direct, testpeer.LayoutSpec{Layers: []int64{16 << 20}, RawLayers: true})

	cut := faultproxy.NewTCP(t, cache.GRPCAddr)
	client := dialCache(t, "grpc://"+cut.Addr)
	cut.CutAfter(6 << 20)
	ref := reg.Ref("cut", ":v1")
	if _, err := lazyPush(t, req, client, ref); err != nil {
		t.Fatalf("lazy push through a cut stream: %v", err)
	}
	if cut.Cuts() == 0 {
		t.Error("the proxy never cut the stream; the test proved nothing")
	}
	checkPushed(t, nil, ref, info)
}

// corruptCAS is a test-only cache that has every blob but serves wrong bytes, the one
// behaviour no real cache can be made to show on demand.
type corruptCAS struct {
	repb.UnimplementedCapabilitiesServer
	repb.UnimplementedContentAddressableStorageServer
	bytestream.UnimplementedByteStreamServer
}

func (corruptCAS) GetCapabilities(context.Context, *repb.GetCapabilitiesRequest) (*repb.ServerCapabilities, error) {
	return &repb.ServerCapabilities{CacheCapabilities: &repb.CacheCapabilities{
		DigestFunctions: []repb.DigestFunction_Value{repb.DigestFunction_SHA256},
	}}, nil
}

func (corruptCAS) FindMissingBlobs(context.Context, *repb.FindMissingBlobsRequest) (*repb.FindMissingBlobsResponse, error) {
	return &repb.FindMissingBlobsResponse{}, nil
}

func (corruptCAS) BatchReadBlobs(_ context.Context, req *repb.BatchReadBlobsRequest) (*repb.BatchReadBlobsResponse, error) {
	res := &repb.BatchReadBlobsResponse{}
	for _, d := range req.Digests {
		res.Responses = append(res.Responses, &repb.BatchReadBlobsResponse_Response{Digest: d, Data: make([]byte, d.SizeBytes)})
	}
	return res, nil
}

func (corruptCAS) Read(req *bytestream.ReadRequest, stream bytestream.ByteStream_ReadServer) error {
	parts := strings.Split(req.ResourceName, "/")
	var size int64
	for i, part := range parts {
		if part == "blobs" && i+2 < len(parts) {
			size = mustAtoi(parts[i+2])
		}
	}
	chunk := make([]byte, 64<<10)
	for sent := req.ReadOffset; sent < size; {
		n := min(int64(len(chunk)), size-sent)
		if err := stream.Send(&bytestream.ReadResponse{Data: chunk[:n]}); err != nil {
			return err
		}
		sent += n
	}
	return nil
}

func mustAtoi(s string) int64 {
	var n int64
	for _, c := range s {
		n = n*10 + int64(c-'0')
	}
	return n
}

func TestLazyPushCorruptCacheBytes(t *testing.T) {
	skipShort(t)
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer()
	repb.RegisterCapabilitiesServer(server, &corruptCAS{})
	repb.RegisterContentAddressableStorageServer(server, &corruptCAS{})
	bytestream.RegisterByteStreamServer(server, &corruptCAS{})
	go server.Serve(listener)
	t.Cleanup(server.Stop)

	reg := testpeer.StartRegistry(t)
	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{3 << 20}, RawLayers: true})
	req, err := image.ReadLayout(info.Dir)
	if err != nil {
		t.Fatal(err)
	}
	layer := info.Layers[0]
	delete(req.Files, layer.Digest) // only the layer comes from the corrupt cache
	client := dialCache(t, "grpc://"+listener.Addr().String())

	_, err = lazyPush(t, req, client, reg.Ref("corrupt", ":v1"))
	if err == nil {
		t.Fatal("lazy push of corrupt cache bytes succeeded")
	}
	if !strings.Contains(err.Error(), layer.Digest.String()) {
		t.Errorf("error does not name the layer %s: %v", layer.Digest, err)
	}
	if blobExists(t, reg.URL+"/v2/corrupt/manifests/v1") {
		t.Error("tag v1 exists after a failed push")
	}
	sum := sha256.Sum256(make([]byte, layer.Size))
	if blobExists(t, reg.URL+"/v2/corrupt/blobs/sha256:"+hex.EncodeToString(sum[:])) {
		t.Error("the registry committed the corrupt bytes under their own digest")
	}
	if blobExists(t, reg.URL+"/v2/corrupt/blobs/"+layer.Digest.String()) {
		t.Error("the registry committed the layer although the cache sent wrong bytes")
	}
}

func blobExists(t *testing.T, url string) bool {
	t.Helper()
	res, err := httpHead(url)
	if err != nil {
		t.Fatal(err)
	}
	return res == 200
}

// countingSource counts how often each blob is opened from offset 0.
type countingSource struct {
	blobsource.CAS
	mu    sync.Mutex
	opens map[digest.Digest]int
}

func (c *countingSource) Open(ctx context.Context, desc ocispec.Descriptor, offset int64) (io.ReadCloser, error) {
	c.mu.Lock()
	c.opens[desc.Digest]++
	c.mu.Unlock()
	return c.CAS.Open(ctx, desc, offset)
}

func TestLazyPushReadsEachBlobOnce(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t)
	first, second := testpeer.StartRegistry(t), testpeer.StartRegistry(t)
	client := dialCache(t, cache.Endpoint())
	req, info := cachedLayout(t, client, testpeer.LayoutSpec{Layers: []int64{3 << 20, 2 << 20}})
	for _, ref := range []string{first.Ref("a", ":v1"), first.Ref("b", ":v1"), second.Ref("c", ":v1")} {
		dest, _ := image.ParseDestination(ref)
		req.Destinations = append(req.Destinations, dest)
	}
	source := &countingSource{CAS: blobsource.CAS{Client: client}, opens: map[digest.Digest]int{}}
	strategy := push.Lazy(req, source)
	if _, err := push.Push(context.Background(), req, strategy); err != nil {
		t.Fatalf("lazy push: %v", err)
	}
	for _, layer := range info.Layers {
		if n := source.opens[layer.Digest]; n != 1 {
			t.Errorf("layer %s was read from the cache %d times for three destinations on two registries, want 1", layer.Digest, n)
		}
	}
	checkPushed(t, nil, first.Ref("b", ":v1"), info)
	checkPushed(t, nil, second.Ref("c", ":v1"), info)
}
