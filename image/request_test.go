package image

import (
	"bytes"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const (
	configDigest   = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	layerDigest    = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	manifestDigest = "sha256:3333333333333333333333333333333333333333333333333333333333333333"
	indexDigest    = "sha256:4444444444444444444444444444444444444444444444444444444444444444"
)

const validRequest = `{
  "version": 1,
  "strategy": "lazy",
  "root": {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "` + indexDigest + `", "size": 300},
  "manifests": [
    {"descriptor": {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "` + indexDigest + `", "size": 300},
     "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "` + manifestDigest + `", "size": 400,
                    "platform": {"architecture": "amd64", "os": "linux"}}]},
    {"descriptor": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "` + manifestDigest + `", "size": 400},
     "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "` + configDigest + `", "size": 0},
     "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "` + layerDigest + `", "size": 1234}]}
  ],
  "files": {"` + manifestDigest + `": "app/manifest.json", "` + configDigest + `": "/abs/config.json"},
  "destinations": [{"registry": "localhost:5000", "repository": "team/app", "tags": ["latest", "v1"]}]
}`

func TestDecodeRequestValid(t *testing.T) {
	req, err := DecodeRequest(strings.NewReader(validRequest), "/base")
	if err != nil {
		t.Fatalf("DecodeRequest: %v", err)
	}
	if req.Strategy != StrategyLazy {
		t.Errorf("strategy = %q", req.Strategy)
	}
	if got := req.Files[manifestDigest]; got != "/base/app/manifest.json" {
		t.Errorf("relative file resolved to %q, want /base/app/manifest.json", got)
	}
	if got := req.Files[configDigest]; got != "/abs/config.json" {
		t.Errorf("absolute file became %q", got)
	}
	order, err := req.Image.PushOrder()
	if err != nil {
		t.Fatal(err)
	}
	if len(order) != 2 || order[0].Descriptor.Digest != manifestDigest || order[1].Descriptor.Digest != indexDigest {
		t.Errorf("push order = %v, want the manifest before its index", order)
	}
	blobs, _ := req.Image.Blobs()
	if len(blobs) != 2 || blobs[0].Digest != configDigest || blobs[0].Size != 0 {
		t.Errorf("blobs = %v, want the 0-byte config then the layer", blobs)
	}
}

func TestDecodeRequestRoundTrip(t *testing.T) {
	req, err := DecodeRequest(strings.NewReader(validRequest), "/base")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := req.Encode(&buf, "/base"); err != nil {
		t.Fatal(err)
	}
	again, err := DecodeRequest(&buf, "/base")
	if err != nil {
		t.Fatalf("decoding the encoded request: %v\n%s", err, buf.String())
	}
	if again.Files[manifestDigest] != req.Files[manifestDigest] || len(again.Image.Manifests) != 2 {
		t.Errorf("round trip changed the request")
	}
}

func TestDecodeRequestErrorsNameTheField(t *testing.T) {
	cases := []struct {
		name, old, new, want string
	}{
		{"unknown top-level field", `"version": 1,`, `"version": 1, "tgas": [],`, `unknown field "tgas"`},
		{"unknown descriptor field", `"size": 1234}`, `"size": 1234, "sise": 1}`, `unknown field "sise"`},
		{"missing version", `"version": 1,`, ``, `"version"`},
		{"newer version", `"version": 1,`, `"version": 2,`, `update img`},
		{"bad strategy", `"strategy": "lazy"`, `"strategy": "lasy"`, `unknown strategy "lasy"`},
		{"missing size", `"digest": "` + layerDigest + `", "size": 1234`, `"digest": "` + layerDigest + `"`, `"manifests[1].layers[0].size"`},
		{"negative size", `"size": 1234`, `"size": -1`, `"manifests[1].layers[0].size" is -1`},
		{"bad digest", layerDigest, "sha256:xyz", `"manifests[1].layers[0].digest"`},
		{"missing config", `"config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "` + configDigest + `", "size": 0},`, ``, `"manifests[1].config"`},
		{"dangling child", `"digest": "` + manifestDigest + `", "size": 400},
     "config"`, `"digest": "sha256:5555555555555555555555555555555555555555555555555555555555555555", "size": 400},
     "config"`, `referenced but not described`},
		{"bad repository", `"team/app"`, `"Team/App"`, `invalid repository "Team/App"`},
		{"bad tag", `"latest", "v1"`, `"latest", "-v1"`, `invalid tag "-v1"`},
		{"empty file path", `"app/manifest.json"`, `""`, `empty path`},
		{"missing registry", `"registry": "localhost:5000", `, ``, `"destinations[0]": missing required field "registry"`},
		{"trailing value", "\n}", "\n} {}", `more than one value`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			input := strings.Replace(validRequest, tc.old, tc.new, 1)
			if input == validRequest {
				t.Fatalf("test case does not change the request: %q not found", tc.old)
			}
			_, err := DecodeRequest(strings.NewReader(input), "/base")
			if err == nil {
				t.Fatalf("DecodeRequest accepted the request")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestParseDestination(t *testing.T) {
	cases := []struct {
		ref        string
		registry   string
		repository string
		tags       []string
		wantErr    string
	}{
		{ref: "localhost:5000/app:v1", registry: "localhost:5000", repository: "app", tags: []string{"v1"}},
		{ref: "registry.example.com/team/app", registry: "registry.example.com", repository: "team/app"},
		{ref: "app:v1", wantErr: "registry/repository"},
		{ref: "localhost:5000/app@sha256:abc", wantErr: "not a digest"},
		{ref: "localhost:5000/App", wantErr: "invalid repository"},
	}
	for _, tc := range cases {
		dest, err := ParseDestination(tc.ref)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseDestination(%q) error = %v, want %q", tc.ref, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseDestination(%q): %v", tc.ref, err)
			continue
		}
		if dest.Registry != tc.registry || dest.Repository != tc.repository || strings.Join(dest.Tags, ",") != strings.Join(tc.tags, ",") {
			t.Errorf("ParseDestination(%q) = %+v", tc.ref, dest)
		}
	}
}

func TestParseManifestRejectsUnknownMediaType(t *testing.T) {
	desc := ocispec.Descriptor{MediaType: "application/json", Digest: digest.FromString("x"), Size: 1}
	if _, err := ParseManifest(desc, []byte(`{}`)); err == nil || !strings.Contains(err.Error(), "application/json") {
		t.Errorf("err = %v, want one naming the media type", err)
	}
}
