package testpeer

import (
	"archive/tar"
	"compress/gzip"
	"crypto/rand"
	"encoding/json"
	"io"
	mathrand "math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Docker image manifest v2 schema 2 media types. They are not in image-spec.
const (
	mediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerConfig       = "application/vnd.docker.container.image.v1+json"
	mediaTypeDockerLayer        = "application/vnd.docker.image.rootfs.diff.tar"
	mediaTypeDockerLayerGzip    = "application/vnd.docker.image.rootfs.diff.tar.gzip"
)

// LayoutSpec describes a random OCI image layout for WriteLayout.
type LayoutSpec struct {
	// Layers are the sizes in bytes of the random file inside each layer's tar archive, so a
	// layer blob is about 2 KiB larger than its entry (tar headers and padding), plus gzip
	// framing with Gzip. With RawLayers the sizes are exact blob sizes.
	Layers []int64
	// Gzip compresses layers with gzip (stored blocks, since random bytes do not compress)
	// and gives them the tar+gzip media type.
	Gzip bool
	// RawLayers makes each layer blob exactly Layers[i] random bytes instead of a tar archive.
	// Registries accept such layers, but nothing can unpack them, and the config's diff_ids
	// are the blobs' own digests. With Gzip too, the layers keep the gzip media type although
	// their bytes are not gzip.
	RawLayers bool
	// EmptyLayer appends a 0-byte layer blob (digest sha256:e3b0c442…). It always has the
	// uncompressed layer media type, even with Gzip, because 0 bytes is not valid gzip.
	EmptyLayer bool
	// Docker uses Docker v2 schema 2 media types instead of OCI ones.
	Docker bool
	// MultiPlatform makes the root an index of two images, linux/amd64 and linux/arm64, each
	// with its own random layers of the sizes in Layers.
	MultiPlatform bool
	// Nested wraps the root in one more index: index.json points to an index whose only
	// entry is the index (MultiPlatform) or image manifest that would otherwise be the root.
	Nested bool
	// Tags become org.opencontainers.image.ref.name annotations, one index.json entry each.
	// Without tags index.json lists the root once, without a name.
	Tags []string
	// Seed makes the random bytes repeatable; 0 picks a random seed.
	Seed uint64
}

// LayoutInfo describes what WriteLayout wrote.
type LayoutInfo struct {
	// Dir is the layout folder.
	Dir string
	// Root is the descriptor listed in index.json, without tag annotations.
	Root ocispec.Descriptor
	// Indexes, Manifests, Configs and Layers are the descriptors of each kind, in the order
	// written. A blob that appears twice is listed twice.
	Indexes, Manifests, Configs, Layers []ocispec.Descriptor
	// Blobs lists every distinct blob in blobs/sha256, children before the parents that
	// reference them, so pushing in this order satisfies registries that check references.
	Blobs []ocispec.Descriptor
}

// RootDigest returns the digest of the root descriptor.
func (l LayoutInfo) RootDigest() digest.Digest {
	return l.Root.Digest
}

// BlobPath returns the file that holds a blob of the layout.
func (l LayoutInfo) BlobPath(d digest.Digest) string {
	return filepath.Join(l.Dir, "blobs", d.Algorithm().String(), d.Encoded())
}

// WriteLayout writes a random OCI image layout (oci-layout, index.json, blobs/sha256/…) to
// dir, creating it if needed. Layer bytes are streamed to disk, so large sizes cost no memory.
func WriteLayout(t testing.TB, dir string, spec LayoutSpec) LayoutInfo {
	t.Helper()

	w, err := newLayoutWriter(dir, spec)
	if err != nil {
		t.Fatalf("testpeer: write layout %s: %v", dir, err)
	}
	info, err := w.write()
	if err != nil {
		t.Fatalf("testpeer: write layout %s: %v", dir, err)
	}
	return info
}

// layoutWriter writes one layout; its methods are the steps from layers up to index.json.
type layoutWriter struct {
	dir     string
	spec    LayoutSpec
	random  *mathrand.ChaCha8
	info    LayoutInfo
	written map[digest.Digest]bool
}

func newLayoutWriter(dir string, spec LayoutSpec) (*layoutWriter, error) {
	var seed [32]byte
	if spec.Seed == 0 {
		rand.Read(seed[:])
	} else {
		for i := range 8 {
			seed[i] = byte(spec.Seed >> (8 * i))
		}
	}

	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return nil, err
	}
	return &layoutWriter{
		dir:     dir,
		spec:    spec,
		random:  mathrand.NewChaCha8(seed),
		info:    LayoutInfo{Dir: dir},
		written: map[digest.Digest]bool{},
	}, nil
}

