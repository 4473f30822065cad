package rules

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rulesimg/img/image"
)

// TestBuildIndexAndImages builds with the img binary that the repository rule compiles
// from this repository's source, so it also proves that path.
func TestBuildIndexAndImages(t *testing.T) {
	ws := newWorkspace(t, false)
	ws.bazel(t, "build", "//:index", "//:scratch", "//:derived", "//:zstd_layer")

	t.Run("index", func(t *testing.T) {
		graph := ws.graph(t, "index.image.json")
		index := validateGraph(t, graph)
		if got := len(index.Manifests); got != 2 {
			t.Fatalf("index lists %d manifests, expected 2", got)
		}
		wantPlatforms := []string{"linux/amd64", "linux/arm64/v8"}
		for i, want := range wantPlatforms {
			p := index.Manifests[i].Platform
			got := p.OS + "/" + p.Architecture
			if p.Variant != "" {
				got += "/" + p.Variant
			}
			if got != want {
				t.Errorf("index manifest %d has platform %s, expected %s", i, got, want)
			}
		}
	})

	t.Run("app layer entries", func(t *testing.T) {
		headers := layerHeaders(t, filepath.Join(ws.info(t, "bazel-bin"), "app_layer.tar.gz"))
		type entry struct {
			typeflag byte
			mode     int64
			uid, gid int
			linkname string
		}
		want := map[string]entry{
			"app/":              {tar.TypeDir, 0o755, 0, 0, ""},
			"app/hello.txt":     {tar.TypeReg, 0o644, 1000, 1000, ""},
			"app/run.sh":        {tar.TypeReg, 0o755, 0, 0, ""},
			"usr/bin/hello":     {tar.TypeSymlink, 0o777, 0, 0, "/app/run.sh"},
			"data/greeting.txt": {tar.TypeReg, 0o644, 0, 0, ""},
		}
		for name, w := range want {
			h, ok := headers[name]
			if !ok {
				t.Errorf("layer has no entry %s", name)
				continue
			}
			got := entry{h.Typeflag, h.Mode, h.Uid, h.Gid, h.Linkname}
			if got != w {
				t.Errorf("entry %s is %+v, expected %+v", name, got, w)
			}
			if !h.ModTime.Equal(time.Unix(0, 0)) {
				t.Errorf("entry %s has mtime %v, expected the Unix epoch", name, h.ModTime)
			}
		}
	})

	t.Run("amd64 config", func(t *testing.T) {
		graph := ws.graph(t, "image_amd64.image.json")
		validateGraph(t, graph)
		config := readConfig(t, graph)
		if config.Architecture != "amd64" {
			t.Errorf("architecture is %q, expected amd64", config.Architecture)
		}
		if got := len(config.RootFS.DiffIDs); got != 2 {
			t.Errorf("config lists %d diff IDs, expected 2 (base layer and app layer)", got)
		}
		if got := config.Config.Entrypoint; len(got) != 1 || got[0] != "/app/run.sh" {
			t.Errorf("entrypoint is %q, expected [/app/run.sh]", got)
		}
		if _, ok := config.Config.ExposedPorts["8080/tcp"]; !ok {
			t.Errorf("exposed ports are %v, expected 8080/tcp", config.Config.ExposedPorts)
		}
		if !contains(config.Config.Env, "APP_MODE=test") {
			t.Errorf("env is %q, expected APP_MODE=test in it", config.Config.Env)
		}
		if config.Created == nil || !config.Created.Equal(time.Unix(0, 0)) {
			t.Errorf("created is %v, expected the Unix epoch", config.Created)
		}
	})

	t.Run("scratch", func(t *testing.T) {
		graph := ws.graph(t, "scratch.image.json")
		validateGraph(t, graph)
		m := graph.Image.Manifests[graph.Image.Root.Digest]
		if got := len(m.Layers); got != 2 {
			t.Fatalf("scratch image has %d layers, expected 2", got)
		}
		if got := m.Layers[1].MediaType; got != ocispec.MediaTypeImageLayerZstd {
			t.Errorf("second layer has media type %s, expected %s", got, ocispec.MediaTypeImageLayerZstd)
		}
	})

	t.Run("derived from manifest", func(t *testing.T) {
		graph := ws.graph(t, "derived.image.json")
		validateGraph(t, graph)
		config := readConfig(t, graph)
		if got := len(config.RootFS.DiffIDs); got != 3 {
			t.Errorf("config lists %d diff IDs, expected 3", got)
		}
		if config.Config.User != "1000:1000" {
			t.Errorf("user is %q, expected 1000:1000", config.Config.User)
		}
		if got := config.Config.Entrypoint; len(got) != 1 || got[0] != "/app/run.sh" {
			t.Errorf("entrypoint is %q, expected the base's [/app/run.sh]", got)
		}
	})
}

// TestBuildLayerDeterministic builds the same layers in two output roots, with the
// sources' timestamps changed in between, and expects the same digests.
func TestBuildLayerDeterministic(t *testing.T) {
	first := newWorkspace(t, true)
	first.bazel(t, "build", "//:app_layer", "//:zstd_layer", "//:index")

	second := newWorkspace(t, true)
	later := time.Now().Add(time.Hour)
	for _, name := range []string{"app/hello.txt", "app/run.sh", "data/greeting.txt"} {
		if err := os.Chtimes(filepath.Join(second.dir, name), later, later); err != nil {
			t.Fatal(err)
		}
	}
	second.bazel(t, "build", "//:app_layer", "//:zstd_layer", "//:index")

	for _, layer := range []string{"app_layer", "zstd_layer"} {
		a, b := first.layerDigest(t, layer), second.layerDigest(t, layer)
		if a != b {
			t.Errorf("layer %s has digest %s in one build and %s in the other", layer, a, b)
		}
	}
	a := first.graph(t, "index.image.json").Image.Root.Digest
	b := second.graph(t, "index.image.json").Image.Root.Digest
	if a != b {
		t.Errorf("index has digest %s in one build and %s in the other", a, b)
	}
}

