package registry_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/registry"
	"github.com/rulesimg/img/registry/metadata"
)

const ociManifest = "application/vnd.oci.image.manifest.v1+json"

func TestManifestPushPullByTagAndDigest(t *testing.T) {
	reg := startRegistry(t, 0)
	manifest := reg.pushImage(t, "app", "layer one")
	dgst := digest.FromBytes(manifest)

	resp := reg.do(t, http.MethodPut, "/v2/app/manifests/v1", manifest, "Content-Type", ociManifest)
	expectStatus(t, resp, http.StatusCreated)
	if got := resp.Header.Get("Docker-Content-Digest"); got != dgst.String() {
		t.Errorf("PUT Docker-Content-Digest = %q, want %s", got, dgst)
	}

	for _, reference := range []string{"v1", dgst.String()} {
		resp = reg.do(t, http.MethodGet, "/v2/app/manifests/"+reference, nil)
		expectStatus(t, resp, http.StatusOK)
		if got := resp.Header.Get("Content-Type"); got != ociManifest {
			t.Errorf("GET %s Content-Type = %q, want %s", reference, got, ociManifest)
		}
		if got := resp.Header.Get("Docker-Content-Digest"); got != dgst.String() {
			t.Errorf("GET %s Docker-Content-Digest = %q, want %s", reference, got, dgst)
		}
		if body := readBody(t, resp); !bytes.Equal(body, manifest) {
			t.Errorf("GET %s body differs from the pushed manifest", reference)
		}
	}
}

func TestManifestPutRejectsMissingLayer(t *testing.T) {
	reg := startRegistry(t, 0)
	manifest := reg.pushImage(t, "app", "layer")
	missing := digest.FromString("never pushed")
	broken := bytes.Replace(manifest, []byte(digest.FromString("layer").String()), []byte(missing.String()), 1)

	resp := reg.do(t, http.MethodPut, "/v2/app/manifests/v1", broken, "Content-Type", ociManifest)
	expectErrorCode(t, resp, http.StatusBadRequest, "MANIFEST_BLOB_UNKNOWN")
}

func TestManifestPutRejectsIndexWithUnknownChild(t *testing.T) {
	reg := startRegistry(t, 0)
	index := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"%s","digest":"%s","size":10}]}`,
		ociManifest, digest.FromString("child"))

	resp := reg.do(t, http.MethodPut, "/v2/app/manifests/multi", []byte(index), "Content-Type", "application/vnd.oci.image.index.v1+json")
	expectErrorCode(t, resp, http.StatusBadRequest, "MANIFEST_BLOB_UNKNOWN")
}

func TestManifestPutInvalid(t *testing.T) {
	reg := startRegistry(t, 0)
	manifest := reg.pushImage(t, "app", "layer")

	cases := []struct {
		name        string
		reference   string
		body        []byte
		contentType string
		status      int
		code        string
	}{
		{"not json", "v1", []byte("{not json"), ociManifest, http.StatusBadRequest, "MANIFEST_INVALID"},
		{"unknown media type", "v1", []byte(`{"schemaVersion":2}`), "text/plain", http.StatusBadRequest, "MANIFEST_INVALID"},
		{"media type mismatch", "v1", manifest, "application/vnd.oci.image.index.v1+json", http.StatusBadRequest, "MANIFEST_INVALID"},
		{"digest mismatch", digest.FromString("other").String(), manifest, ociManifest, http.StatusBadRequest, "DIGEST_INVALID"},
		{"invalid tag", "-bad", manifest, ociManifest, http.StatusBadRequest, "MANIFEST_INVALID"},
		{"too large", "v1", bytes.Repeat([]byte(" "), 4<<20+1), ociManifest, http.StatusRequestEntityTooLarge, "MANIFEST_INVALID"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := reg.do(t, http.MethodPut, "/v2/app/manifests/"+tc.reference, tc.body, "Content-Type", tc.contentType)
			expectErrorCode(t, resp, tc.status, tc.code)
		})
	}
}

func TestManifestDockerSchema2(t *testing.T) {
	reg := startRegistry(t, 0)
	config := reg.pushBlob(t, "app", []byte("{}"))
	manifest := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"%s","size":2},"layers":[]}`, config)

	resp := reg.do(t, http.MethodPut, "/v2/app/manifests/docker", []byte(manifest), "Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
	expectStatus(t, resp, http.StatusCreated)
	resp = reg.do(t, http.MethodHead, "/v2/app/manifests/docker", nil)
	if got := resp.Header.Get("Content-Type"); got != "application/vnd.docker.distribution.manifest.v2+json" {
		t.Errorf("Content-Type = %q, want the Docker schema 2 type", got)
	}
}

