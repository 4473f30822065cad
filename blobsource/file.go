package blobsource

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Files serves blobs from local files, keyed by digest: the files of a push request
// or of an OCI layout. A descriptor with inline data is served from that data.
type Files map[digest.Digest]string

// Open returns the file itself, positioned at offset, so the HTTP client can hand it
// to sendfile(2): the push engine recognises *os.File bodies.
func (f Files) Open(_ context.Context, desc ocispec.Descriptor, offset int64) (io.ReadCloser, error) {
	if len(desc.Data) > 0 && int64(len(desc.Data)) == desc.Size {
		return io.NopCloser(bytes.NewReader(desc.Data[offset:])), nil
	}
	path, ok := f[desc.Digest]
	if !ok {
		return nil, ErrNotFound
	}
	file, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	info, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	if info.Size() != desc.Size {
		file.Close()
		return nil, fmt.Errorf("blob %s: local file %s has %d bytes but the descriptor gives %d; rebuild the image or fix the push request", desc.Digest, path, info.Size(), desc.Size)
	}
	if _, err := file.Seek(offset, io.SeekStart); err != nil {
		file.Close()
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	return file, nil
}

// Has reports whether desc's bytes are local.
func (f Files) Has(desc ocispec.Descriptor) bool {
	_, ok := f[desc.Digest]
	return ok || (len(desc.Data) > 0 && int64(len(desc.Data)) == desc.Size)
}

// Describe implements Source.
func (f Files) Describe(desc ocispec.Descriptor) string {
	if path, ok := f[desc.Digest]; ok {
		return "local file " + path
	}
	return "inline data"
}

// Check reports whether desc's local file exists and has the descriptor's size, without
// reading it. Inline data and blobs without a file pass.
func (f Files) Check(desc ocispec.Descriptor) error {
	path, ok := f[desc.Digest]
	if !ok || (len(desc.Data) > 0 && int64(len(desc.Data)) == desc.Size) {
		return nil
	}
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("local file: %w", err)
	}
	if info.Size() != desc.Size {
		return fmt.Errorf("local file %s has %d bytes but the descriptor gives %d", path, info.Size(), desc.Size)
	}
	return nil
}

// VerifyFile hashes the local file of desc and compares it with the descriptor,
// returning an error that names the file when they differ.
func (f Files) VerifyFile(desc ocispec.Descriptor) error {
	path, ok := f[desc.Digest]
	if !ok {
		return nil
	}
	file, err := os.Open(path)
	if err != nil {
		return err
	}
	defer file.Close()
	verifier := desc.Digest.Algorithm().Hash()
	n, err := io.Copy(verifier, file)
	if err != nil {
		return fmt.Errorf("reading local file %s: %w", path, err)
	}
	actual := digest.NewDigest(desc.Digest.Algorithm(), verifier)
	if n != desc.Size || actual != desc.Digest {
		return fmt.Errorf("local file %s has digest %s and %d bytes, but the image expects %s with %d bytes; rebuild the image or fix the push request", path, actual, n, desc.Digest, desc.Size)
	}
	return nil
}
