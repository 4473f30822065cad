package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxManifestBytes bounds how much of a manifest is read into memory. Registries
// commonly reject manifests over 4 MiB, so anything larger is a broken input.
const maxManifestBytes = 4 << 20

// ReadLayout reads an OCI image layout directory into a push request with every blob
// local. When index.json lists one descriptor, that manifest or index is the root;
// when it lists several, index.json itself is pushed as the root index.
func ReadLayout(dir string) (*Request, error) {
	if err := checkLayoutVersion(dir); err != nil {
		return nil, err
	}

	indexPath := filepath.Join(dir, ocispec.ImageIndexFile)
	indexBytes, err := readLimited(indexPath)
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	var index ocispec.Index
	if err := json.Unmarshal(indexBytes, &index); err != nil {
		return nil, fmt.Errorf("OCI layout %s: %s is not valid JSON: %w", dir, indexPath, err)
	}
	if len(index.Manifests) == 0 {
		return nil, fmt.Errorf("OCI layout %s: %s lists no manifests", dir, indexPath)
	}

	req := &Request{
		Image: &Image{Manifests: map[digest.Digest]*Manifest{}},
		Files: map[digest.Digest]string{},
	}
	if len(index.Manifests) == 1 {
		req.Image.Root = index.Manifests[0]
	} else {
		root, err := layoutIndexAsRoot(indexPath, indexBytes, index)
		if err != nil {
			return nil, err
		}
		req.Image.Root = root
		req.Image.Manifests[root.Digest] = &Manifest{Descriptor: root, Children: index.Manifests}
		req.Files[root.Digest] = indexPath
	}
	// Annotations on index.json's entries describe the layout, not the image: a
	// registry would store a different manifest digest than the one the layout names.
	req.Image.Root.Annotations = nil

	if err := readLayoutGraph(dir, req, index.Manifests); err != nil {
		return nil, err
	}
	return req, nil
}

func checkLayoutVersion(dir string) error {
	path := filepath.Join(dir, ocispec.ImageLayoutFile)
	body, err := readLimited(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s is not an OCI image layout: %s is missing", dir, ocispec.ImageLayoutFile)
	}
	if err != nil {
		return err
	}
	var layout ocispec.ImageLayout
	if err := json.Unmarshal(body, &layout); err != nil {
		return fmt.Errorf("%s is not valid JSON: %w", path, err)
	}
	if layout.Version != ocispec.ImageLayoutVersion {
		return fmt.Errorf("%s has imageLayoutVersion %q; img reads version %q", path, layout.Version, ocispec.ImageLayoutVersion)
	}
	return nil
}

func layoutIndexAsRoot(indexPath string, indexBytes []byte, index ocispec.Index) (ocispec.Descriptor, error) {
	mediaType := index.MediaType
	if mediaType == "" {
		mediaType = ocispec.MediaTypeImageIndex
	}
	if !IsIndex(mediaType) {
		return ocispec.Descriptor{}, fmt.Errorf("%s has media type %q; expected an OCI image index", indexPath, mediaType)
	}
	return ocispec.Descriptor{
		MediaType: mediaType,
		Digest:    digest.FromBytes(indexBytes),
		Size:      int64(len(indexBytes)),
	}, nil
}

// readLayoutGraph reads every manifest reachable from roots, depth first, verifying each
// manifest's digest because its bytes decide what else gets pushed.
func readLayoutGraph(dir string, req *Request, roots []ocispec.Descriptor) error {
	pending := append([]ocispec.Descriptor(nil), roots...)
	for len(pending) > 0 {
		desc := pending[len(pending)-1]
		pending = pending[:len(pending)-1]
		if _, done := req.Image.Manifests[desc.Digest]; done {
			continue
		}

		path, err := LayoutBlobPath(dir, desc.Digest)
		if err != nil {
			return err
		}
		body, err := readLimited(path)
		if err != nil {
			return fmt.Errorf("OCI layout %s: manifest %s: %w", dir, desc.Digest, err)
		}
		if err := Verify(desc, body); err != nil {
			return fmt.Errorf("OCI layout %s: %w", dir, err)
		}
		m, err := ParseManifest(desc, body)
		if err != nil {
			return fmt.Errorf("OCI layout %s: %w", dir, err)
		}

		req.Image.Manifests[desc.Digest] = m
		req.Files[desc.Digest] = path
		for _, blob := range m.blobs() {
			blobPath, err := LayoutBlobPath(dir, blob.Digest)
			if err != nil {
				return err
			}
			req.Files[blob.Digest] = blobPath
		}
		pending = append(pending, m.Children...)
	}
	return nil
}

// LayoutBlobPath returns where an OCI layout keeps the blob with digest d.
func LayoutBlobPath(dir string, d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("invalid digest %q: %w", d, err)
	}
	return filepath.Join(dir, ocispec.ImageBlobsDir, d.Algorithm().String(), d.Encoded()), nil
}

// Verify checks that body has the size and digest that desc promises.
func Verify(desc ocispec.Descriptor, body []byte) error {
	if int64(len(body)) != desc.Size {
		return fmt.Errorf("blob %s has %d bytes, but its descriptor gives %d", desc.Digest, len(body), desc.Size)
	}
	if err := desc.Digest.Validate(); err != nil {
		return fmt.Errorf("invalid digest %q: %w", desc.Digest, err)
	}
	if actual := desc.Digest.Algorithm().FromBytes(body); actual != desc.Digest {
		return fmt.Errorf("blob %s has digest %s; the file does not match its descriptor", desc.Digest, actual)
	}
	return nil
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	body, err := io.ReadAll(io.LimitReader(f, maxManifestBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxManifestBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes, too large for a manifest", path, maxManifestBytes)
	}
	return body, nil
}