func TestManifestDeleteByTagAndDigest(t *testing.T) {
	reg := startRegistry(t, 0)
	manifest := reg.pushImage(t, "app", "layer")
	dgst := digest.FromBytes(manifest)
	reg.do(t, http.MethodPut, "/v2/app/manifests/v1", manifest, "Content-Type", ociManifest)
	reg.do(t, http.MethodPut, "/v2/app/manifests/v2", manifest, "Content-Type", ociManifest)

	resp := reg.do(t, http.MethodDelete, "/v2/app/manifests/v1", nil)
	expectStatus(t, resp, http.StatusAccepted)
	resp = reg.do(t, http.MethodGet, "/v2/app/manifests/v1", nil)
	expectErrorCode(t, resp, http.StatusNotFound, "MANIFEST_UNKNOWN")
	resp = reg.do(t, http.MethodGet, "/v2/app/manifests/v2", nil)
	expectStatus(t, resp, http.StatusOK)

	resp = reg.do(t, http.MethodDelete, "/v2/app/manifests/"+dgst.String(), nil)
	expectStatus(t, resp, http.StatusAccepted)
	resp = reg.do(t, http.MethodGet, "/v2/app/manifests/v2", nil)
	expectErrorCode(t, resp, http.StatusNotFound, "MANIFEST_UNKNOWN")
}

func TestManifestPutTagParameters(t *testing.T) {
	reg := startRegistry(t, 0)
	manifest := reg.pushImage(t, "app", "layer")
	dgst := digest.FromBytes(manifest)

	resp := reg.do(t, http.MethodPut, "/v2/app/manifests/"+dgst.String()+"?tag=a&tag=b", manifest, "Content-Type", ociManifest)
	expectStatus(t, resp, http.StatusCreated)
	if got := resp.Header.Get("OCI-Tag"); got != "a,b" {
		t.Errorf("OCI-Tag = %q, want a,b", got)
	}
	resp = reg.do(t, http.MethodGet, "/v2/app/manifests/b", nil)
	expectStatus(t, resp, http.StatusOK)
}

