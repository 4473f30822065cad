package image

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// RequestVersion is the push request format version this img reads and writes.
const RequestVersion = 1

// The push strategies. They decide where blob bytes come from and what is checked
// before the first registry write; see docs/push-request.md.
const (
	StrategyEager       = "eager"
	StrategyLazy        = "lazy"
	StrategyCASRegistry = "cas_registry"
	StrategyBES         = "bes"
)

// Strategies lists the valid strategy names in the order the docs present them.
var Strategies = []string{StrategyEager, StrategyLazy, StrategyCASRegistry, StrategyBES}

// Request is a push request in memory: the image graph, where local blob bytes are and
// where the image goes. Files maps a digest to a file path, absolute unless the request
// was decoded with an empty base directory. A blob without an entry must come from
// elsewhere (the remote cache, for lazy pushes).
type Request struct {
	Strategy     string
	Image        *Image
	Files        map[digest.Digest]string
	Destinations []Destination
}

// Destination is one repository the image is pushed to, with the tags to set there.
type Destination struct {
	Registry   string   `json:"registry"`
	Repository string   `json:"repository"`
	Tags       []string `json:"tags,omitempty"`
}

// String returns registry/repository.
func (d Destination) String() string {
	return d.Registry + "/" + d.Repository
}

// The JSON form of a request. It differs from Request where JSON needs it: manifests
// form a list, and descriptors carry their size as a pointer so that a missing size
// can be distinguished from an empty blob.
type wireRequest struct {
	Version      *int              `json:"version"`
	Strategy     string            `json:"strategy"`
	Root         *wireDescriptor   `json:"root"`
	Manifests    []wireManifest    `json:"manifests"`
	Files        map[string]string `json:"files,omitempty"`
	Destinations []Destination     `json:"destinations,omitempty"`
}

type wireManifest struct {
	Descriptor *wireDescriptor  `json:"descriptor"`
	Config     *wireDescriptor  `json:"config,omitempty"`
	Layers     []wireDescriptor `json:"layers,omitempty"`
	Manifests  []wireDescriptor `json:"manifests,omitempty"`
}

type wireDescriptor struct {
	MediaType    string            `json:"mediaType"`
	Digest       digest.Digest     `json:"digest"`
	Size         *int64            `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	URLs         []string          `json:"urls,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	Data         []byte            `json:"data,omitempty"`
	Platform     *ocispec.Platform `json:"platform,omitempty"`
}

// ReadRequestFile decodes the push request at path. Relative file paths in it are
// resolved against the directory that holds the request file.
func ReadRequestFile(path string) (*Request, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("push request: %w", err)
	}
	defer f.Close()
	req, err := DecodeRequest(f, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("push request %s: %w", path, err)
	}
	return req, nil
}

// DecodeRequest decodes a push request strictly: an unknown field, a missing required
// field or a graph with a dangling reference is an error naming it. Relative file
// paths are resolved against baseDir.
func DecodeRequest(r io.Reader, baseDir string) (*Request, error) {
	decoder := json.NewDecoder(io.LimitReader(r, 64<<20))
	decoder.DisallowUnknownFields()
	var wire wireRequest
	if err := decoder.Decode(&wire); err != nil {
		// encoding/json prefixes its messages with "json: " and gives no field path
		// for unknown fields, so point to the format's documentation instead.
		return nil, fmt.Errorf("invalid push request: %s; docs/push-request.md lists the fields", strings.TrimPrefix(err.Error(), "json: "))
	}
	if decoder.More() {
		return nil, errors.New("invalid JSON: more than one value; a push request is a single JSON object")
	}
	return wire.toRequest(baseDir)
}

