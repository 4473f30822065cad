package main

import (
	"fmt"
	"os"
	"testing"

	"github.com/rulesimg/img/internal/testpeer"
)

// layoutTB lets the benchmark call testpeer.WriteLayout outside a test. Embedding the
// interface satisfies testing.TB's unexported method.
//
// NOTE: only Helper and Fatalf are implemented, because they are all WriteLayout calls. Any
// other method panics on the nil embedded interface.
type layoutTB struct {
	testing.TB
}

func (layoutTB) Helper() {}

func (layoutTB) Fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "registrybench: "+format+"\n", args...)
	os.Exit(1)
}

// writeLayout writes an OCI layout of one image with layers random gzip layers of total
// bytes in all, tagged "latest". The gzip streams use stored blocks, so the bytes stay
// incompressible.
func writeLayout(dir string, layers int, total int64, seed uint64) testpeer.LayoutInfo {
	sizes := make([]int64, layers)
	for i := range sizes {
		sizes[i] = total / int64(layers)
	}
	return testpeer.WriteLayout(layoutTB{}, dir, testpeer.LayoutSpec{
		Layers: sizes,
		Gzip:   true,
		Tags:   []string{"latest"},
		Seed:   seed,
	})
}

func blobsSize(info testpeer.LayoutInfo) int64 {
	var total int64
	for _, blob := range info.Blobs {
		total += blob.Size
	}
	return total
}

// removeLayers deletes the layer files of a layout whose layers are in the remote cache,
// the state a Bazel build without the bytes leaves, and frees the disk space.
func removeLayers(info testpeer.LayoutInfo) error {
	for _, layer := range info.Layers {
		if err := os.Remove(info.BlobPath(layer.Digest)); err != nil {
			return err
		}
	}
	return nil
}
