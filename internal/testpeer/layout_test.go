package testpeer

import (
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestWriteLayoutBlobsMatchDigests(t *testing.T) {
	cases := []struct {
		name string
		spec LayoutSpec
	}{
		{"uncompressed", LayoutSpec{Layers: []int64{1000, 70000}}},
		{"gzip", LayoutSpec{Layers: []int64{1000, 70000}, Gzip: true}},
		{"raw", LayoutSpec{Layers: []int64{0, 12345}, RawLayers: true}},
		{"empty layer only", LayoutSpec{EmptyLayer: true}},
		{"no layers", LayoutSpec{}},
		{"docker multi-platform nested", LayoutSpec{Layers: []int64{10}, Gzip: true, Docker: true, MultiPlatform: true, Nested: true, EmptyLayer: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			info := WriteLayout(t, t.TempDir(), tc.spec)

			for _, blob := range info.Blobs {
				verifyBlob(t, info, blob)
			}
			if len(info.Blobs) == 0 || info.Blobs[len(info.Blobs)-1].Digest != info.RootDigest() {
				t.Errorf("last blob is not the root %s; Blobs must list children before parents", info.RootDigest())
			}
		})
	}
}

func verifyBlob(t *testing.T, info LayoutInfo, blob ocispec.Descriptor) {
	t.Helper()

	file, err := os.Open(info.BlobPath(blob.Digest))
	if err != nil {
		t.Fatalf("open blob %s: %v", blob.Digest, err)
	}
	defer file.Close()

	digester := digest.Canonical.Digester()
	size, err := io.Copy(digester.Hash(), file)
	if err != nil {
		t.Fatalf("read blob %s: %v", blob.Digest, err)
	}
	if got := digester.Digest(); got != blob.Digest {
		t.Errorf("blob file %s has digest %s", blob.Digest, got)
	}
	if size != blob.Size {
		t.Errorf("blob %s has %d bytes, descriptor says %d", blob.Digest, size, blob.Size)
	}
}

func TestWriteLayoutRawLayerSizesExact(t *testing.T) {
	info := WriteLayout(t, t.TempDir(), LayoutSpec{Layers: []int64{0, 1, 4097}, RawLayers: true})

	want := []int64{0, 1, 4097}
	if len(info.Layers) != len(want) {
		t.Fatalf("got %d layers, want %d", len(info.Layers), len(want))
	}
	for i, layer := range info.Layers {
		if layer.Size != want[i] {
			t.Errorf("layer %d size = %d, want %d", i, layer.Size, want[i])
		}
	}
}

func TestWriteLayoutGzipDiffIDs(t *testing.T) {
	dir := t.TempDir()
	info := WriteLayout(t, dir, LayoutSpec{Layers: []int64{5000, 100}, Gzip: true})

	var config ocispec.Image
	readJSON(t, info.BlobPath(info.Configs[0].Digest), &config)
	if len(config.RootFS.DiffIDs) != 2 {
		t.Fatalf("config has %d diff_ids, want 2", len(config.RootFS.DiffIDs))
	}
	for i, layer := range info.Layers {
		if layer.MediaType != ocispec.MediaTypeImageLayerGzip {
			t.Errorf("layer %d media type = %s, want %s", i, layer.MediaType, ocispec.MediaTypeImageLayerGzip)
		}
		if got := gunzipDigest(t, info.BlobPath(layer.Digest)); got != config.RootFS.DiffIDs[i] {
			t.Errorf("layer %d uncompressed digest = %s, config diff_id = %s", i, got, config.RootFS.DiffIDs[i])
		}
	}
}

func gunzipDigest(t *testing.T, path string) digest.Digest {
	t.Helper()

	file, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	reader, err := gzip.NewReader(file)
	if err != nil {
		t.Fatalf("gunzip %s: %v", path, err)
	}
	digester := digest.Canonical.Digester()
	if _, err := io.Copy(digester.Hash(), reader); err != nil {
		t.Fatalf("gunzip %s: %v", path, err)
	}
	return digester.Digest()
}

func TestWriteLayoutTagsAndNesting(t *testing.T) {
	dir := t.TempDir()
	info := WriteLayout(t, dir, LayoutSpec{Layers: []int64{10}, MultiPlatform: true, Nested: true, Tags: []string{"v1", "latest"}})

	var index ocispec.Index
	readJSON(t, filepath.Join(dir, "index.json"), &index)
	if len(index.Manifests) != 2 {
		t.Fatalf("index.json has %d entries, want one per tag", len(index.Manifests))
	}
	for i, tag := range []string{"v1", "latest"} {
		entry := index.Manifests[i]
		if entry.Annotations[ocispec.AnnotationRefName] != tag {
			t.Errorf("index.json entry %d ref.name = %q, want %q", i, entry.Annotations[ocispec.AnnotationRefName], tag)
		}
		if entry.Digest != info.RootDigest() {
			t.Errorf("index.json entry %d digest = %s, want root %s", i, entry.Digest, info.RootDigest())
		}
	}

	if len(info.Indexes) != 2 {
		t.Errorf("got %d indexes, want 2 (platform index and its wrapper)", len(info.Indexes))
	}
	if len(info.Manifests) != 2 {
		t.Errorf("got %d image manifests, want one per platform", len(info.Manifests))
	}

	var outer ocispec.Index
	readJSON(t, info.BlobPath(info.RootDigest()), &outer)
	if len(outer.Manifests) != 1 || outer.Manifests[0].MediaType != ocispec.MediaTypeImageIndex {
		t.Errorf("root index entries = %+v, want one image index", outer.Manifests)
	}

	var layoutHeader ocispec.ImageLayout
	readJSON(t, filepath.Join(dir, "oci-layout"), &layoutHeader)
	if layoutHeader.Version != ocispec.ImageLayoutVersion {
		t.Errorf("oci-layout version = %q, want %q", layoutHeader.Version, ocispec.ImageLayoutVersion)
	}
}

func TestWriteLayoutSeedRepeatable(t *testing.T) {
	spec := LayoutSpec{Layers: []int64{300}, Gzip: true, Seed: 42}

	first := WriteLayout(t, t.TempDir(), spec)
	second := WriteLayout(t, t.TempDir(), spec)

	if first.RootDigest() != second.RootDigest() {
		t.Errorf("same seed gave roots %s and %s", first.RootDigest(), second.RootDigest())
	}
}

func readJSON(t *testing.T, path string, value any) {
	t.Helper()

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, value); err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
}