func (w *wireRequest) toRequest(baseDir string) (*Request, error) {
	if w.Version == nil {
		return nil, errors.New(`missing required field "version"`)
	}
	if *w.Version != RequestVersion {
		return nil, fmt.Errorf(`field "version" is %d; this img reads version %d, so update img or the rules that wrote the request`, *w.Version, RequestVersion)
	}
	if err := ValidateStrategy(w.Strategy); err != nil {
		return nil, fmt.Errorf(`field "strategy": %w`, err)
	}
	if w.Root == nil {
		return nil, errors.New(`missing required field "root"`)
	}
	root, err := w.Root.toOCI("root")
	if err != nil {
		return nil, err
	}
	if len(w.Manifests) == 0 {
		return nil, errors.New(`missing required field "manifests": list the root and every manifest it reaches`)
	}

	req := &Request{
		Strategy: w.Strategy,
		Image:    &Image{Root: root, Manifests: map[digest.Digest]*Manifest{}},
		Files:    map[digest.Digest]string{},
	}
	for i, wm := range w.Manifests {
		m, err := wm.toManifest(fmt.Sprintf("manifests[%d]", i))
		if err != nil {
			return nil, err
		}
		if _, dup := req.Image.Manifests[m.Descriptor.Digest]; dup {
			return nil, fmt.Errorf(`field "manifests[%d]": manifest %s is listed twice`, i, m.Descriptor.Digest)
		}
		req.Image.Manifests[m.Descriptor.Digest] = m
	}
	if _, err := req.Image.PushOrder(); err != nil {
		return nil, err
	}

	for key, path := range w.Files {
		d, err := digest.Parse(key)
		if err != nil {
			return nil, fmt.Errorf(`field "files": key %q is not a digest: %w`, key, err)
		}
		if path == "" {
			return nil, fmt.Errorf(`field "files[%s]": empty path; leave the digest out when the bytes are not local`, key)
		}
		if !filepath.IsAbs(path) {
			path = filepath.Join(baseDir, path)
		}
		req.Files[d] = path
	}

	for i, dest := range w.Destinations {
		if err := dest.validate(); err != nil {
			return nil, fmt.Errorf(`field "destinations[%d]": %w`, i, err)
		}
	}
	req.Destinations = w.Destinations
	return req, nil
}

func (wm *wireManifest) toManifest(field string) (*Manifest, error) {
	if wm.Descriptor == nil {
		return nil, fmt.Errorf(`missing required field "%s.descriptor"`, field)
	}
	desc, err := wm.Descriptor.toOCI(field + ".descriptor")
	if err != nil {
		return nil, err
	}
	m := &Manifest{Descriptor: desc}

	switch {
	case IsIndex(desc.MediaType):
		if wm.Config != nil || len(wm.Layers) > 0 {
			return nil, fmt.Errorf(`field "%s": index %s cannot have a config or layers`, field, desc.Digest)
		}
		for i := range wm.Manifests {
			child, err := wm.Manifests[i].toOCI(fmt.Sprintf("%s.manifests[%d]", field, i))
			if err != nil {
				return nil, err
			}
			m.Children = append(m.Children, child)
		}
	case IsManifest(desc.MediaType):
		if len(wm.Manifests) > 0 {
			return nil, fmt.Errorf(`field "%s": image manifest %s cannot list child manifests`, field, desc.Digest)
		}
		if wm.Config == nil {
			return nil, fmt.Errorf(`missing required field "%s.config"`, field)
		}
		config, err := wm.Config.toOCI(field + ".config")
		if err != nil {
			return nil, err
		}
		m.Config = &config
		for i := range wm.Layers {
			layer, err := wm.Layers[i].toOCI(fmt.Sprintf("%s.layers[%d]", field, i))
			if err != nil {
				return nil, err
			}
			m.Layers = append(m.Layers, layer)
		}
	default:
		return nil, fmt.Errorf(`field "%s.descriptor.mediaType" is %q; expected an OCI or Docker v2 manifest or index media type`, field, desc.MediaType)
	}
	return m, nil
}