func (w *layoutWriter) write() (LayoutInfo, error) {
	root, err := w.writeRoot()
	if err != nil {
		return LayoutInfo{}, err
	}
	w.info.Root = root

	if err := w.writeIndexJSON(root); err != nil {
		return LayoutInfo{}, err
	}
	layoutHeader := []byte(`{"imageLayoutVersion":"` + ocispec.ImageLayoutVersion + `"}`)
	if err := os.WriteFile(filepath.Join(w.dir, ocispec.ImageLayoutFile), layoutHeader, 0o644); err != nil {
		return LayoutInfo{}, err
	}
	return w.info, nil
}

// writeRoot writes the images and indexes and returns the descriptor index.json points to.
func (w *layoutWriter) writeRoot() (ocispec.Descriptor, error) {
	var root ocispec.Descriptor
	var err error
	if w.spec.MultiPlatform {
		root, err = w.writeMultiPlatformIndex()
	} else {
		root, err = w.writeImage(nil)
	}
	if err != nil {
		return ocispec.Descriptor{}, err
	}

	if w.spec.Nested {
		return w.writeIndex([]ocispec.Descriptor{root})
	}
	return root, nil
}

func (w *layoutWriter) writeMultiPlatformIndex() (ocispec.Descriptor, error) {
	platforms := []*ocispec.Platform{
		{OS: "linux", Architecture: "amd64"},
		{OS: "linux", Architecture: "arm64", Variant: "v8"},
	}

	var manifests []ocispec.Descriptor
	for _, platform := range platforms {
		manifest, err := w.writeImage(platform)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		manifest.Platform = platform
		manifests = append(manifests, manifest)
	}
	return w.writeIndex(manifests)
}

// writeImage writes the layers, config and manifest of one image and returns the manifest's
// descriptor. A nil platform means linux/amd64.
func (w *layoutWriter) writeImage(platform *ocispec.Platform) (ocispec.Descriptor, error) {
	if platform == nil {
		platform = &ocispec.Platform{OS: "linux", Architecture: "amd64"}
	}

	var layers []ocispec.Descriptor
	var diffIDs []digest.Digest
	for _, size := range w.spec.Layers {
		layer, diffID, err := w.writeLayer(size)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		layers = append(layers, layer)
		diffIDs = append(diffIDs, diffID)
	}
	if w.spec.EmptyLayer {
		layer, err := w.writeBlob(w.mediaType(ocispec.MediaTypeImageLayer, mediaTypeDockerLayer), nil)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		layers = append(layers, layer)
		diffIDs = append(diffIDs, layer.Digest)
	}
	w.info.Layers = append(w.info.Layers, layers...)

	config, err := w.writeConfig(platform, diffIDs)
	if err != nil {
		return ocispec.Descriptor{}, err
	}

	manifest := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: w.mediaType(ocispec.MediaTypeImageManifest, mediaTypeDockerManifest),
		Config:    config,
		Layers:    layers,
	}
	if manifest.Layers == nil {
		manifest.Layers = []ocispec.Descriptor{}
	}
	desc, err := w.writeJSON(manifest.MediaType, manifest)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	w.info.Manifests = append(w.info.Manifests, desc)
	return desc, nil
}

func (w *layoutWriter) writeConfig(platform *ocispec.Platform, diffIDs []digest.Digest) (ocispec.Descriptor, error) {
	if diffIDs == nil {
		diffIDs = []digest.Digest{}
	}
	config := ocispec.Image{
		Platform: *platform,
		Config:   ocispec.ImageConfig{Cmd: []string{"/bin/true"}},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
	}

	desc, err := w.writeJSON(w.mediaType(ocispec.MediaTypeImageConfig, mediaTypeDockerConfig), config)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	w.info.Configs = append(w.info.Configs, desc)
	return desc, nil
}

func (w *layoutWriter) writeIndex(manifests []ocispec.Descriptor) (ocispec.Descriptor, error) {
	index := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: w.mediaType(ocispec.MediaTypeImageIndex, mediaTypeDockerManifestList),
		Manifests: manifests,
	}

	desc, err := w.writeJSON(index.MediaType, index)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	w.info.Indexes = append(w.info.Indexes, desc)
	return desc, nil
}

