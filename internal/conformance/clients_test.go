package conformance

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rulesimg/img/internal/testpeer"
)

// TestClientsPullWhatCranePushed pushes a two-platform image with crane, then copies it out
// with crane and with skopeo and checks the digests survive the round trip.
func TestClientsPullWhatCranePushed(t *testing.T) {
	if testing.Short() {
		t.Skip("starts img registry and runs crane and skopeo")
	}
	skopeo, err := exec.LookPath("skopeo")
	if err != nil {
		t.Skip("skopeo is not installed; apt-get install -y skopeo")
	}

	registry := startImgRegistry(t, t.TempDir())
	layout := testpeer.WriteLayout(t, filepath.Join(t.TempDir(), "layout"), testpeer.LayoutSpec{
		Layers:        []int64{300 << 10, 2 << 20},
		Gzip:          true,
		MultiPlatform: true,
	})
	ref := registry.host() + "/clients/app:v1"

	testpeer.Crane(t, "push", layout.Dir, ref)

	if got := testpeer.Crane(t, "digest", ref); got != layout.RootDigest().String() {
		t.Errorf("crane digest = %s, want the pushed index %s", got, layout.RootDigest())
	}
	pulled := filepath.Join(t.TempDir(), "crane-pull")
	testpeer.Crane(t, "pull", "--format", "oci", ref, pulled)
	if _, err := os.Stat(filepath.Join(pulled, "index.json")); err != nil {
		t.Errorf("crane pull wrote no layout: %v", err)
	}

	skopeoDir := filepath.Join(t.TempDir(), "skopeo-copy")
	cmd := exec.Command(skopeo, "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
		"docker://"+ref, "oci:"+skopeoDir+":v1")
	cmd.Env = append(os.Environ(), "REGISTRY_AUTH_FILE="+filepath.Join(t.TempDir(), "auth.json"))
	if output, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy failed: %v\n%s", err, output)
	}
	index, err := os.ReadFile(filepath.Join(skopeoDir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(index), layout.RootDigest().String()) {
		t.Errorf("skopeo's index.json does not list the pushed index %s:\n%s", layout.RootDigest(), index)
	}
	for _, blob := range layout.Blobs {
		if _, err := os.Stat(filepath.Join(skopeoDir, "blobs", "sha256", blob.Digest.Encoded())); err != nil {
			t.Errorf("skopeo copy lacks blob %s (%s)", blob.Digest, blob.MediaType)
		}
	}

	// A second push of the same image uploads no blob: crane finds each one with HEAD.
	uploadsBefore, err := registry.requestCount("upload_start", "POST")
	if err != nil {
		t.Fatal(err)
	}
	testpeer.Crane(t, "push", layout.Dir, registry.host()+"/clients/app:v2")
	uploadsAfter, err := registry.requestCount("upload_start", "POST")
	if err != nil {
		t.Fatal(err)
	}
	if uploadsAfter != uploadsBefore {
		t.Errorf("second push started %v uploads, want 0", uploadsAfter-uploadsBefore)
	}
}

// regctl runs the pinned regctl with a configuration that sends blobs over 1 MiB in chunks to
// host (regctl v0.11.7 uploads every blob in one PUT by default) and returns its stdout.
func regctl(t *testing.T, host string, args ...string) string {
	t.Helper()
	configPath := filepath.Join(t.TempDir(), "regctl.json")
	config := fmt.Sprintf(`{"hosts":{%q:{"tls":"disabled","blobMax":1048576,"blobChunk":1048576}}}`, host)
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(testpeer.Tool(t, "regctl"), args...)
	cmd.Env = append(os.Environ(), "REGCTL_CONFIG="+configPath)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("regctl %s failed: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// TestRegctlChunkedPushAndPull copies a layout with a 12 MiB layer into img registry with
// regctl in 1 MiB chunks, then copies it back out.
func TestRegctlChunkedPushAndPull(t *testing.T) {
	if testing.Short() {
		t.Skip("starts img registry and runs regctl")
	}
	registry := startImgRegistry(t, t.TempDir(), "--chunk-min-length", "1048576")
	layout := testpeer.WriteLayout(t, filepath.Join(t.TempDir(), "layout"), testpeer.LayoutSpec{
		Layers:    []int64{12 << 20, 1000},
		RawLayers: true,
		Tags:      []string{"v1"},
	})
	ref := registry.host() + "/chunked/app:v1"

	regctl(t, registry.host(), "image", "copy", "ocidir://"+layout.Dir+":v1", ref)

	patches, err := registry.requestCount("upload", "PATCH")
	if err != nil {
		t.Fatal(err)
	}
	if patches < 12 {
		t.Errorf("registry saw %v chunk PATCH requests, want at least 12 for a 12 MiB layer in 1 MiB chunks", patches)
	}
	if got := regctl(t, registry.host(), "image", "digest", ref); got != layout.RootDigest().String() {
		t.Errorf("regctl image digest = %s, want %s", got, layout.RootDigest())
	}
	out := filepath.Join(t.TempDir(), "copy")
	regctl(t, registry.host(), "image", "copy", ref, "ocidir://"+out+":v1")
	for _, blob := range layout.Blobs {
		content, err := os.ReadFile(filepath.Join(out, "blobs", "sha256", blob.Digest.Encoded()))
		if err != nil {
			t.Errorf("regctl copy lacks blob %s: %v", blob.Digest, err)
			continue
		}
		if int64(len(content)) != blob.Size {
			t.Errorf("blob %s has %d bytes, want %d", blob.Digest, len(content), blob.Size)
		}
	}
}
