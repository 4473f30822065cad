package image

import (
	"encoding/json"
	"fmt"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Image is everything a push needs to know about an image before reading any layer:
// the root descriptor (a manifest or an index) and every manifest and index reachable
// from it, keyed by digest.
type Image struct {
	Root      ocispec.Descriptor
	Manifests map[digest.Digest]*Manifest
}

// Manifest is one node of the graph: an image manifest with its config and layers, or
// an index with its child manifests.
type Manifest struct {
	Descriptor ocispec.Descriptor
	Config     *ocispec.Descriptor  // nil for an index
	Layers     []ocispec.Descriptor // empty for an index
	Children   []ocispec.Descriptor // empty for an image manifest
}

// IsIndex reports whether m lists child manifests rather than layers.
func (m *Manifest) IsIndex() bool {
	return IsIndex(m.Descriptor.MediaType)
}

// PushOrder returns the manifests in the order a registry accepts them: every child
// before the index that names it, the root last. A manifest reachable twice appears once.
func (img *Image) PushOrder() ([]*Manifest, error) {
	var order []*Manifest
	seen := map[digest.Digest]bool{}
	var visit func(d ocispec.Descriptor, depth int) error
	visit = func(d ocispec.Descriptor, depth int) error {
		if seen[d.Digest] {
			return nil
		}
		// A layout or request can name itself through a child descriptor; a registry
		// would reject such an index, so fail early with the digest.
		if depth > 16 {
			return fmt.Errorf("index %s nests more than 16 levels deep; is there a cycle?", d.Digest)
		}
		m, ok := img.Manifests[d.Digest]
		if !ok {
			return fmt.Errorf("manifest %s is referenced but not described", d.Digest)
		}
		for _, child := range m.Children {
			if err := visit(child, depth+1); err != nil {
				return err
			}
		}
		seen[d.Digest] = true
		order = append(order, m)
		return nil
	}
	if err := visit(img.Root, 0); err != nil {
		return nil, err
	}
	return order, nil
}

// Blobs returns every config and layer descriptor of the image once, in push order.
func (img *Image) Blobs() ([]ocispec.Descriptor, error) {
	order, err := img.PushOrder()
	if err != nil {
		return nil, err
	}
	var blobs []ocispec.Descriptor
	seen := map[digest.Digest]bool{}
	for _, m := range order {
		for _, d := range m.blobs() {
			if !seen[d.Digest] {
				seen[d.Digest] = true
				blobs = append(blobs, d)
			}
		}
	}
	return blobs, nil
}

func (m *Manifest) blobs() []ocispec.Descriptor {
	if m.Config == nil {
		return m.Layers
	}
	return append([]ocispec.Descriptor{*m.Config}, m.Layers...)
}

// ParseManifest reads the config, layers or children out of a manifest's bytes. The
// descriptor's media type decides how they are read, because Docker manifests and some
// OCI manifests omit the mediaType field in their body.
func ParseManifest(desc ocispec.Descriptor, body []byte) (*Manifest, error) {
	m := &Manifest{Descriptor: desc}
	switch {
	case IsIndex(desc.MediaType):
		var index ocispec.Index
		if err := json.Unmarshal(body, &index); err != nil {
			return nil, fmt.Errorf("index %s is not valid JSON: %w", desc.Digest, err)
		}
		m.Children = index.Manifests
		for _, child := range m.Children {
			if !IsIndex(child.MediaType) && !IsManifest(child.MediaType) {
				return nil, fmt.Errorf("index %s lists %s with media type %q, which is neither a manifest nor an index", desc.Digest, child.Digest, child.MediaType)
			}
		}
	case IsManifest(desc.MediaType):
		var manifest ocispec.Manifest
		if err := json.Unmarshal(body, &manifest); err != nil {
			return nil, fmt.Errorf("manifest %s is not valid JSON: %w", desc.Digest, err)
		}
		if manifest.Config.Digest == "" {
			return nil, fmt.Errorf("manifest %s has no config descriptor", desc.Digest)
		}
		config := manifest.Config
		m.Config = &config
		m.Layers = manifest.Layers
	default:
		return nil, fmt.Errorf("descriptor %s has media type %q; expected an OCI or Docker v2 manifest or index", desc.Digest, desc.MediaType)
	}
	return m, nil
}
