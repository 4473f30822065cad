package push

import (
	"context"
	"fmt"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rulesimg/img/blobsource"
	"github.com/rulesimg/img/image"
)

// CAS is the remote cache as the lazy strategy uses it: a blob source that can also
// report which blobs it lacks.
type CAS interface {
	blobsource.Source
	FindMissing(ctx context.Context, blobs []ocispec.Descriptor) ([]ocispec.Descriptor, error)
	Endpoint() string
}

// Lazy pushes an image whose manifests and configs may be local but whose layers live
// in the remote cache: each missing blob streams from the cache into the registry
// upload without touching the local disk. Before any registry write it checks that
// the cache has every blob some destination lacks.
func Lazy(req *image.Request, cas CAS) Strategy {
	files := blobsource.Files(req.Files)
	return Strategy{
		Name:   image.StrategyLazy,
		Source: blobsource.Chain{files, cas},
		Preflight: func(ctx context.Context, missing []ocispec.Descriptor) error {
			var remote []ocispec.Descriptor
			for _, desc := range missing {
				if !files.Has(desc) {
					remote = append(remote, desc)
				}
			}
			if len(remote) == 0 {
				return nil
			}
			absent, err := cas.FindMissing(ctx, remote)
			if err != nil {
				return fmt.Errorf("lazy push: checking which blobs the remote cache has: %w", err)
			}
			if len(absent) == 0 {
				return nil
			}
			return missingFromCacheError(req.Image, absent, cas.Endpoint())
		},
	}
}

// missingFromCacheError lists each blob the cache lacks with its place in the image,
// the likely causes and the fixes.
func missingFromCacheError(img *image.Image, absent []ocispec.Descriptor, endpoint string) error {
	roles := describeRoles(img)
	var b strings.Builder
	fmt.Fprintf(&b, "lazy push: %d blob(s) that the registry lacks are not in the remote cache %s, so nothing was pushed:\n", len(absent), endpoint)
	for _, desc := range absent {
		fmt.Fprintf(&b, "  %s, %d bytes\n", roles[desc.Digest], desc.Size)
	}
	b.WriteString("Either the action that built them ran without uploading its outputs (check --remote_upload_local_results and --noremote_accept_cached), " +
		"or the cache evicted them. Rebuild with the remote cache enabled (for example bazel build --remote_cache=... with a changed input, or clean the local cache), " +
		"or push with --strategy eager from a build that has the files locally.")
	return fmt.Errorf("%s", b.String())
}
