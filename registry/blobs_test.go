package registry_test

import (
	"net/http"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestBlobRangeRequests(t *testing.T) {
	reg := startRegistry(t, 0)
	content := []byte("0123456789")
	dgst := reg.pushBlob(t, "app", content)

	cases := []struct {
		rangeHeader  string
		status       int
		body         string
		contentRange string
	}{
		{"bytes=2-5", http.StatusPartialContent, "2345", "bytes 2-5/10"},
		{"bytes=7-", http.StatusPartialContent, "789", "bytes 7-9/10"},
		{"bytes=-3", http.StatusPartialContent, "789", "bytes 7-9/10"},
		{"bytes=8-100", http.StatusPartialContent, "89", "bytes 8-9/10"},
		{"bytes=5-2", http.StatusRequestedRangeNotSatisfiable, "", "bytes */10"},
		{"bytes=10-12", http.StatusRequestedRangeNotSatisfiable, "", "bytes */10"},
		{"", http.StatusOK, "0123456789", ""},
	}
	for _, tc := range cases {
		t.Run(tc.rangeHeader, func(t *testing.T) {
			resp := reg.do(t, http.MethodGet, "/v2/app/blobs/"+dgst.String(), nil, "Range", tc.rangeHeader)
			expectStatus(t, resp, tc.status)
			if got := resp.Header.Get("Content-Range"); got != tc.contentRange {
				t.Errorf("Content-Range = %q, want %q", got, tc.contentRange)
			}
			if tc.status == http.StatusRequestedRangeNotSatisfiable {
				return
			}
			if body := readBody(t, resp); string(body) != tc.body {
				t.Errorf("body = %q, want %q", body, tc.body)
			}
		})
	}
}

func TestBlobHeadReportsSize(t *testing.T) {
	reg := startRegistry(t, 0)
	dgst := reg.pushBlob(t, "app", []byte("twelve bytes"))

	resp := reg.do(t, http.MethodHead, "/v2/app/blobs/"+dgst.String(), nil)
	expectStatus(t, resp, http.StatusOK)
	if resp.ContentLength != 12 {
		t.Errorf("Content-Length = %d, want 12", resp.ContentLength)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != dgst.String() {
		t.Errorf("Docker-Content-Digest = %q, want %s", got, dgst)
	}
}

func TestBlobUnknownAndInvalid(t *testing.T) {
	reg := startRegistry(t, 0)

	resp := reg.do(t, http.MethodGet, "/v2/app/blobs/"+digest.FromString("absent").String(), nil)
	expectErrorCode(t, resp, http.StatusNotFound, "BLOB_UNKNOWN")

	resp = reg.do(t, http.MethodGet, "/v2/app/blobs/sha256:tooshort", nil)
	expectErrorCode(t, resp, http.StatusBadRequest, "DIGEST_INVALID")

	resp = reg.do(t, http.MethodGet, "/v2/App/blobs/"+digest.FromString("absent").String(), nil)
	expectErrorCode(t, resp, http.StatusBadRequest, "NAME_INVALID")
}

func TestBlobDelete(t *testing.T) {
	reg := startRegistry(t, 0)
	dgst := reg.pushBlob(t, "app", []byte("short-lived"))

	resp := reg.do(t, http.MethodDelete, "/v2/app/blobs/"+dgst.String(), nil)
	expectStatus(t, resp, http.StatusAccepted)
	resp = reg.do(t, http.MethodHead, "/v2/app/blobs/"+dgst.String(), nil)
	expectStatus(t, resp, http.StatusNotFound)
	resp = reg.do(t, http.MethodDelete, "/v2/app/blobs/"+dgst.String(), nil)
	expectErrorCode(t, resp, http.StatusNotFound, "BLOB_UNKNOWN")
}

// TestBlobDeleteKeepsOtherRepositories checks that deleting a blob from one repository leaves
// it in another that uses it, and that a manifest or a new upload links it again.
func TestBlobDeleteKeepsOtherRepositories(t *testing.T) {
	reg := startRegistry(t, 0)
	manifest := reg.pushImage(t, "team/one", "shared layer")
	reg.pushImage(t, "team/two", "shared layer")
	layer := digest.FromString("shared layer")

	resp := reg.do(t, http.MethodDelete, "/v2/team/one/blobs/"+layer.String(), nil)
	expectStatus(t, resp, http.StatusAccepted)
	resp = reg.do(t, http.MethodGet, "/v2/team/one/blobs/"+layer.String(), nil)
	expectErrorCode(t, resp, http.StatusNotFound, "BLOB_UNKNOWN")
	resp = reg.do(t, http.MethodGet, "/v2/team/two/blobs/"+layer.String(), nil)
	expectStatus(t, resp, http.StatusOK)

	// A mount from the repository that deleted the blob finds nothing to mount.
	resp = reg.do(t, http.MethodPost, "/v2/team/three/blobs/uploads/?mount="+layer.String()+"&from=team/one", nil)
	expectStatus(t, resp, http.StatusAccepted)
	resp = reg.do(t, http.MethodPost, "/v2/team/three/blobs/uploads/?mount="+layer.String()+"&from=team/two", nil)
	expectStatus(t, resp, http.StatusCreated)
	resp = reg.do(t, http.MethodHead, "/v2/team/three/blobs/"+layer.String(), nil)
	expectStatus(t, resp, http.StatusOK)

	resp = reg.do(t, http.MethodPut, "/v2/team/one/manifests/again", manifest, "Content-Type", "application/vnd.oci.image.manifest.v1+json")
	expectStatus(t, resp, http.StatusCreated)
	resp = reg.do(t, http.MethodHead, "/v2/team/one/blobs/"+layer.String(), nil)
	expectStatus(t, resp, http.StatusOK)

	resp = reg.do(t, http.MethodDelete, "/v2/team/one/blobs/"+layer.String(), nil)
	expectStatus(t, resp, http.StatusAccepted)
	reg.pushBlob(t, "team/one", []byte("shared layer"))
	resp = reg.do(t, http.MethodHead, "/v2/team/one/blobs/"+layer.String(), nil)
	expectStatus(t, resp, http.StatusOK)
}

func TestRouteNestedRepositoryName(t *testing.T) {
	reg := startRegistry(t, 0)
	dgst := reg.pushBlob(t, "org/team/blobs/app", []byte("nested"))

	resp := reg.do(t, http.MethodHead, "/v2/org/team/blobs/app/blobs/"+dgst.String(), nil)
	expectStatus(t, resp, http.StatusOK)
}

func TestRouteUnsupportedMethod(t *testing.T) {
	reg := startRegistry(t, 0)
	resp := reg.do(t, http.MethodPost, "/v2/app/tags/list", nil)
	expectErrorCode(t, resp, http.StatusMethodNotAllowed, "UNSUPPORTED")
}
