package image_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rulesimg/img/image"
	"github.com/rulesimg/img/internal/testpeer"
)

func TestReadLayoutKinds(t *testing.T) {
	cases := []struct {
		name      string
		spec      testpeer.LayoutSpec
		manifests int
		blobs     int
	}{
		{"single manifest", testpeer.LayoutSpec{Layers: []int64{10, 20}}, 1, 3},
		{"multi-platform index", testpeer.LayoutSpec{Layers: []int64{10}, MultiPlatform: true}, 3, 4},
		{"nested index", testpeer.LayoutSpec{Layers: []int64{10}, MultiPlatform: true, Nested: true}, 4, 4},
		{"docker", testpeer.LayoutSpec{Layers: []int64{10}, Docker: true}, 1, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			info := testpeer.WriteLayout(t, t.TempDir(), tc.spec)
			req, err := image.ReadLayout(info.Dir)
			if err != nil {
				t.Fatalf("ReadLayout: %v", err)
			}
			if req.Image.Root.Digest != info.RootDigest() {
				t.Errorf("root = %s, want %s", req.Image.Root.Digest, info.RootDigest())
			}
			if got := len(req.Image.Manifests); got != tc.manifests {
				t.Errorf("%d manifests, want %d", got, tc.manifests)
			}
			blobs, err := req.Image.Blobs()
			if err != nil {
				t.Fatal(err)
			}
			if len(blobs) != tc.blobs {
				t.Errorf("%d blobs, want %d", len(blobs), tc.blobs)
			}
			for _, blob := range blobs {
				if _, err := os.Stat(req.Files[blob.Digest]); err != nil {
					t.Errorf("blob %s has no local file: %v", blob.Digest, err)
				}
			}
		})
	}
}

func TestReadLayoutSeveralEntriesPushesIndexJSON(t *testing.T) {
	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{10}, Tags: []string{"a", "b"}})
	req, err := image.ReadLayout(info.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if !image.IsIndex(req.Image.Root.MediaType) {
		t.Errorf("root media type %q, want an index made of index.json", req.Image.Root.MediaType)
	}
	if got := req.Files[req.Image.Root.Digest]; got != filepath.Join(info.Dir, "index.json") {
		t.Errorf("root file = %q, want index.json", got)
	}
}

func TestReadLayoutErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := image.ReadLayout(dir); err == nil || !strings.Contains(err.Error(), "oci-layout") {
		t.Errorf("empty dir: err = %v, want one naming oci-layout", err)
	}

	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{10}})
	manifest := info.BlobPath(info.RootDigest())
	if err := os.WriteFile(manifest, []byte(`{"changed": true}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := image.ReadLayout(info.Dir); err == nil || !strings.Contains(err.Error(), info.RootDigest().String()) {
		t.Errorf("changed manifest: err = %v, want one naming its digest", err)
	}
}
