package assemble

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rulesimg/img/image"
)

// ConfigOptions are the image config fields a manifest sets. Unset fields keep the
// base image's values.
type ConfigOptions struct {
	// Entrypoint and Cmd replace the base's when non-nil; an empty, non-nil slice
	// clears them.
	Entrypoint []string
	Cmd        []string
	// Env entries are KEY=VALUE; a key the base sets is replaced in place.
	Env          []string
	WorkingDir   string
	User         string
	Labels       map[string]string
	ExposedPorts []string
	// OS, Architecture and Variant default to the base's platform, then to linux/amd64.
	OS           string
	Architecture string
	Variant      string
}

// ManifestOptions describes an image manifest: a base, layers on top and config fields.
type ManifestOptions struct {
	Base        *Base
	Layers      []LayerMetadata
	Config      ConfigOptions
	Annotations map[string]string
}

// Base is the image a manifest builds on: its manifest, its config and where its blobs are.
type Base struct {
	Manifest *image.Manifest
	Config   ocispec.Image
	// Graph holds the base's manifest and the files of its blobs, so that the new
	// image's graph can point at them.
	Graph *image.Request
}

// BuiltManifest is the result of BuildManifest.
type BuiltManifest struct {
	Config   []byte
	Manifest []byte
	// Descriptor is the manifest's descriptor, with the platform set.
	Descriptor ocispec.Descriptor
	// ConfigDescriptor and Layers are what the manifest lists.
	ConfigDescriptor ocispec.Descriptor
	Layers           []ocispec.Descriptor
}

// BuildManifest builds the config and manifest blobs. Both are deterministic: the
// config's created time is the Unix epoch and maps are written in sorted key order.
func BuildManifest(opts ManifestOptions) (*BuiltManifest, error) {
	config := ocispec.Image{}
	var layers []ocispec.Descriptor
	if opts.Base != nil {
		config = opts.Base.Config
		layers = append(layers, opts.Base.Manifest.Layers...)
		if len(config.RootFS.DiffIDs) != len(layers) {
			return nil, fmt.Errorf("base image %s lists %d layers but its config lists %d diff IDs; the base is corrupt", opts.Base.Manifest.Descriptor.Digest, len(layers), len(config.RootFS.DiffIDs))
		}
	}

	applyConfig(&config, opts.Config)
	created := epoch
	config.Created = &created
	config.RootFS.Type = "layers"
	addHistory := len(config.History) > 0 || len(layers) == 0
	for _, layer := range opts.Layers {
		layers = append(layers, layer.Descriptor)
		config.RootFS.DiffIDs = append(config.RootFS.DiffIDs, layer.DiffID)
		if addHistory {
			config.History = append(config.History, ocispec.History{Created: &created, CreatedBy: "img layer"})
		}
	}
	if config.RootFS.DiffIDs == nil {
		config.RootFS.DiffIDs = []digest.Digest{}
	}

	configBytes, err := json.Marshal(config)
	if err != nil {
		return nil, fmt.Errorf("encode image config: %w", err)
	}
	configDesc := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageConfig,
		Digest:    digest.FromBytes(configBytes),
		Size:      int64(len(configBytes)),
	}
	if layers == nil {
		layers = []ocispec.Descriptor{}
	}
	manifest := ocispec.Manifest{
		MediaType:   ocispec.MediaTypeImageManifest,
		Config:      configDesc,
		Layers:      layers,
		Annotations: opts.Annotations,
	}
	manifest.SchemaVersion = 2
	manifestBytes, err := json.Marshal(manifest)
	if err != nil {
		return nil, fmt.Errorf("encode image manifest: %w", err)
	}

	return &BuiltManifest{
		Config:   configBytes,
		Manifest: manifestBytes,
		Descriptor: ocispec.Descriptor{
			MediaType: ocispec.MediaTypeImageManifest,
			Digest:    digest.FromBytes(manifestBytes),
			Size:      int64(len(manifestBytes)),
			Platform: &ocispec.Platform{
				OS:           config.OS,
				Architecture: config.Architecture,
				Variant:      config.Variant,
			},
		},
		ConfigDescriptor: configDesc,
		Layers:           layers,
	}, nil
}

func applyConfig(config *ocispec.Image, opts ConfigOptions) {
	if opts.OS != "" {
		config.OS = opts.OS
	}
	if config.OS == "" {
		config.OS = "linux"
	}
	if opts.Architecture != "" {
		config.Architecture = opts.Architecture
		config.Variant = ""
	}
	if config.Architecture == "" {
		config.Architecture = "amd64"
	}
	if opts.Variant != "" {
		config.Variant = opts.Variant
	}

	if opts.Entrypoint != nil {
		config.Config.Entrypoint = opts.Entrypoint
	}
	if opts.Cmd != nil {
		config.Config.Cmd = opts.Cmd
	}
	config.Config.Env = mergeEnv(config.Config.Env, opts.Env)
	if opts.WorkingDir != "" {
		config.Config.WorkingDir = opts.WorkingDir
	}
	if opts.User != "" {
		config.Config.User = opts.User
	}
	for key, value := range opts.Labels {
		if config.Config.Labels == nil {
			config.Config.Labels = map[string]string{}
		}
		config.Config.Labels[key] = value
	}
	for _, port := range opts.ExposedPorts {
		if !strings.Contains(port, "/") {
			port += "/tcp"
		}
		if config.Config.ExposedPorts == nil {
			config.Config.ExposedPorts = map[string]struct{}{}
		}
		config.Config.ExposedPorts[port] = struct{}{}
	}
}