func TestReferrersWithArtifactTypeFilter(t *testing.T) {
	reg := startRegistry(t, 0)
	subject := reg.pushImage(t, "app", "subject layer")
	subjectDigest := digest.FromBytes(subject)
	reg.do(t, http.MethodPut, "/v2/app/manifests/v1", subject, "Content-Type", ociManifest)
	empty := reg.pushBlob(t, "app", []byte("{}"))

	for _, artifactType := range []string{"application/vnd.example.sbom", "application/vnd.example.signature"} {
		referrer := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"%s","artifactType":"%s",`+
			`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"%s","size":2},"layers":[],`+
			`"subject":{"mediaType":"%s","digest":"%s","size":%d}}`,
			ociManifest, artifactType, empty, ociManifest, subjectDigest, len(subject))
		resp := reg.do(t, http.MethodPut, "/v2/app/manifests/"+digest.FromString(referrer).String(), []byte(referrer), "Content-Type", ociManifest)
		expectStatus(t, resp, http.StatusCreated)
		if got := resp.Header.Get("OCI-Subject"); got != subjectDigest.String() {
			t.Errorf("OCI-Subject = %q, want %s", got, subjectDigest)
		}
	}

	resp := reg.do(t, http.MethodGet, "/v2/app/referrers/"+subjectDigest.String(), nil)
	expectStatus(t, resp, http.StatusOK)
	if body := string(readBody(t, resp)); strings.Count(body, `"artifactType"`) != 2 {
		t.Errorf("referrers list = %s, want two entries", body)
	}

	resp = reg.do(t, http.MethodGet, "/v2/app/referrers/"+subjectDigest.String()+"?artifactType=application/vnd.example.sbom", nil)
	expectStatus(t, resp, http.StatusOK)
	if got := resp.Header.Get("OCI-Filters-Applied"); got != "artifactType" {
		t.Errorf("OCI-Filters-Applied = %q, want artifactType", got)
	}
	body := string(readBody(t, resp))
	if !strings.Contains(body, "sbom") || strings.Contains(body, "signature") {
		t.Errorf("filtered referrers list = %s, want only the sbom", body)
	}
}

func TestTagsListPagination(t *testing.T) {
	reg := startRegistry(t, 0)
	manifest := reg.pushImage(t, "app", "layer")
	for _, tag := range []string{"c", "a", "b"} {
		reg.do(t, http.MethodPut, "/v2/app/manifests/"+tag, manifest, "Content-Type", ociManifest)
	}

	resp := reg.do(t, http.MethodGet, "/v2/app/tags/list?n=2", nil)
	expectStatus(t, resp, http.StatusOK)
	if body := string(readBody(t, resp)); body != `{"name":"app","tags":["a","b"]}` {
		t.Errorf("first page = %s", body)
	}
	if got := resp.Header.Get("Link"); got != `</v2/app/tags/list?last=b&n=2>; rel="next"` {
		t.Errorf("Link = %q", got)
	}

	resp = reg.do(t, http.MethodGet, "/v2/app/tags/list?n=2&last=b", nil)
	if body := string(readBody(t, resp)); body != `{"name":"app","tags":["c"]}` {
		t.Errorf("second page = %s", body)
	}

	resp = reg.do(t, http.MethodGet, "/v2/unknown/tags/list", nil)
	expectErrorCode(t, resp, http.StatusNotFound, "NAME_UNKNOWN")
}

func TestMetricsCountRequestsPerRoute(t *testing.T) {
	reg := startRegistry(t, 0)
	manifest := reg.pushImage(t, "app", "layer")
	reg.do(t, http.MethodPut, "/v2/app/manifests/v1", manifest, "Content-Type", ociManifest)

	if got := reg.requestCount(t, "upload_start", "POST", "201"); got != 2 {
		t.Errorf("blob POST count = %v, want 2", got)
	}
	if got := reg.requestCount(t, "manifest", "PUT", "201"); got != 1 {
		t.Errorf("manifest PUT count = %v, want 1", got)
	}
}

func TestCatalogListsRepositories(t *testing.T) {
	reg := startRegistry(t, 0)
	for _, repo := range []string{"b/app", "a/app", "c"} {
		manifest := reg.pushImage(t, repo, "layer of "+repo)
		reg.do(t, http.MethodPut, "/v2/"+repo+"/manifests/v1", manifest, "Content-Type", ociManifest)
	}

	resp := reg.do(t, http.MethodGet, "/v2/_catalog?n=2", nil)
	expectStatus(t, resp, http.StatusOK)
	if body := string(readBody(t, resp)); body != `{"repositories":["a/app","b/app"]}` {
		t.Errorf("first page = %s", body)
	}
	resp = reg.do(t, http.MethodGet, "/v2/_catalog?last=b/app", nil)
	if body := string(readBody(t, resp)); body != `{"repositories":["c"]}` {
		t.Errorf("page after b/app = %s", body)
	}
}

// boltSource serves manifests from a second metadata store, standing in for an upstream
// registry read through.
type boltSource struct{ store *metadata.Bolt }

func (b boltSource) Manifest(ctx context.Context, repository, reference string) (metadata.Manifest, error) {
	dgst := digest.Digest(reference)
	if !strings.Contains(reference, ":") {
		var err error
		if dgst, err = b.store.ResolveTag(ctx, repository, reference); err != nil {
			return metadata.Manifest{}, err
		}
	}
	return b.store.Manifest(ctx, repository, dgst)
}

func TestManifestSourceServesMissingManifest(t *testing.T) {
	ctx := context.Background()
	upstream, err := metadata.OpenBolt(filepath.Join(t.TempDir(), "upstream.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer upstream.Close()
	content := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
	dgst := digest.FromBytes(content)
	upstream.PutManifest(ctx, "mirrored/app", metadata.Manifest{Digest: dgst, MediaType: "application/vnd.oci.image.index.v1+json", Content: content}, []string{"v1"})

	reg := startRegistryWith(t, func(opts *registry.Options) {
		opts.ManifestSources = []registry.ManifestSource{boltSource{upstream}}
	})

	for _, reference := range []string{"v1", dgst.String()} {
		resp := reg.do(t, http.MethodGet, "/v2/mirrored/app/manifests/"+reference, nil)
		expectStatus(t, resp, http.StatusOK)
		if got := resp.Header.Get("Docker-Content-Digest"); got != dgst.String() {
			t.Errorf("GET %s Docker-Content-Digest = %q, want %s", reference, got, dgst)
		}
		if body := readBody(t, resp); !bytes.Equal(body, content) {
			t.Errorf("GET %s body = %s, want the upstream manifest", reference, body)
		}
	}
	resp := reg.do(t, http.MethodGet, "/v2/mirrored/app/manifests/v2", nil)
	expectErrorCode(t, resp, http.StatusNotFound, "MANIFEST_UNKNOWN")
}
