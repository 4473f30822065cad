package assemble

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rulesimg/img/image"
)

// testGraph returns a graph of one manifest with a generated config and layer, and a
// layer from a checked-in layout, as exec-root paths.
func testGraph() (*image.Request, map[string]digest.Digest) {
	digests := map[string]digest.Digest{
		"manifest":    digest.FromString("manifest"),
		"config":      digest.FromString("config"),
		"layer":       digest.FromString("layer"),
		"sourceLayer": digest.FromString("source layer"),
	}
	desc := func(mediaType, name string) ocispec.Descriptor {
		return ocispec.Descriptor{MediaType: mediaType, Digest: digests[name], Size: 1}
	}
	config := desc(ocispec.MediaTypeImageConfig, "config")
	manifest := desc(ocispec.MediaTypeImageManifest, "manifest")
	graph := &image.Request{
		Strategy: image.StrategyEager,
		Image: &image.Image{
			Root: manifest,
			Manifests: map[digest.Digest]*image.Manifest{manifest.Digest: {
				Descriptor: manifest,
				Config:     &config,
				Layers: []ocispec.Descriptor{
					desc(ocispec.MediaTypeImageLayerGzip, "sourceLayer"),
					desc(ocispec.MediaTypeImageLayerGzip, "layer"),
				},
			}},
		},
		Files: map[digest.Digest]string{
			digests["manifest"]:    "bazel-out/k8-fastbuild/bin/app/image.manifest.json",
			digests["config"]:      "bazel-out/k8-fastbuild/bin/app/image.config.json",
			digests["layer"]:       "bazel-out/k8-fastbuild/bin/app/layer.tar.gz",
			digests["sourceLayer"]: "external/base/blobs/sha256/abc",
		},
	}
	return graph, digests
}

func testRunfiles() map[string]string {
	return map[string]string{
		"bazel-out/k8-fastbuild/bin/app/push.request.json":   "app/push.request.json",
		"bazel-out/k8-fastbuild/bin/app/image.manifest.json": "app/image.manifest.json",
		"bazel-out/k8-fastbuild/bin/app/image.config.json":   "app/image.config.json",
		"bazel-out/k8-fastbuild/bin/app/layer.tar.gz":        "app/layer.tar.gz",
		"external/base/blobs/sha256/abc":                     "../base/blobs/sha256/abc",
	}
}

func testRequestOptions(strategy string) RequestOptions {
	graph, _ := testGraph()
	return RequestOptions{
		Graph:         graph,
		Strategy:      strategy,
		Registry:      "{{.REGISTRY}}",
		Repository:    "team/app",
		Tags:          []string{"{{.ENV}}", "latest"},
		Vars:          map[string]string{"REGISTRY": "localhost:5000", "ENV": "prod"},
		RunfilesPaths: testRunfiles(),
		RequestPath:   "bazel-out/k8-fastbuild/bin/app/push.request.json",
	}
}

func TestBuildRequestEager(t *testing.T) {
	_, digests := testGraph()

	req, err := BuildRequest(testRequestOptions(image.StrategyEager))
	if err != nil {
		t.Fatal(err)
	}

	want := map[string]string{
		"manifest":    "image.manifest.json",
		"config":      "image.config.json",
		"layer":       "layer.tar.gz",
		"sourceLayer": "../../base/blobs/sha256/abc",
	}
	for name, path := range want {
		if got := req.Files[digests[name]]; got != path {
			t.Errorf("file of %s is %q, expected %q", name, got, path)
		}
	}
	dest := req.Destinations[0]
	if dest.Registry != "localhost:5000" || strings.Join(dest.Tags, ",") != "prod,latest" {
		t.Errorf("destination is %+v, expected localhost:5000 with tags prod, latest", dest)
	}
}

func TestBuildRequestLazyLeavesOutLayers(t *testing.T) {
	_, digests := testGraph()

	for _, strategy := range []string{image.StrategyLazy, image.StrategyCASRegistry, image.StrategyBES} {
		req, err := BuildRequest(testRequestOptions(strategy))
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := req.Files[digests["layer"]]; ok {
			t.Errorf("%s request lists the generated layer", strategy)
		}
		for _, name := range []string{"manifest", "config", "sourceLayer"} {
			if _, ok := req.Files[digests[name]]; !ok {
				t.Errorf("%s request lacks the file of %s", strategy, name)
			}
		}
		if req.Strategy != strategy {
			t.Errorf("request strategy is %q, expected %q", req.Strategy, strategy)
		}
	}
}

func TestBuildRequestEncodesAndDecodes(t *testing.T) {
	req, err := BuildRequest(testRequestOptions(image.StrategyLazy))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := req.Encode(&buf, ""); err != nil {
		t.Fatal(err)
	}
	decoded, err := image.DecodeRequest(&buf, "/runfiles/main/app")
	if err != nil {
		t.Fatalf("decode the written request: %v\n%s", err, buf.String())
	}
	_, digests := testGraph()
	if got := decoded.Files[digests["manifest"]]; got != "/runfiles/main/app/image.manifest.json" {
		t.Errorf("manifest file resolves to %q, expected /runfiles/main/app/image.manifest.json", got)
	}
	if got := decoded.Files[digests["sourceLayer"]]; got != "/runfiles/base/blobs/sha256/abc" {
		t.Errorf("source layer resolves to %q, expected /runfiles/base/blobs/sha256/abc", got)
	}
}

func TestBuildRequestTemplateErrors(t *testing.T) {
	tests := []struct {
		name   string
		change func(*RequestOptions)
		want   string
	}{
		{"missing key", func(o *RequestOptions) { o.Tags = []string{"{{.VERSION}}"} }, `no entry for key "VERSION"`},
		{"syntax error", func(o *RequestOptions) { o.Repository = "{{.ENV" }, "repository template"},
		{"invalid tag", func(o *RequestOptions) { o.Tags = []string{"has space"} }, `tag "has space"`},
		{"empty registry", func(o *RequestOptions) { o.Registry = "" }, "registry is empty"},
		{"invalid repository", func(o *RequestOptions) { o.Repository = "Team/App" }, `repository "Team/App"`},
		{"unknown strategy", func(o *RequestOptions) { o.Strategy = "fast" }, `"fast"`},
		{"missing runfile", func(o *RequestOptions) { delete(o.RunfilesPaths, "bazel-out/k8-fastbuild/bin/app/layer.tar.gz") }, "has no runfiles path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := testRequestOptions(image.StrategyEager)
			tt.change(&opts)

			_, err := BuildRequest(opts)

			if err == nil {
				t.Fatalf("no error, expected one containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error is %q, expected it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "<no value>") {
				t.Errorf("error mentions <no value>: %q", err)
			}
		})
	}
}

func TestReadStatusFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stable-status.txt")
	body := "BUILD_USER alice\nSTABLE_GIT_COMMIT abc123\nSTABLE_DESCRIPTION a value with spaces\nEMPTY\n\n"
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}

	vars := map[string]string{}
	if err := ReadStatusFile(path, vars); err != nil {
		t.Fatal(err)
	}

	want := map[string]string{
		"BUILD_USER":         "alice",
		"STABLE_GIT_COMMIT":  "abc123",
		"STABLE_DESCRIPTION": "a value with spaces",
		"EMPTY":              "",
	}
	for key, value := range want {
		got, ok := vars[key]
		if !ok || got != value {
			t.Errorf("%s is %q (present %v), expected %q", key, got, ok, value)
		}
	}
	if len(vars) != len(want) {
		t.Errorf("read %d keys, expected %d: %v", len(vars), len(want), vars)
	}
}
