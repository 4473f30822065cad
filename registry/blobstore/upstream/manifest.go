package upstream

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/registry/blobstore"
	"github.com/rulesimg/img/registry/metadata"
)

// maxManifestSize is the largest manifest read from the upstream: 4 MiB, the minimum the
// distribution spec recommends registries accept, and the registry's own limit.
const maxManifestSize = 4 << 20

// acceptedManifestTypes are the manifest media types the registry serves, sent in Accept so
// the upstream does not convert a manifest to an older schema.
var acceptedManifestTypes = []string{
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.artifact.manifest.v1+json",
}

// Manifest fetches the manifest that reference (a tag or a digest) names in repository from the
// upstream. A manifest fetched by digest must hash to it; one fetched by tag must hash to the
// Docker-Content-Digest the upstream sends, when it sends one.
func (s *Store) Manifest(ctx context.Context, repository, reference string) (metadata.Manifest, error) {
	header := http.Header{"Accept": {strings.Join(acceptedManifestTypes, ", ")}}
	resp, err := s.do(ctx, http.MethodGet, repository, "/manifests/"+reference, header, true)
	if err != nil {
		return metadata.Manifest{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return metadata.Manifest{}, s.statusError(resp, "manifest", repository, reference)
	}

	content, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
	if err != nil {
		return metadata.Manifest{}, fmt.Errorf("read manifest %s of %s from upstream registry %s: %w", reference, repository, s.base.Host, err)
	}
	if len(content) > maxManifestSize {
		return metadata.Manifest{}, fmt.Errorf("manifest %s of %s in upstream registry %s is larger than the %d-byte limit", reference, repository, s.base.Host, maxManifestSize)
	}

	dgst, err := s.manifestDigest(resp, reference, content)
	if err != nil {
		return metadata.Manifest{}, fmt.Errorf("manifest %s of %s from upstream registry %s: %w", reference, repository, s.base.Host, err)
	}
	return metadata.Manifest{Digest: dgst, MediaType: manifestMediaType(resp.Header.Get("Content-Type"), content), Content: content}, nil
}

// manifestDigest returns the digest of content and checks it against the reference or the
// upstream's Docker-Content-Digest, so a corrupted manifest is never served under a digest.
func (s *Store) manifestDigest(resp *http.Response, reference string, content []byte) (digest.Digest, error) {
	expected := digest.Digest(reference)
	if !strings.Contains(reference, ":") {
		expected = digest.Digest(resp.Header.Get("Docker-Content-Digest"))
	}
	if expected == "" || blobstore.ValidateDigest(expected) != nil {
		return digest.SHA256.FromBytes(content), nil
	}
	actual := expected.Algorithm().FromBytes(content)
	if actual != expected {
		return "", fmt.Errorf("content hashes to %s, not %s", actual, expected)
	}
	return actual, nil
}

// manifestMediaType returns the Content-Type the upstream sent, or the manifest's mediaType
// field when the header is missing or generic.
func manifestMediaType(contentType string, content []byte) string {
	if parsed, _, err := mime.ParseMediaType(contentType); err == nil && parsed != "application/json" && parsed != "application/octet-stream" {
		return parsed
	}
	var fields struct {
		MediaType string `json:"mediaType"`
	}
	if json.Unmarshal(content, &fields) == nil && fields.MediaType != "" {
		return fields.MediaType
	}
	return "application/vnd.oci.image.manifest.v1+json"
}

// statusError turns an upstream response other than success into an error: 404 becomes
// blobstore.ErrNotFound (for a blob) or metadata.ErrManifestUnknown (for a manifest), so the
// client sees BLOB_UNKNOWN or MANIFEST_UNKNOWN. 401 and 403 report that the upstream rejected the
// registry's credentials, which the client cannot fix by logging in to this registry.
func (s *Store) statusError(resp *http.Response, kind, repository, reference string) error {
	body := ""
	if resp.Request.Method != http.MethodHead {
		snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		body = strings.TrimSpace(string(snippet))
	}
	switch resp.StatusCode {
	case http.StatusNotFound:
		missing := blobstore.ErrNotFound
		if kind == "manifest" {
			missing = metadata.ErrManifestUnknown
		}
		return fmt.Errorf("%s %s is not in repository %s of upstream registry %s: %w", kind, reference, repository, s.base.Host, missing)
	case http.StatusUnauthorized, http.StatusForbidden:
		s.forgetTransport(repository)
		return fmt.Errorf("upstream registry %s rejected our credentials for %s %s in repository %s (%s %s); check its entry in the docker config or the --credential-helper",
			s.base.Host, kind, reference, repository, resp.Status, body)
	case http.StatusTooManyRequests:
		return fmt.Errorf("upstream registry %s is rate limiting requests (%s) for %s %s in repository %s; retry later", s.base.Host, resp.Status, kind, reference, repository)
	default:
		return fmt.Errorf("upstream registry %s returned %s for %s %s in repository %s: %s", s.base.Host, resp.Status, kind, reference, repository, body)
	}
}

// forgetTransport drops the transport of repository, so the next request starts a new
// handshake, for example after the docker config changed.
func (s *Store) forgetTransport(repository string) {
	s.mu.Lock()
	delete(s.transports, repository)
	s.mu.Unlock()
}