// mergeEnv sets each KEY=VALUE of updates in base. An entry with the same key is
// replaced in place, and new keys are appended in the order given.
func mergeEnv(base, updates []string) []string {
	merged := append([]string(nil), base...)
	for _, update := range updates {
		key, _, _ := strings.Cut(update, "=")
		replaced := false
		for i, existing := range merged {
			if existingKey, _, _ := strings.Cut(existing, "="); existingKey == key {
				merged[i] = update
				replaced = true
				break
			}
		}
		if !replaced {
			merged = append(merged, update)
		}
	}
	return merged
}

// Graph returns the push request graph of the built manifest: the manifest with its
// config and layers, the files that hold them, and the base's blob files.
func (b *BuiltManifest) Graph(manifestPath, configPath string, opts ManifestOptions) *image.Request {
	graph := &image.Request{
		Strategy: image.StrategyEager,
		Image: &image.Image{
			Root:      b.Descriptor,
			Manifests: map[digest.Digest]*image.Manifest{},
		},
		Files: map[digest.Digest]string{},
	}
	config := b.ConfigDescriptor
	graph.Image.Manifests[b.Descriptor.Digest] = &image.Manifest{
		Descriptor: b.Descriptor,
		Config:     &config,
		Layers:     b.Layers,
	}
	if opts.Base != nil {
		for d, path := range opts.Base.Graph.Files {
			graph.Files[d] = path
		}
	}
	for _, layer := range opts.Layers {
		if layer.File != "" {
			graph.Files[layer.Descriptor.Digest] = layer.File
		}
	}
	graph.Files[b.Descriptor.Digest] = manifestPath
	graph.Files[config.Digest] = configPath
	return graph
}

// LoadBaseLayout reads the base image from an OCI layout directory. When the layout
// holds an index, the manifest for the platform os/architecture[/variant] is picked.
func LoadBaseLayout(dir, os, architecture, variant string) (*Base, error) {
	layout, err := image.ReadLayout(dir)
	if err != nil {
		return nil, err
	}
	manifest, err := pickPlatform(layout, os, architecture, variant)
	if err != nil {
		return nil, fmt.Errorf("base OCI layout %s: %w", dir, err)
	}
	return newBase(manifest, layout.Files)
}

// LoadBaseGraph reads the base image from another manifest's graph file, as written
// by `img manifest --metadata`.
func LoadBaseGraph(path string) (*Base, error) {
	graph, err := ReadGraph(path)
	if err != nil {
		return nil, err
	}
	manifest := graph.Image.Manifests[graph.Image.Root.Digest]
	if manifest == nil || manifest.IsIndex() {
		return nil, fmt.Errorf("base image %s is an index; use one of its platform manifests as a base", path)
	}
	return newBase(manifest, graph.Files)
}

func newBase(manifest *image.Manifest, files map[digest.Digest]string) (*Base, error) {
	configPath, ok := files[manifest.Config.Digest]
	if !ok {
		return nil, fmt.Errorf("base image %s: config %s has no local file", manifest.Descriptor.Digest, manifest.Config.Digest)
	}
	configBytes, err := os.ReadFile(configPath)
	if err != nil {
		return nil, fmt.Errorf("base image %s: %w", manifest.Descriptor.Digest, err)
	}
	if err := image.Verify(*manifest.Config, configBytes); err != nil {
		return nil, fmt.Errorf("base image %s: %w", manifest.Descriptor.Digest, err)
	}
	var config ocispec.Image
	if err := json.Unmarshal(configBytes, &config); err != nil {
		return nil, fmt.Errorf("base image %s: config %s is not valid JSON: %w", manifest.Descriptor.Digest, manifest.Config.Digest, err)
	}

	graph := &image.Request{
		Strategy: image.StrategyEager,
		Image: &image.Image{
			Root:      manifest.Descriptor,
			Manifests: map[digest.Digest]*image.Manifest{manifest.Descriptor.Digest: manifest},
		},
		Files: map[digest.Digest]string{},
	}
	// The base's manifest file is left out: the new image has its own manifest.
	for _, layer := range manifest.Layers {
		if path, ok := files[layer.Digest]; ok {
			graph.Files[layer.Digest] = path
		}
	}
	return &Base{Manifest: manifest, Config: config, Graph: graph}, nil
}

// pickPlatform returns the image manifest of layout for the platform. A layout whose
// root is a single manifest is used whatever its platform.
func pickPlatform(layout *image.Request, os, architecture, variant string) (*image.Manifest, error) {
	root := layout.Image.Manifests[layout.Image.Root.Digest]
	if !root.IsIndex() {
		return root, nil
	}

	var available []string
	var exact, fallback []ocispec.Descriptor
	pending := append([]ocispec.Descriptor(nil), root.Children...)
	for len(pending) > 0 {
		child := pending[0]
		pending = pending[1:]
		m := layout.Image.Manifests[child.Digest]
		if m.IsIndex() {
			pending = append(pending, m.Children...)
			continue
		}
		if child.Platform == nil {
			continue
		}
		available = append(available, platformString(child.Platform.OS, child.Platform.Architecture, child.Platform.Variant))
		if child.Platform.OS != os || child.Platform.Architecture != architecture {
			continue
		}
		// An exact variant wins; a manifest without a variant fits any variant, and
		// any manifest fits a request without one.
		switch {
		case child.Platform.Variant == variant || variant == "":
			exact = append(exact, child)
		case child.Platform.Variant == "":
			fallback = append(fallback, child)
		}
	}
	candidates := append(exact, fallback...)
	if len(candidates) == 0 {
		sort.Strings(available)
		return nil, fmt.Errorf("no manifest for platform %s; the index has %s", platformString(os, architecture, variant), strings.Join(available, ", "))
	}
	return layout.Image.Manifests[candidates[0].Digest], nil
}

func platformString(os, architecture, variant string) string {
	s := os + "/" + architecture
	if variant != "" {
		s += "/" + variant
	}
	return s
}
