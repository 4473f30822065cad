package push

import (
	"context"
	"fmt"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rulesimg/img/blobsource"
	"github.com/rulesimg/img/image"
)

// Eager pushes an image whose blobs are all local files. Before any registry write it
// checks that every blob a destination lacks has its file.
func Eager(req *image.Request) Strategy {
	files := blobsource.Files(req.Files)
	return Strategy{
		Name:   image.StrategyEager,
		Source: files,
		Preflight: func(_ context.Context, missing []ocispec.Descriptor) error {
			roles := describeRoles(req.Image)
			var b strings.Builder
			for _, desc := range missing {
				if !files.Has(desc) {
					fmt.Fprintf(&b, "\n  %s, %d bytes", roles[desc.Digest], desc.Size)
					continue
				}
				if err := files.Check(desc); err != nil {
					fmt.Fprintf(&b, "\n  %s: %v", roles[desc.Digest], err)
				}
			}
			if b.Len() == 0 {
				return nil
			}
			return fmt.Errorf("eager push: the registry lacks blobs whose local file is missing or wrong, so nothing was pushed:%s\n"+
				"Build with the outputs downloaded (without --remote_download_minimal), or push with --strategy lazy and --remote-cache", b.String())
		},
	}
}
