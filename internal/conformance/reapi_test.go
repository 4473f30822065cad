package conformance

import (
	"testing"

	"github.com/rulesimg/img/internal/testpeer"
)

func TestConformanceREAPIStore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts bazel-remote and img registry and runs the OCI conformance suite")
	}
	cache := testpeer.StartBazelRemote(t)
	registry := startImgRegistry(t, t.TempDir(), "--blob-store", "reapi", "--reapi-endpoint", cache.Endpoint())
	runConformance(t, registry.host())
}
