// Package push is the push engine: it uploads an image graph's missing blobs, then its
// manifests, indexes and tags, to one or more registries, following the OCI
// distribution spec. The strategies (eager, lazy, cas_registry) differ only in where
// blob bytes come from and what is checked before the first registry write, as
// eager.go, lazy.go and casregistry.go show.
package push

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/rulesimg/img/blobsource"
	"github.com/rulesimg/img/image"
)

// Strategy is the part of a push that differs between push strategies.
type Strategy struct {
	Name   string
	Source blobsource.Source
	// Present, when set, returns blobs known to be in every destination already, so
	// no existence check is spent on them.
	Present func(ctx context.Context, req *image.Request, blobs []ocispec.Descriptor) (map[digest.Digest]bool, error)
	// Preflight, when set, runs after the existence checks with the blobs some
	// destination lacks, before anything is written to a registry.
	Preflight func(ctx context.Context, missing []ocispec.Descriptor) error
}

// Result is the outcome of a push, per destination.
type Result struct {
	Digest       digest.Digest       `json:"digest"`
	MediaType    string              `json:"mediaType"`
	Destinations []DestinationResult `json:"destinations"`
}

// DestinationResult is the outcome at one repository.
type DestinationResult struct {
	Registry      string   `json:"registry"`
	Repository    string   `json:"repository"`
	Reference     string   `json:"reference"` // registry/repository@digest
	Tags          []string `json:"tags"`      // registry/repository:tag
	BlobsUploaded int      `json:"blobsUploaded"`
	BlobsMounted  int      `json:"blobsMounted"`
	BlobsExisting int      `json:"blobsExisting"`
	BytesUploaded int64    `json:"bytesUploaded"`
	Error         string   `json:"error,omitempty"`
}

// destination is the engine's state for one repository during a push.
type destination struct {
	image.Destination
	client *repoClient
	result *DestinationResult

	// complete is set when the registry has the root manifest already, so it has every
	// blob and child manifest too: a registry accepts a manifest only after the content
	// it references.
	complete bool
	// currentTags are tags found pointing at the root manifest already.
	currentTags map[string]bool

	mu      sync.Mutex
	missing map[digest.Digest]bool
	failed  error
}

func (d *destination) fail(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failed == nil {
		d.failed = err
	}
}

func (d *destination) err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.failed
}

func (d *destination) count(f func(r *DestinationResult)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(d.result)
}

func (d *destination) countUploaded(desc ocispec.Descriptor) {
	d.count(func(r *DestinationResult) {
		r.BlobsUploaded++
		r.BytesUploaded += desc.Size
	})
}

// pusher holds one push's state.
type pusher struct {
	opts      *options
	req       *image.Request
	strategy  Strategy
	dests     []*destination
	roles     map[digest.Digest]string // "layer 2 of manifest sha256:…", for errors
	manifests map[digest.Digest][]byte
}

// Push pushes req's image to each of req's destinations. It returns a result for every
// destination, and an error naming each destination, object and step that failed.
func Push(ctx context.Context, req *image.Request, strategy Strategy, opts ...Option) (*Result, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(o)
	}
	if len(req.Destinations) == 0 {
		return nil, errors.New("no destination: name one as registry/repository[:tag], or set destinations in the push request")
	}
	p := &pusher{opts: o, req: req, strategy: strategy, roles: describeRoles(req.Image)}

	order, err := req.Image.PushOrder()
	if err != nil {
		return nil, err
	}
	blobs, err := req.Image.Blobs()
	if err != nil {
		return nil, err
	}
	if err := p.loadManifests(ctx, order); err != nil {
		return nil, err
	}
	if o.verify {
		if err := p.verifyLocalFiles(blobs); err != nil {
			return nil, err
		}
	}
	if err := p.connect(); err != nil {
		return nil, err
	}

	if err := p.checkRoots(ctx); err != nil {
		return nil, err
	}
	present := map[digest.Digest]bool{}
	if strategy.Present != nil {
		if present, err = strategy.Present(ctx, req, blobs); err != nil {
			return nil, err
		}
	}
	if err := p.checkBlobs(ctx, blobs, present); err != nil {
		return nil, err
	}
	if strategy.Preflight != nil {
		if err := strategy.Preflight(ctx, p.missingBlobs(blobs)); err != nil {
			return nil, err
		}
	}

	p.uploadBlobs(ctx, blobs)
	p.pushManifests(ctx, order)
	return p.result(), p.errors()
}

