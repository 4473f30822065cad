// Package image is the image model that every push strategy shares: descriptors, the
// graph of manifests and indexes to push, the OCI image layout reader and the push
// request, the document that the Bazel rules write and `img push` reads.
package image

import ocispec "github.com/opencontainers/image-spec/specs-go/v1"

// Media types of Docker's v2 schema 2 format. OCI's are in the image-spec module.
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerConfig       = "application/vnd.docker.container.image.v1+json"
	MediaTypeDockerLayer        = "application/vnd.docker.image.rootfs.diff.tar.gzip"
)

// IsIndex reports whether mediaType names a manifest list: an OCI image index or a
// Docker manifest list.
func IsIndex(mediaType string) bool {
	return mediaType == ocispec.MediaTypeImageIndex || mediaType == MediaTypeDockerManifestList
}

// IsManifest reports whether mediaType names a single-platform image manifest.
func IsManifest(mediaType string) bool {
	return mediaType == ocispec.MediaTypeImageManifest || mediaType == MediaTypeDockerManifest
}
