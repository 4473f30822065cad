package registry_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rulesimg/img/registry"
	"github.com/rulesimg/img/registry/blobstore"
	"github.com/rulesimg/img/registry/blobstore/filesystem"
	"github.com/rulesimg/img/registry/metadata"
)

type testRegistry struct {
	url     string
	client  *http.Client
	metrics *prometheus.Registry
}

// startRegistry serves a registry over the filesystem store and bbolt on 127.0.0.1.
func startRegistry(t *testing.T, chunkMinLength int64) *testRegistry {
	t.Helper()
	return startRegistryWith(t, func(opts *registry.Options) { opts.ChunkMinLength = chunkMinLength })
}

// startRegistryWith is startRegistry with options changed by configure.
func startRegistryWith(t *testing.T, configure func(*registry.Options)) *testRegistry {
	t.Helper()
	return startRegistryAt(t, t.TempDir(), configure)
}

// startRegistryIn is startRegistry with its data in dir.
func startRegistryIn(t *testing.T, dir string) *testRegistry {
	t.Helper()
	return startRegistryAt(t, dir, func(*registry.Options) {})
}

func startRegistryAt(t *testing.T, dir string, configure func(*registry.Options)) *testRegistry {
	t.Helper()
	blobs, err := filesystem.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	meta, err := metadata.OpenBolt(filepath.Join(dir, "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { meta.Close() })

	metrics := prometheus.NewRegistry()
	opts := registry.Options{
		Blobs:      blobstore.WithSizeIndex(blobs, meta),
		Metadata:   meta,
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registerer: metrics,
	}
	configure(&opts)
	server, err := registry.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpServer := httptest.NewUnstartedServer(server)
	httpServer.Listener = listener
	httpServer.Start()
	t.Cleanup(httpServer.Close)
	return &testRegistry{url: httpServer.URL, client: httpServer.Client(), metrics: metrics}
}

func (r *testRegistry) do(t *testing.T, method, path string, body []byte, headers ...string) *http.Response {
	t.Helper()
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	target := path
	if strings.HasPrefix(path, "/") {
		target = r.url + path
	}
	req, err := http.NewRequest(method, target, reader)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := r.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func readBody(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func expectStatus(t *testing.T, resp *http.Response, want int) {
	t.Helper()
	if resp.StatusCode != want {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s %s: status %d, want %d; body %s", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, want, body)
	}
}

func expectErrorCode(t *testing.T, resp *http.Response, status int, code string) {
	t.Helper()
	expectStatus(t, resp, status)
	if resp.Request.Method == http.MethodHead {
		return
	}
	var body struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("decode error body: %v", err)
	}
	if len(body.Errors) != 1 || body.Errors[0].Code != code {
		t.Errorf("error body %+v, want code %s", body, code)
	}
}

// pushBlob uploads content monolithically and returns its digest.
func (r *testRegistry) pushBlob(t *testing.T, repo string, content []byte) digest.Digest {
	t.Helper()
	dgst := digest.FromBytes(content)
	resp := r.do(t, http.MethodPost, fmt.Sprintf("/v2/%s/blobs/uploads/?digest=%s", repo, dgst), content)
	expectStatus(t, resp, http.StatusCreated)
	return dgst
}

// pushImage uploads a config and one layer and returns a manifest referencing them.
func (r *testRegistry) pushImage(t *testing.T, repo, layerContent string) []byte {
	t.Helper()
	config := []byte(`{"architecture":"amd64","os":"linux"}`)
	configDigest := r.pushBlob(t, repo, config)
	layerDigest := r.pushBlob(t, repo, []byte(layerContent))
	return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%d}]}`,
		configDigest, len(config), layerDigest, len(layerContent)))
}

// requestCount reads img_registry_requests_total for one route, method and status.
func (r *testRegistry) requestCount(t *testing.T, route, method, status string) float64 {
	t.Helper()
	families, err := r.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"route": route, "method": method, "status": status}
	for _, family := range families {
		if family.GetName() != "img_registry_requests_total" {
			continue
		}
		for _, metric := range family.GetMetric() {
			matched := 0
			for _, label := range metric.GetLabel() {
				if want[label.GetName()] == label.GetValue() {
					matched++
				}
			}
			if matched == len(want) {
				return metric.GetCounter().GetValue()
			}
		}
	}
	return 0
}