// loadManifests reads every manifest and index into memory (each at most 4 MiB) and
// checks it against its descriptor, because manifests are pushed byte for byte.
func (p *pusher) loadManifests(ctx context.Context, order []*image.Manifest) error {
	p.manifests = map[digest.Digest][]byte{}
	for _, m := range order {
		desc := m.Descriptor
		r, err := p.strategy.Source.Open(ctx, desc, 0)
		if err != nil {
			return fmt.Errorf("reading manifest %s from %s: %w", desc.Digest, p.strategy.Source.Describe(desc), err)
		}
		body, err := io.ReadAll(io.LimitReader(r, 4<<20+1))
		r.Close()
		if err != nil {
			return fmt.Errorf("reading manifest %s from %s: %w", desc.Digest, p.strategy.Source.Describe(desc), err)
		}
		if err := image.Verify(desc, body); err != nil {
			return fmt.Errorf("manifest from %s: %w", p.strategy.Source.Describe(desc), err)
		}
		if err := checkManifestMatches(m, body); err != nil {
			return err
		}
		p.manifests[desc.Digest] = body
	}
	return nil
}

// checkManifestMatches compares a manifest's bytes with the graph that the request
// described, so a request cannot push layers that its manifest does not name.
func checkManifestMatches(m *image.Manifest, body []byte) error {
	parsed, err := image.ParseManifest(m.Descriptor, body)
	if err != nil {
		return err
	}
	want := append(blobDigests(m), childDigests(m)...)
	got := append(blobDigests(parsed), childDigests(parsed)...)
	if fmt.Sprint(want) != fmt.Sprint(got) {
		return fmt.Errorf("manifest %s names blobs %v, but the push request lists %v; rebuild the push request", m.Descriptor.Digest, got, want)
	}
	return nil
}

func blobDigests(m *image.Manifest) []digest.Digest {
	var out []digest.Digest
	if m.Config != nil {
		out = append(out, m.Config.Digest)
	}
	for _, l := range m.Layers {
		out = append(out, l.Digest)
	}
	return out
}

func childDigests(m *image.Manifest) []digest.Digest {
	var out []digest.Digest
	for _, c := range m.Children {
		out = append(out, c.Digest)
	}
	return out
}

func (p *pusher) verifyLocalFiles(blobs []ocispec.Descriptor) error {
	files := blobsource.Files(p.req.Files)
	for _, desc := range blobs {
		if err := files.VerifyFile(desc); err != nil {
			return fmt.Errorf("--verify: %s: %w", p.roles[desc.Digest], err)
		}
	}
	return nil
}

// connect makes a client per destination. No request is sent yet: the first one, a
// HEAD of the image at every destination, also learns each registry's auth challenge
// before any request with a body that cannot be replayed.
func (p *pusher) connect() error {
	for _, dest := range p.req.Destinations {
		client, err := p.newRepoClient(dest)
		if err != nil {
			return err
		}
		p.dests = append(p.dests, &destination{
			Destination: dest,
			client:      client,
			missing:     map[digest.Digest]bool{},
			currentTags: map[string]bool{},
			result:      &DestinationResult{Registry: dest.Registry, Repository: dest.Repository},
		})
	}
	return nil
}