// validateGraph copies every blob of graph into a fresh OCI layout and checks it with
// go-containerregistry's validate package, which hashes each blob, decompresses each
// layer against its diff ID and checks the config against the manifest. It returns the
// root index, or an empty index for a single manifest.
func validateGraph(t *testing.T, graph *image.Request) ocispec.Index {
	t.Helper()

	dir := t.TempDir()
	for d, path := range graph.Files {
		body, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("blob %s: %v", d, err)
		}
		blobPath, err := image.LayoutBlobPath(dir, d)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(blobPath), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(blobPath, body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	root := graph.Image.Root
	root.Platform = nil
	writeJSON(t, filepath.Join(dir, "oci-layout"), ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	writeJSON(t, filepath.Join(dir, "index.json"), ocispec.Index{
		Versioned: specsVersioned(),
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{root},
	})

	layoutIndex, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("read layout of %s: %v", root.Digest, err)
	}
	// validate reads every layer as gzip (go-containerregistry v0.22.1), so images with
	// zstd layers get the fast checks here and their layers get checkLayers below.
	var opts []validate.Option
	if hasZstdLayer(graph) {
		opts = append(opts, validate.Fast)
	}
	if err := validate.Index(layoutIndex, opts...); err != nil {
		t.Fatalf("image %s is invalid: %v", root.Digest, err)
	}
	checkLayers(t, graph)

	var index ocispec.Index
	if image.IsIndex(root.MediaType) {
		body, err := os.ReadFile(graph.Files[root.Digest])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(body, &index); err != nil {
			t.Fatal(err)
		}
	}
	return index
}

func readConfig(t *testing.T, graph *image.Request) ocispec.Image {
	t.Helper()

	return readManifestConfig(t, graph, graph.Image.Manifests[graph.Image.Root.Digest])
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()

	body, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, body, 0o644); err != nil {
		t.Fatal(err)
	}
}

func contains(values []string, want string) bool {
	for _, v := range values {
		if v == want {
			return true
		}
	}
	return false
}

func specsVersioned() specs.Versioned {
	return specs.Versioned{SchemaVersion: 2}
}

func hasZstdLayer(graph *image.Request) bool {
	for _, m := range graph.Image.Manifests {
		for _, layer := range m.Layers {
			if layer.MediaType == ocispec.MediaTypeImageLayerZstd {
				return true
			}
		}
	}
	return false
}

// checkLayers hashes every layer blob, decompresses it by its media type and compares
// the uncompressed digest with the diff ID its config lists at the same position.
func checkLayers(t *testing.T, graph *image.Request) {
	t.Helper()

	for _, m := range graph.Image.Manifests {
		if m.IsIndex() {
			continue
		}
		config := readManifestConfig(t, graph, m)
		for i, layer := range m.Layers {
			f, err := os.Open(graph.Files[layer.Digest])
			if err != nil {
				t.Fatalf("layer %s: %v", layer.Digest, err)
			}
			blobHash := sha256.New()
			var uncompressed io.Reader = io.TeeReader(f, blobHash)
			switch layer.MediaType {
			case ocispec.MediaTypeImageLayerZstd:
				decoder, err := zstd.NewReader(uncompressed)
				if err != nil {
					t.Fatal(err)
				}
				defer decoder.Close()
				uncompressed = decoder
			case ocispec.MediaTypeImageLayerGzip:
				reader, err := gzip.NewReader(uncompressed)
				if err != nil {
					t.Fatalf("layer %s: %v", layer.Digest, err)
				}
				uncompressed = reader
			}
			diffHash := sha256.New()
			if _, err := io.Copy(diffHash, uncompressed); err != nil {
				t.Fatalf("layer %s: %v", layer.Digest, err)
			}
			io.Copy(io.Discard, f)
			f.Close()
			if got := digest.NewDigest(digest.SHA256, blobHash); got != layer.Digest {
				t.Errorf("layer %d has digest %s, its descriptor says %s", i, got, layer.Digest)
			}
			if got := digest.NewDigest(digest.SHA256, diffHash); got != config.RootFS.DiffIDs[i] {
				t.Errorf("layer %d (%s) has diff ID %s, the config lists %s", i, layer.Digest, got, config.RootFS.DiffIDs[i])
			}
		}
	}
}

func readManifestConfig(t *testing.T, graph *image.Request, m *image.Manifest) ocispec.Image {
	t.Helper()

	body, err := os.ReadFile(graph.Files[m.Config.Digest])
	if err != nil {
		t.Fatal(err)
	}
	var config ocispec.Image
	if err := json.Unmarshal(body, &config); err != nil {
		t.Fatal(err)
	}
	return config
}

// layerHeaders reads the tar headers of a gzip layer, keyed by name.
func layerHeaders(t *testing.T, path string) map[string]*tar.Header {
	t.Helper()

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	headers := map[string]*tar.Header{}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return headers
		}
		if err != nil {
			t.Fatalf("layer %s: %v", path, err)
		}
		headers[h.Name] = h
	}
}
