package push

import (
	"context"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rulesimg/img/blobsource"
	"github.com/rulesimg/img/image"
)

// BlobCache is the blob-cache service of a registry whose blob store is the remote
// cache. Commit registers blobs (digest and size) with the registry and returns those
// the cache does not have.
type BlobCache interface {
	Commit(ctx context.Context, blobs []ocispec.Descriptor) (missing []ocispec.Descriptor, err error)
	Endpoint() string
}

// CASRegistry pushes to a registry that serves blobs straight out of the remote cache:
// one Commit call registers every config and layer, so only manifests, indexes and
// tags cross the wire. A missing config or layer that is local is uploaded instead;
// any other missing blob is an error listing it.
func CASRegistry(req *image.Request, cache BlobCache) Strategy {
	files := blobsource.Files(req.Files)
	return Strategy{
		Name:   image.StrategyCASRegistry,
		Source: files,
		Present: func(ctx context.Context, req *image.Request, blobs []ocispec.Descriptor) (map[digest.Digest]bool, error) {
			missing, err := cache.Commit(ctx, blobs)
			if err != nil {
				return nil, fmt.Errorf("cas_registry push: committing blobs to the blob cache %s: %w", cache.Endpoint(), err)
			}
			absent := map[digest.Digest]bool{}
			var unrecoverable []ocispec.Descriptor
			for _, desc := range missing {
				absent[desc.Digest] = true
				if !files.Has(desc) {
					unrecoverable = append(unrecoverable, desc)
				}
			}
			if len(unrecoverable) > 0 {
				return nil, missingFromBlobCacheError(req.Image, unrecoverable, cache.Endpoint())
			}
			present := map[digest.Digest]bool{}
			for _, desc := range blobs {
				if !absent[desc.Digest] {
					present[desc.Digest] = true
				}
			}
			return present, nil
		},
	}
}

func missingFromBlobCacheError(img *image.Image, absent []ocispec.Descriptor, endpoint string) error {
	roles := describeRoles(img)
	var b strings.Builder
	fmt.Fprintf(&b, "cas_registry push: the blob cache %s reports %d blob(s) missing from its remote cache, and they are not local, so nothing was pushed:\n", endpoint, len(absent))
	for _, desc := range absent {
		fmt.Fprintf(&b, "  %s, %d bytes\n", roles[desc.Digest], desc.Size)
	}
	b.WriteString("Build with --remote_cache pointing at the cache the registry reads, with remote uploads enabled, or push with --strategy eager.")
	return fmt.Errorf("%s", b.String())
}