func (wd *wireDescriptor) toOCI(field string) (ocispec.Descriptor, error) {
	if wd.MediaType == "" {
		return ocispec.Descriptor{}, fmt.Errorf(`missing required field "%s.mediaType"`, field)
	}
	if wd.Digest == "" {
		return ocispec.Descriptor{}, fmt.Errorf(`missing required field "%s.digest"`, field)
	}
	if err := wd.Digest.Validate(); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf(`field "%s.digest" is %q: %w`, field, wd.Digest, err)
	}
	if wd.Size == nil {
		return ocispec.Descriptor{}, fmt.Errorf(`missing required field "%s.size"`, field)
	}
	if *wd.Size < 0 {
		return ocispec.Descriptor{}, fmt.Errorf(`field "%s.size" is %d; a size cannot be negative`, field, *wd.Size)
	}
	return ocispec.Descriptor{
		MediaType:    wd.MediaType,
		Digest:       wd.Digest,
		Size:         *wd.Size,
		ArtifactType: wd.ArtifactType,
		URLs:         wd.URLs,
		Annotations:  wd.Annotations,
		Data:         wd.Data,
		Platform:     wd.Platform,
	}, nil
}

func fromOCI(d ocispec.Descriptor) wireDescriptor {
	size := d.Size
	return wireDescriptor{
		MediaType:    d.MediaType,
		Digest:       d.Digest,
		Size:         &size,
		ArtifactType: d.ArtifactType,
		URLs:         d.URLs,
		Annotations:  d.Annotations,
		Data:         d.Data,
		Platform:     d.Platform,
	}
}

// Encode writes req as indented JSON. File paths are written relative to baseDir when
// they lie below it, so a request and its blobs can move together.
func (req *Request) Encode(w io.Writer, baseDir string) error {
	order, err := req.Image.PushOrder()
	if err != nil {
		return err
	}
	version := RequestVersion
	root := fromOCI(req.Image.Root)
	wire := wireRequest{
		Version:      &version,
		Strategy:     req.Strategy,
		Root:         &root,
		Files:        map[string]string{},
		Destinations: req.Destinations,
	}
	for _, m := range order {
		descriptor := fromOCI(m.Descriptor)
		wm := wireManifest{Descriptor: &descriptor}
		if m.Config != nil {
			config := fromOCI(*m.Config)
			wm.Config = &config
		}
		for _, layer := range m.Layers {
			wm.Layers = append(wm.Layers, fromOCI(layer))
		}
		for _, child := range m.Children {
			wm.Manifests = append(wm.Manifests, fromOCI(child))
		}
		wire.Manifests = append(wire.Manifests, wm)
	}
	for d, path := range req.Files {
		if rel, err := filepath.Rel(baseDir, path); err == nil && baseDir != "" && !strings.HasPrefix(rel, "..") {
			path = rel
		}
		wire.Files[d.String()] = path
	}

	var buf bytes.Buffer
	encoder := json.NewEncoder(&buf)
	encoder.SetIndent("", "  ")
	if err := encoder.Encode(wire); err != nil {
		return err
	}
	_, err = w.Write(buf.Bytes())
	return err
}

// ValidateStrategy checks that name is one of Strategies.
func ValidateStrategy(name string) error {
	for _, s := range Strategies {
		if name == s {
			return nil
		}
	}
	if name == "" {
		return fmt.Errorf("missing; use one of %s", strings.Join(Strategies, ", "))
	}
	return fmt.Errorf("unknown strategy %q; use one of %s", name, strings.Join(Strategies, ", "))
}

func (d Destination) validate() error {
	if d.Registry == "" {
		return errors.New(`missing required field "registry"`)
	}
	if d.Repository == "" {
		return errors.New(`missing required field "repository"`)
	}
	if err := ValidateRepository(d.Repository); err != nil {
		return err
	}
	for _, tag := range d.Tags {
		if err := ValidateTag(tag); err != nil {
			return err
		}
	}
	return nil
}

// SortedDigests returns the keys of files in a stable order, for deterministic output.
func SortedDigests(files map[digest.Digest]string) []digest.Digest {
	keys := make([]digest.Digest, 0, len(files))
	for d := range files {
		keys = append(keys, d)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys
}
