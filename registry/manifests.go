package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/registry/blobstore"
	"github.com/rulesimg/img/registry/metadata"
)

// Manifest media types the registry accepts.
const (
	mediaTypeOCIManifest    = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeOCIIndex       = "application/vnd.oci.image.index.v1+json"
	mediaTypeOCIArtifact    = "application/vnd.oci.artifact.manifest.v1+json"
	mediaTypeDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// manifestKinds sorts the accepted media types by what their descriptors point at.
var manifestKinds = map[string]string{
	mediaTypeOCIManifest:    "image",
	mediaTypeDockerManifest: "image",
	mediaTypeOCIArtifact:    "artifact",
	mediaTypeOCIIndex:       "index",
	mediaTypeDockerList:     "index",
}

// descriptor is the part of an OCI descriptor that validation reads.
type descriptor struct {
	MediaType    string            `json:"mediaType"`
	Digest       digest.Digest     `json:"digest"`
	Size         int64             `json:"size"`
	URLs         []string          `json:"urls,omitempty"`
	Data         []byte            `json:"data,omitempty"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

// manifestFields covers image manifests, indexes, Docker schema 2 manifests and lists, and the
// artifact manifest of OCI 1.1 release candidates.
type manifestFields struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	ArtifactType  string            `json:"artifactType"`
	Config        *descriptor       `json:"config"`
	Layers        []descriptor      `json:"layers"`
	Blobs         []descriptor      `json:"blobs"`
	Manifests     []descriptor      `json:"manifests"`
	Subject       *descriptor       `json:"subject"`
	Annotations   map[string]string `json:"annotations"`
}

// resolveReference returns the digest a manifest reference (a digest or a tag) names.
func (s *Server) resolveReference(r *http.Request, name, reference string) (digest.Digest, error) {
	if strings.Contains(reference, ":") {
		dgst, err := parseDigest(reference)
		if err != nil {
			return "", err
		}
		return dgst, nil
	}
	if !tagPattern.MatchString(reference) {
		return "", newError(codeManifestInvalid, "invalid tag %q; tags match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}", reference)
	}
	dgst, err := s.metadata.ResolveTag(r.Context(), name, reference)
	if err != nil {
		return "", manifestError(err)
	}
	return dgst, nil
}

func manifestError(err error) error {
	if errors.Is(err, metadata.ErrManifestUnknown) {
		return wrapError(codeManifestUnknown, err)
	}
	return err
}

// getManifest serves GET and HEAD of a manifest by tag or digest, with the media type it was
// pushed with.
func (s *Server) getManifest(w http.ResponseWriter, r *http.Request, name, reference string) {
	manifest, err := s.findManifest(r, name, reference)
	if err != nil {
		// A malformed digest can never name a stored manifest.
		var api *apiError
		if errors.As(err, &api) && api.code == codeDigestInvalid {
			err = &apiError{code: codeManifestUnknown, detail: api.detail, cause: api.cause}
		}
		writeError(w, r, err)
		return
	}
	dgst := manifest.Digest
	requestInfoFrom(r).digest = dgst.String()

	header := w.Header()
	header.Set("Content-Type", manifest.MediaType)
	header.Set("Content-Length", strconv.Itoa(len(manifest.Content)))
	header.Set("Docker-Content-Digest", dgst.String())
	header.Set("Etag", `"`+dgst.String()+`"`)
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(manifest.Content)
	}
}

// findManifest returns the manifest a reference names from the metadata store, else from the
// first manifest source that has it.
func (s *Server) findManifest(r *http.Request, name, reference string) (metadata.Manifest, error) {
	dgst, err := s.resolveReference(r, name, reference)
	if err == nil {
		var manifest metadata.Manifest
		manifest, err = s.metadata.Manifest(r.Context(), name, dgst)
		if err == nil {
			return manifest, nil
		}
		err = manifestError(err)
	}
	var api *apiError
	if !errors.As(err, &api) || api.code != codeManifestUnknown {
		return metadata.Manifest{}, err
	}

	for _, source := range s.manifestSources {
		manifest, sourceErr := source.Manifest(r.Context(), name, reference)
		if errors.Is(sourceErr, metadata.ErrManifestUnknown) {
			continue
		}
		if sourceErr != nil {
			return metadata.Manifest{}, sourceErr
		}
		return manifest, nil
	}
	return metadata.Manifest{}, err
}

// putManifest validates and stores a manifest, tagging it when the reference is a tag or when
// ?tag= parameters are given.
func (s *Server) putManifest(w http.ResponseWriter, r *http.Request, name, reference string) {
	ctx := r.Context()
	content, err := io.ReadAll(io.LimitReader(r.Body, maxManifestSize+1))
	if err != nil {
		writeError(w, r, fmt.Errorf("read manifest body: %w", err))
		return
	}
	if len(content) > maxManifestSize {
		writeError(w, r, &apiError{code: codeManifestInvalid, status: http.StatusRequestEntityTooLarge,
			detail: fmt.Sprintf("manifest is larger than the %d-byte limit", maxManifestSize)})
		return
	}

	dgst, tags, err := manifestDigestAndTags(r, reference, content)
	if err != nil {
		writeError(w, r, err)
		return
	}
	requestInfoFrom(r).digest = dgst.String()

	mediaType, fields, err := parseManifest(r.Header.Get("Content-Type"), content)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if err := s.checkReferences(r, name, mediaType, fields); err != nil {
		writeError(w, r, err)
		return
	}

	manifest := metadata.Manifest{Digest: dgst, MediaType: mediaType, Content: content}
	if fields.Subject != nil {
		manifest.Subject = fields.Subject.Digest
		manifest.Referrer = referrerDescriptor(dgst, mediaType, int64(len(content)), fields)
	}
	if err := s.metadata.PutManifest(ctx, name, manifest, tags); err != nil {
		writeError(w, r, err)
		return
	}
	// A manifest that lists a blob deleted from this repository makes it visible again,
	// as pushing the blob would: the bytes never left the registry.
	if err := s.metadata.LinkBlobs(ctx, name, fields.blobDigests()...); err != nil {
		writeError(w, r, err)
		return
	}

	header := w.Header()
	header.Set("Location", "/v2/"+name+"/manifests/"+dgst.String())
	header.Set("Docker-Content-Digest", dgst.String())
	if fields.Subject != nil {
		header.Set("OCI-Subject", fields.Subject.Digest.String())
	}
	if len(tags) > 0 {
		header.Set("OCI-Tag", strings.Join(tags, ","))
	}
	header.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
}

// manifestDigestAndTags computes the manifest's digest (with the algorithm of a digest
// reference, else sha256) and collects the tags to set.
func manifestDigestAndTags(r *http.Request, reference string, content []byte) (digest.Digest, []string, error) {
	var tags []string
	var dgst digest.Digest

	if strings.Contains(reference, ":") {
		expected, err := parseDigest(reference)
		if err != nil {
			return "", nil, err
		}
		dgst = expected.Algorithm().FromBytes(content)
		if dgst != expected {
			return "", nil, newError(codeDigestInvalid, "manifest body has digest %s, not %s from the URL", dgst, expected)
		}
	} else {
		if !tagPattern.MatchString(reference) {
			return "", nil, newError(codeManifestInvalid, "invalid tag %q; tags match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}", reference)
		}
		dgst = digest.SHA256.FromBytes(content)
		tags = append(tags, reference)
	}

	for _, tag := range r.URL.Query()["tag"] {
		if !tagPattern.MatchString(tag) {
			return "", nil, newError(codeManifestInvalid, "invalid tag parameter %q; tags match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}", tag)
		}
		tags = append(tags, tag)
	}
	return dgst, tags, nil
}

// parseManifest checks that content is a manifest of a supported media type and returns that
// type. The Content-Type header and the manifest's mediaType field must agree when both are set.
func parseManifest(contentType string, content []byte) (string, manifestFields, error) {
	var fields manifestFields
	decoder := json.NewDecoder(bytes.NewReader(content))
	if err := decoder.Decode(&fields); err != nil {
		return "", fields, newError(codeManifestInvalid, "manifest is not valid JSON: %v", err)
	}
	if decoder.More() {
		return "", fields, newError(codeManifestInvalid, "manifest has data after its JSON object")
	}

	mediaType := ""
	if contentType != "" {
		parsed, _, err := mime.ParseMediaType(contentType)
		if err == nil {
			mediaType = parsed
		}
	}
	if _, ok := manifestKinds[mediaType]; !ok {
		mediaType = ""
	}
	switch {
	case mediaType == "" && fields.MediaType != "":
		mediaType = fields.MediaType
	case mediaType != "" && fields.MediaType != "" && mediaType != fields.MediaType:
		return "", fields, newError(codeManifestInvalid, "Content-Type %s does not match the manifest's mediaType %s", mediaType, fields.MediaType)
	case mediaType == "" && fields.Manifests != nil:
		mediaType = mediaTypeOCIIndex
	case mediaType == "" && fields.Config != nil:
		mediaType = mediaTypeOCIManifest
	}

	kind, ok := manifestKinds[mediaType]
	if !ok {
		return "", fields, newError(codeManifestInvalid, "unsupported manifest media type %q (Content-Type %q); push an OCI or Docker schema 2 manifest or index", mediaType, contentType)
	}
	if kind != "artifact" && fields.SchemaVersion != 2 {
		return "", fields, newError(codeManifestInvalid, "manifest schemaVersion is %d, want 2", fields.SchemaVersion)
	}
	if kind == "image" && fields.Config == nil {
		return "", fields, newError(codeManifestInvalid, "image manifest has no config descriptor")
	}

	for _, d := range allDescriptors(fields) {
		if err := validateDescriptor(d); err != nil {
			return "", fields, err
		}
	}
	return mediaType, fields, nil
}

func allDescriptors(fields manifestFields) []descriptor {
	var all []descriptor
	if fields.Config != nil {
		all = append(all, *fields.Config)
	}
	all = append(all, fields.Layers...)
	all = append(all, fields.Blobs...)
	all = append(all, fields.Manifests...)
	if fields.Subject != nil {
		all = append(all, *fields.Subject)
	}
	return all
}

func validateDescriptor(d descriptor) error {
	if err := blobstore.ValidateDigest(d.Digest); err != nil {
		return newError(codeManifestInvalid, "descriptor of media type %q: %v", d.MediaType, err)
	}
	if d.Size < 0 {
		return newError(codeManifestInvalid, "descriptor %s has negative size %d", d.Digest, d.Size)
	}
	if d.Data != nil {
		if int64(len(d.Data)) != d.Size || d.Digest.Algorithm().FromBytes(d.Data) != d.Digest {
			return newError(codeManifestInvalid, "descriptor %s: its data field does not match its digest and size", d.Digest)
		}
	}
	return nil
}

// checkReferences returns MANIFEST_BLOB_UNKNOWN when a config, layer or child manifest the
// manifest lists is not stored. Layers that clients fetch from elsewhere (with urls, or of a
// non-distributable media type) and the subject need not be present.
func (s *Server) checkReferences(r *http.Request, name, mediaType string, fields manifestFields) error {
	ctx := r.Context()

	if manifestKinds[mediaType] == "index" {
		for _, child := range fields.Manifests {
			if _, err := s.metadata.Manifest(ctx, name, child.Digest); err != nil {
				if errors.Is(err, metadata.ErrManifestUnknown) {
					return newError(codeManifestBlobUnknown, "index lists manifest %s, which repository %s does not hold; push it first", child.Digest, name)
				}
				return err
			}
		}
		return nil
	}

	for _, blob := range fields.blobs() {
		if len(blob.URLs) > 0 || strings.Contains(blob.MediaType, "nondistributable") || strings.Contains(blob.MediaType, "foreign") {
			continue
		}
		if _, err := s.blobs.Stat(ctx, blob.Digest); err != nil {
			if errors.Is(err, blobstore.ErrNotFound) {
				return newError(codeManifestBlobUnknown, "manifest lists blob %s (%s), which the registry does not hold; push it first", blob.Digest, blob.MediaType)
			}
			return err
		}
	}
	return nil
}

// referrerDescriptor builds the manifest's entry in its subject's referrers list. The artifact
// type is the manifest's artifactType, else its config's media type, as the spec defines.
func referrerDescriptor(dgst digest.Digest, mediaType string, size int64, fields manifestFields) *metadata.Descriptor {
	artifactType := fields.ArtifactType
	if artifactType == "" && fields.Config != nil {
		artifactType = fields.Config.MediaType
	}
	return &metadata.Descriptor{
		MediaType:    mediaType,
		Digest:       dgst,
		Size:         size,
		ArtifactType: artifactType,
		Annotations:  fields.Annotations,
	}
}

// deleteManifest removes a manifest by digest (with its tags), or only a tag.
func (s *Server) deleteManifest(w http.ResponseWriter, r *http.Request, name, reference string) {
	ctx := r.Context()
	var err error
	if strings.Contains(reference, ":") {
		var dgst digest.Digest
		dgst, err = parseDigest(reference)
		if err == nil {
			requestInfoFrom(r).digest = dgst.String()
			err = s.metadata.DeleteManifest(ctx, name, dgst)
		}
	} else {
		if !tagPattern.MatchString(reference) {
			writeError(w, r, newError(codeManifestInvalid, "invalid tag %q", reference))
			return
		}
		err = s.metadata.DeleteTag(ctx, name, reference)
	}
	if err != nil {
		writeError(w, r, manifestError(err))
		return
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
}

// blobs returns the config, layers and blobs a manifest lists.
func (f manifestFields) blobs() []descriptor {
	var blobs []descriptor
	if f.Config != nil {
		blobs = append(blobs, *f.Config)
	}
	blobs = append(blobs, f.Layers...)
	return append(blobs, f.Blobs...)
}

func (f manifestFields) blobDigests() []digest.Digest {
	var digests []digest.Digest
	for _, blob := range f.blobs() {
		digests = append(digests, blob.Digest)
	}
	return digests
}