func (p *pusher) newRepoClient(dest image.Destination) (*repoClient, error) {
	scheme := "https"
	if isLoopback(dest.Registry) || p.opts.insecure[dest.Registry] {
		scheme = "http"
	}
	base, err := url.Parse(scheme + "://" + dest.Registry)
	if err != nil || base.Host != dest.Registry {
		return nil, fmt.Errorf("invalid registry %q: write a host name with an optional port, e.g. registry.example.com:5000", dest.Registry)
	}

	// Pull access to the other repositories on the same registry lets blobs be
	// mounted from them.
	scopes := []string{fmt.Sprintf("repository:%s:pull,push", dest.Repository)}
	for _, other := range p.req.Destinations {
		if other.Registry == dest.Registry && other.Repository != dest.Repository {
			scopes = append(scopes, fmt.Sprintf("repository:%s:pull", other.Repository))
		}
	}
	transport := p.opts.transport
	if base, ok := transport.(*http.Transport); ok && p.opts.insecure[dest.Registry] && scheme == "https" {
		clone := base.Clone()
		clone.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
		transport = clone
	}
	auth := &authTransport{
		base:     transport,
		host:     base.Host,
		scheme:   scheme,
		scopes:   scopes,
		keychain: p.opts.keychain,
		helper:   p.opts.helper,
	}
	return &repoClient{
		registry:   dest.Registry,
		repository: dest.Repository,
		base:       base,
		http:       &http.Client{Transport: auth},
		opts:       p.opts,
		log:        p.opts.logger.With("registry", dest.Registry, "repository", dest.Repository),
	}, nil
}

// checkBlobs finds out, for every destination in parallel, which blobs it lacks.
func (p *pusher) checkBlobs(ctx context.Context, blobs []ocispec.Descriptor, present map[digest.Digest]bool) error {
	group, ctx := errgroup.WithContext(ctx)
	group.SetLimit(p.opts.checkJobs)
	for _, dest := range p.dests {
		for _, desc := range blobs {
			if present[desc.Digest] || dest.complete {
				dest.count(func(r *DestinationResult) { r.BlobsExisting++ })
				continue
			}
			group.Go(func() error {
				exists, err := dest.client.blobExists(ctx, desc)
				if err != nil {
					return &StepError{Destination: dest.String(), Object: p.roles[desc.Digest], Step: "checking whether the blob exists", Err: err}
				}
				dest.mu.Lock()
				defer dest.mu.Unlock()
				if exists {
					dest.result.BlobsExisting++
				} else {
					dest.missing[desc.Digest] = true
				}
				return nil
			})
		}
	}
	return group.Wait()
}

// checkRoots finds out, for every destination in parallel, whether it has the root
// manifest. When the first tag already points at it, that one request answers both
// questions, so a re-push of an unchanged image costs one request per tag and
// destination, not one per blob.
func (p *pusher) checkRoots(ctx context.Context) error {
	root := p.req.Image.Root
	group, ctx := errgroup.WithContext(ctx)
	for _, dest := range p.dests {
		group.Go(func() error {
			if len(dest.Tags) > 0 {
				tag := dest.Tags[0]
				current, err := dest.client.manifestDigest(ctx, tag, root.MediaType)
				if err != nil {
					return &StepError{Destination: dest.String(), Object: "tag " + tag, Step: "checking which manifest it points at", Err: err}
				}
				if current == root.Digest {
					dest.complete = true
					dest.currentTags[tag] = true
					return nil
				}
			}
			existing, err := dest.client.manifestDigest(ctx, root.Digest.String(), root.MediaType)
			if err != nil {
				return &StepError{Destination: dest.String(), Object: "manifest " + root.Digest.String(), Step: "checking whether it exists", Err: err}
			}
			dest.complete = existing == root.Digest
			return nil
		})
	}
	return group.Wait()
}

// missingBlobs returns the blobs that at least one destination lacks.
func (p *pusher) missingBlobs(blobs []ocispec.Descriptor) []ocispec.Descriptor {
	var out []ocispec.Descriptor
	for _, desc := range blobs {
		for _, dest := range p.dests {
			if dest.missing[desc.Digest] {
				out = append(out, desc)
				break
			}
		}
	}
	return out
}

