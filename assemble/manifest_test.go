package assemble

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rulesimg/img/image"
	"github.com/rulesimg/img/internal/testpeer"
)

func testLayer(t *testing.T, dir, name string) LayerMetadata {
	t.Helper()

	src := writeTestFile(t, filepath.Join(dir, name+".txt"), name, 0o644)
	meta, err := WriteLayerFile(filepath.Join(dir, name+".tar.gz"), LayerOptions{
		Files: []File{{Source: src, Path: "/" + name, Mode: -1, UID: -1, GID: -1}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return meta
}

func decodeConfig(t *testing.T, body []byte) ocispec.Image {
	t.Helper()

	var config ocispec.Image
	if err := json.Unmarshal(body, &config); err != nil {
		t.Fatal(err)
	}
	return config
}

func TestBuildManifestScratch(t *testing.T) {
	dir := t.TempDir()
	layer := testLayer(t, dir, "one")

	built, err := BuildManifest(ManifestOptions{
		Layers: []LayerMetadata{layer},
		Config: ConfigOptions{
			Entrypoint:   []string{"/one"},
			Env:          []string{"A=1"},
			ExposedPorts: []string{"80", "53/udp"},
			Labels:       map[string]string{"k": "v"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}

	var manifest ocispec.Manifest
	if err := json.Unmarshal(built.Manifest, &manifest); err != nil {
		t.Fatal(err)
	}
	if manifest.MediaType != ocispec.MediaTypeImageManifest || manifest.SchemaVersion != 2 {
		t.Errorf("manifest has media type %q and schema version %d", manifest.MediaType, manifest.SchemaVersion)
	}
	if manifest.Config.Digest != digest.FromBytes(built.Config) {
		t.Errorf("manifest config digest %s does not match the config blob", manifest.Config.Digest)
	}
	if len(manifest.Layers) != 1 || manifest.Layers[0].Digest != layer.Descriptor.Digest {
		t.Errorf("manifest layers are %v, expected the one layer %s", manifest.Layers, layer.Descriptor.Digest)
	}
	if built.Descriptor.Digest != digest.FromBytes(built.Manifest) {
		t.Errorf("descriptor digest %s does not match the manifest blob", built.Descriptor.Digest)
	}
	if p := built.Descriptor.Platform; p == nil || p.OS != "linux" || p.Architecture != "amd64" {
		t.Errorf("descriptor platform is %+v, expected linux/amd64", p)
	}

	config := decodeConfig(t, built.Config)
	if len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != layer.DiffID {
		t.Errorf("diff IDs are %v, expected [%s]", config.RootFS.DiffIDs, layer.DiffID)
	}
	if len(config.History) != 1 {
		t.Errorf("history has %d entries, expected one per layer", len(config.History))
	}
	for _, port := range []string{"80/tcp", "53/udp"} {
		if _, ok := config.Config.ExposedPorts[port]; !ok {
			t.Errorf("exposed ports %v lack %s", config.Config.ExposedPorts, port)
		}
	}
}

func TestBuildManifestDeterministic(t *testing.T) {
	dir := t.TempDir()
	layer := testLayer(t, dir, "one")
	opts := ManifestOptions{
		Layers: []LayerMetadata{layer},
		Config: ConfigOptions{Labels: map[string]string{"b": "2", "a": "1", "c": "3"}},
	}

	first, err := BuildManifest(opts)
	if err != nil {
		t.Fatal(err)
	}
	second, err := BuildManifest(opts)
	if err != nil {
		t.Fatal(err)
	}
	if first.Descriptor.Digest != second.Descriptor.Digest {
		t.Errorf("two builds give manifests %s and %s", first.Descriptor.Digest, second.Descriptor.Digest)
	}
}

func TestBuildManifestOnLayoutBase(t *testing.T) {
	dir := t.TempDir()
	layout := testpeer.WriteLayout(t, filepath.Join(dir, "base"), testpeer.LayoutSpec{
		Layers: []int64{100}, Gzip: true, MultiPlatform: true, Seed: 3,
	})
	layer := testLayer(t, dir, "top")

	base, err := LoadBaseLayout(layout.Dir, "linux", "arm64", "v8")
	if err != nil {
		t.Fatal(err)
	}
	if p := base.Manifest.Descriptor.Platform; p == nil || p.Architecture != "arm64" {
		t.Fatalf("picked base manifest %s with platform %+v, expected arm64", base.Manifest.Descriptor.Digest, p)
	}
	base.Config.Config.Env = []string{"PATH=/bin", "KEEP=1"}

	opts := ManifestOptions{
		Base:   base,
		Layers: []LayerMetadata{layer},
		Config: ConfigOptions{Env: []string{"PATH=/usr/bin:/bin", "NEW=2"}},
	}
	built, err := BuildManifest(opts)
	if err != nil {
		t.Fatal(err)
	}
	config := decodeConfig(t, built.Config)
	if got := len(config.RootFS.DiffIDs); got != 2 {
		t.Errorf("config lists %d diff IDs, expected base 1 + 1", got)
	}
	if got := strings.Join(config.Config.Env, " "); got != "PATH=/usr/bin:/bin KEEP=1 NEW=2" {
		t.Errorf("env is %q, expected PATH replaced in place and NEW appended", got)
	}
	if config.Architecture != "arm64" || config.Variant != "v8" {
		t.Errorf("platform is %s/%s, expected the base's arm64/v8", config.Architecture, config.Variant)
	}

	graph := built.Graph("m.json", "c.json", opts)
	for _, l := range built.Layers {
		if _, ok := graph.Files[l.Digest]; !ok {
			t.Errorf("graph has no file for layer %s", l.Digest)
		}
	}
}

func TestLoadBaseLayoutMissingPlatform(t *testing.T) {
	layout := testpeer.WriteLayout(t, filepath.Join(t.TempDir(), "base"), testpeer.LayoutSpec{
		Layers: []int64{10}, MultiPlatform: true, Seed: 4,
	})

	_, err := LoadBaseLayout(layout.Dir, "linux", "s390x", "")
	if err == nil || !strings.Contains(err.Error(), "linux/amd64") {
		t.Errorf("error is %v, expected one listing the available platforms", err)
	}
}

func TestGraphRoundTripAndIndex(t *testing.T) {
	dir := t.TempDir()
	layer := testLayer(t, dir, "one")
	var children []*image.Request
	for _, arch := range []string{"amd64", "arm64"} {
		opts := ManifestOptions{Layers: []LayerMetadata{layer}, Config: ConfigOptions{Architecture: arch}}
		built, err := BuildManifest(opts)
		if err != nil {
			t.Fatal(err)
		}
		manifestPath := filepath.Join(dir, arch+".manifest.json")
		configPath := filepath.Join(dir, arch+".config.json")
		os.WriteFile(manifestPath, built.Manifest, 0o644)
		os.WriteFile(configPath, built.Config, 0o644)
		graphPath := filepath.Join(dir, arch+".image.json")
		if err := WriteGraph(graphPath, built.Graph(manifestPath, configPath, opts)); err != nil {
			t.Fatal(err)
		}
		graph, err := ReadGraph(graphPath)
		if err != nil {
			t.Fatal(err)
		}
		children = append(children, graph)
	}

	body, graph, err := BuildIndex(children, nil, "index.json")
	if err != nil {
		t.Fatal(err)
	}
	var index ocispec.Index
	if err := json.Unmarshal(body, &index); err != nil {
		t.Fatal(err)
	}
	if len(index.Manifests) != 2 || index.Manifests[1].Platform.Architecture != "arm64" {
		t.Errorf("index lists %+v, expected amd64 then arm64", index.Manifests)
	}
	if graph.Image.Root.Digest != digest.FromBytes(body) {
		t.Errorf("graph root %s does not match the index bytes", graph.Image.Root.Digest)
	}
	if _, err := graph.Image.PushOrder(); err != nil {
		t.Errorf("index graph is incomplete: %v", err)
	}

	_, _, err = BuildIndex([]*image.Request{children[0], children[0]}, nil, "index.json")
	if err == nil {
		t.Error("an index listing one manifest twice built without an error")
	}
}
