package benchkit

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/rulesimg/img/internal/testpeer"
)

// layoutTB lets the benchmark call testpeer.WriteLayout outside a test. Embedding the
// interface satisfies testing.TB's unexported method. Fatalf panics with a layoutFailure,
// which WriteLayout recovers and returns as an error.
//
// NOTE: only Helper and Fatalf are implemented, because they are all WriteLayout calls. Any
// other method panics on the nil embedded interface.
type layoutTB struct {
	testing.TB
}

type layoutFailure struct {
	message string
}

func (layoutTB) Helper() {}

func (layoutTB) Fatalf(format string, args ...any) {
	panic(layoutFailure{fmt.Sprintf(format, args...)})
}

// WriteLayout writes an OCI layout of one image with layers random gzip layers of total
// bytes in all, tagged "latest". Because the layers are gzip already, skopeo does not
// compress them itself on the way to a registry, and their stored blocks keep the bytes
// incompressible.
func WriteLayout(dir string, layers int, total int64, seed uint64) (info testpeer.LayoutInfo, err error) {
	sizes := make([]int64, layers)
	for i := range sizes {
		sizes[i] = total / int64(layers)
	}

	defer func() {
		recovered := recover()
		if recovered == nil {
			return
		}
		failure, ok := recovered.(layoutFailure)
		if !ok {
			panic(recovered)
		}
		err = errors.New(failure.message)
	}()
	return testpeer.WriteLayout(layoutTB{}, dir, testpeer.LayoutSpec{
		Layers: sizes,
		Gzip:   true,
		Tags:   []string{"latest"},
		Seed:   seed,
	}), nil
}

// BlobsSize returns the summed size in bytes of every blob of a layout.
func BlobsSize(info testpeer.LayoutInfo) int64 {
	var total int64
	for _, blob := range info.Blobs {
		total += blob.Size
	}
	return total
}

// RemoveLayers deletes the layer files of a layout whose layers are in the remote cache,
// the state a Bazel build without the bytes leaves, and frees the disk space.
func RemoveLayers(info testpeer.LayoutInfo) error {
	for _, layer := range info.Layers {
		if err := os.Remove(info.BlobPath(layer.Digest)); err != nil {
			return err
		}
	}
	return nil
}