// pushManifests puts every manifest (children before their index) and then the tags,
// at each destination that received all its blobs.
func (p *pusher) pushManifests(ctx context.Context, order []*image.Manifest) {
	var wg sync.WaitGroup
	for _, dest := range p.dests {
		if dest.err() != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.pushManifestsTo(ctx, dest, order); err != nil {
				dest.fail(err)
			}
		}()
	}
	wg.Wait()
}

func (p *pusher) pushManifestsTo(ctx context.Context, dest *destination, order []*image.Manifest) error {
	if dest.complete {
		order = nil
	}
	for _, m := range order {
		desc := m.Descriptor
		object := "manifest " + desc.Digest.String()
		if m.IsIndex() {
			object = "index " + desc.Digest.String()
		}
		existing, err := dest.client.manifestDigest(ctx, desc.Digest.String(), desc.MediaType)
		if err != nil {
			return &StepError{Destination: dest.String(), Object: object, Step: "checking whether it exists", Err: err}
		}
		if existing == desc.Digest {
			continue
		}
		if err := dest.client.putManifest(ctx, desc.Digest.String(), desc, p.manifests[desc.Digest]); err != nil {
			return &StepError{Destination: dest.String(), Object: object, Step: "uploading", Err: err}
		}
		p.opts.logger.Info("pushed manifest", "registry", dest.Registry, "repository", dest.Repository, "digest", desc.Digest)
	}

	root := p.req.Image.Root
	dest.result.Reference = fmt.Sprintf("%s/%s@%s", dest.Registry, dest.Repository, root.Digest)
	for _, tag := range dest.Tags {
		if dest.currentTags[tag] {
			dest.result.Tags = append(dest.result.Tags, fmt.Sprintf("%s/%s:%s", dest.Registry, dest.Repository, tag))
			continue
		}
		current, err := dest.client.manifestDigest(ctx, tag, root.MediaType)
		if err != nil {
			return &StepError{Destination: dest.String(), Object: "tag " + tag, Step: "checking which manifest it points at", Err: err}
		}
		if current != root.Digest {
			if err := dest.client.putManifest(ctx, tag, root, p.manifests[root.Digest]); err != nil {
				return &StepError{Destination: dest.String(), Object: "tag " + tag, Step: "setting it to " + root.Digest.String(), Err: err}
			}
			p.opts.logger.Info("set tag", "registry", dest.Registry, "repository", dest.Repository, "tag", tag, "digest", root.Digest)
		}
		dest.result.Tags = append(dest.result.Tags, fmt.Sprintf("%s/%s:%s", dest.Registry, dest.Repository, tag))
	}
	return nil
}

func (p *pusher) result() *Result {
	result := &Result{Digest: p.req.Image.Root.Digest, MediaType: p.req.Image.Root.MediaType}
	for _, dest := range p.dests {
		r := *dest.result
		if err := dest.err(); err != nil {
			r.Error = err.Error()
			r.Reference = ""
			r.Tags = nil
		}
		result.Destinations = append(result.Destinations, r)
	}
	return result
}

func (p *pusher) errors() error {
	var errs []error
	for _, dest := range p.dests {
		if err := dest.err(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// describeRoles names each blob by its place in the image, for error messages:
// "config of manifest sha256:…" or "layer 3 of manifest sha256:…".
func describeRoles(img *image.Image) map[digest.Digest]string {
	roles := map[digest.Digest]string{}
	for _, m := range img.Manifests {
		if m.Config != nil {
			if _, ok := roles[m.Config.Digest]; !ok {
				roles[m.Config.Digest] = fmt.Sprintf("blob %s (config of manifest %s)", m.Config.Digest, m.Descriptor.Digest)
			}
		}
		for i, layer := range m.Layers {
			if _, ok := roles[layer.Digest]; !ok {
				roles[layer.Digest] = fmt.Sprintf("blob %s (layer %d of manifest %s)", layer.Digest, i+1, m.Descriptor.Digest)
			}
		}
	}
	return roles
}