// writeIndexJSON writes the layout's index.json, which is always an OCI index.
func (w *layoutWriter) writeIndexJSON(root ocispec.Descriptor) error {
	entries := []ocispec.Descriptor{root}
	if len(w.spec.Tags) > 0 {
		entries = nil
		for _, tag := range w.spec.Tags {
			entry := root
			entry.Annotations = map[string]string{ocispec.AnnotationRefName: tag}
			entries = append(entries, entry)
		}
	}

	index := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: entries,
	}
	data, err := json.MarshalIndent(index, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(w.dir, ocispec.ImageIndexFile), data, 0o644)
}

func (w *layoutWriter) mediaType(oci, docker string) string {
	if w.spec.Docker {
		return docker
	}
	return oci
}

func (w *layoutWriter) writeJSON(mediaType string, value any) (ocispec.Descriptor, error) {
	data, err := json.Marshal(value)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return w.writeBlob(mediaType, data)
}

func (w *layoutWriter) writeBlob(mediaType string, data []byte) (ocispec.Descriptor, error) {
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}

	if !w.written[desc.Digest] {
		if err := os.WriteFile(w.info.BlobPath(desc.Digest), data, 0o644); err != nil {
			return ocispec.Descriptor{}, err
		}
		w.written[desc.Digest] = true
		w.info.Blobs = append(w.info.Blobs, desc)
	}
	return desc, nil
}

// writeLayer streams one random layer to a temporary file, hashing it on the way, and renames
// it to its digest. It returns the layer descriptor and the diff_id (uncompressed digest).
func (w *layoutWriter) writeLayer(size int64) (ocispec.Descriptor, digest.Digest, error) {
	file, err := os.CreateTemp(filepath.Join(w.dir, "blobs", "sha256"), ".layer-*")
	if err != nil {
		return ocispec.Descriptor{}, "", err
	}
	defer os.Remove(file.Name())
	defer file.Close()

	blobDigester := digest.Canonical.Digester()
	blob := &countingWriter{w: io.MultiWriter(file, blobDigester.Hash())}

	diffIDDigester := blobDigester
	var uncompressed io.Writer = blob
	var gzipWriter *gzip.Writer
	if w.spec.Gzip && !w.spec.RawLayers {
		gzipWriter, err = gzip.NewWriterLevel(blob, gzip.NoCompression)
		if err != nil {
			return ocispec.Descriptor{}, "", err
		}
		diffIDDigester = digest.Canonical.Digester()
		uncompressed = io.MultiWriter(gzipWriter, diffIDDigester.Hash())
	}

	if err := w.writeLayerContent(uncompressed, size); err != nil {
		return ocispec.Descriptor{}, "", err
	}
	if gzipWriter != nil {
		if err := gzipWriter.Close(); err != nil {
			return ocispec.Descriptor{}, "", err
		}
	}
	if err := file.Close(); err != nil {
		return ocispec.Descriptor{}, "", err
	}

	desc := ocispec.Descriptor{
		MediaType: w.layerMediaType(),
		Digest:    blobDigester.Digest(),
		Size:      blob.n,
	}
	if err := os.Rename(file.Name(), w.info.BlobPath(desc.Digest)); err != nil {
		return ocispec.Descriptor{}, "", err
	}
	w.written[desc.Digest] = true
	w.info.Blobs = append(w.info.Blobs, desc)
	return desc, diffIDDigester.Digest(), nil
}

// writeLayerContent writes size random bytes, inside a one-file tar archive unless RawLayers.
func (w *layoutWriter) writeLayerContent(out io.Writer, size int64) error {
	if w.spec.RawLayers {
		_, err := io.CopyN(out, w.random, size)
		return err
	}

	archive := tar.NewWriter(out)
	header := &tar.Header{
		Name:     "random.bin",
		Mode:     0o644,
		Size:     size,
		Typeflag: tar.TypeReg,
		Format:   tar.FormatPAX,
	}
	if err := archive.WriteHeader(header); err != nil {
		return err
	}
	if _, err := io.CopyN(archive, w.random, size); err != nil {
		return err
	}
	return archive.Close()
}

func (w *layoutWriter) layerMediaType() string {
	if w.spec.Gzip {
		return w.mediaType(ocispec.MediaTypeImageLayerGzip, mediaTypeDockerLayerGzip)
	}
	return w.mediaType(ocispec.MediaTypeImageLayer, mediaTypeDockerLayer)
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
