package assemble

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rulesimg/img/image"
)

// A graph file describes a built manifest or index for the next build step. It is a
// push request (docs/push-request.md) with strategy eager, no destinations, and file
// paths relative to the graph file's own folder, as the push request format resolves
// them, so `img push GRAPH_FILE` pushes it from any working directory.

// WriteGraph writes graph to path. The graph's file paths are relative to the working
// directory (Bazel's execution root) or absolute; they are written relative to the
// folder of path.
func WriteGraph(path string, graph *image.Request) error {
	dir := filepath.Dir(path)
	relative := *graph
	relative.Files = map[digest.Digest]string{}
	for d, file := range graph.Files {
		if !filepath.IsAbs(file) {
			rel, err := filepath.Rel(dir, file)
			if err != nil {
				return fmt.Errorf("encode image graph %s: %w", path, err)
			}
			file = rel
		}
		relative.Files[d] = file
	}
	var buf bytes.Buffer
	if err := relative.Encode(&buf, ""); err != nil {
		return fmt.Errorf("encode image graph %s: %w", path, err)
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// ReadGraph reads a graph file written by WriteGraph, with its file paths relative to
// the working directory again.
func ReadGraph(path string) (*image.Request, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("image graph: %w", err)
	}
	defer f.Close()
	graph, err := image.DecodeRequest(f, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("image graph %s: %w", path, err)
	}
	return graph, nil
}

// WriteJSON writes v as indented JSON to path.
func WriteJSON(path string, v any) error {
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(body, '\n'), 0o644)
}

// ReadLayerMetadata reads the metadata that `img layer` wrote.
func ReadLayerMetadata(path string) (LayerMetadata, error) {
	body, err := os.ReadFile(path)
	if err != nil {
		return LayerMetadata{}, fmt.Errorf("layer metadata: %w", err)
	}
	var meta LayerMetadata
	decoder := json.NewDecoder(bytes.NewReader(body))
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(&meta); err != nil {
		return LayerMetadata{}, fmt.Errorf("layer metadata %s: %w", path, err)
	}
	if err := meta.Descriptor.Digest.Validate(); err != nil {
		return LayerMetadata{}, fmt.Errorf("layer metadata %s: field \"descriptor.digest\": %w", path, err)
	}
	if err := meta.DiffID.Validate(); err != nil {
		return LayerMetadata{}, fmt.Errorf("layer metadata %s: field \"diff_id\": %w", path, err)
	}
	return meta, nil
}

// BuildIndex builds an OCI image index over the roots of children, in the order given,
// and returns its bytes with the merged graph of all children.
func BuildIndex(children []*image.Request, annotations map[string]string, indexPath string) ([]byte, *image.Request, error) {
	index := ocispec.Index{
		MediaType:   ocispec.MediaTypeImageIndex,
		Manifests:   []ocispec.Descriptor{},
		Annotations: annotations,
	}
	index.SchemaVersion = 2

	graph := &image.Request{
		Strategy: image.StrategyEager,
		Image:    &image.Image{Manifests: map[digest.Digest]*image.Manifest{}},
		Files:    map[digest.Digest]string{},
	}
	seen := map[digest.Digest]bool{}
	for _, child := range children {
		root := child.Image.Root
		if seen[root.Digest] {
			return nil, nil, fmt.Errorf("index lists manifest %s twice; give each platform once", root.Digest)
		}
		seen[root.Digest] = true
		index.Manifests = append(index.Manifests, root)
		for d, m := range child.Image.Manifests {
			graph.Image.Manifests[d] = m
		}
		for d, path := range child.Files {
			graph.Files[d] = path
		}
	}

	body, err := json.Marshal(index)
	if err != nil {
		return nil, nil, fmt.Errorf("encode image index: %w", err)
	}
	desc := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageIndex,
		Digest:    digest.FromBytes(body),
		Size:      int64(len(body)),
	}
	graph.Image.Root = desc
	graph.Image.Manifests[desc.Digest] = &image.Manifest{Descriptor: desc, Children: index.Manifests}
	graph.Files[desc.Digest] = indexPath
	return body, graph, nil
}
