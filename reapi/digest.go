package reapi

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

// Digest identifies a CAS blob by the SHA-256 of its bytes and their length.
type Digest struct {
	Hash string // lowercase hex SHA-256, without a "sha256:" prefix
	Size int64  // in bytes
}

// emptyHash is the SHA-256 of no bytes. REAPI servers treat the empty blob as always present.
const emptyHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// DigestOf returns the digest of data.
func DigestOf(data []byte) Digest {
	sum := sha256.Sum256(data)
	return Digest{Hash: hex.EncodeToString(sum[:]), Size: int64(len(data))}
}

// String formats d as "sha256:<hash>/<size>", the form used in this package's errors.
func (d Digest) String() string {
	return fmt.Sprintf("sha256:%s/%d", d.Hash, d.Size)
}

// Validate checks that d is a well-formed SHA-256 digest.
func (d Digest) Validate() error {
	if len(d.Hash) != sha256.Size*2 {
		return fmt.Errorf("invalid digest %s: the hash must be 64 lowercase hex digits", d)
	}
	for _, c := range d.Hash {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("invalid digest %s: the hash must be 64 lowercase hex digits", d)
		}
	}
	if d.Size < 0 {
		return fmt.Errorf("invalid digest %s: negative size", d)
	}
	if d.Size == 0 && d.Hash != emptyHash {
		return fmt.Errorf("invalid digest %s: size 0 needs the hash of no bytes, %s", d, emptyHash)
	}
	return nil
}

func (d Digest) proto() *repb.Digest {
	return &repb.Digest{Hash: d.Hash, SizeBytes: d.Size}
}

func digestFromProto(p *repb.Digest) Digest {
	return Digest{Hash: p.GetHash(), Size: p.GetSizeBytes()}
}

// ParseBytestreamURI splits a URI of the form bytestream://host:port/instance/name/blobs/<hash>/<size>,
// which Bazel writes into build events for files in a remote cache, into a gRPC endpoint
// (grpc://host:port), the instance name (empty when the path starts with blobs/) and the digest.
// The URI does not say whether the cache uses TLS, so a caller that knows the cache's real
// endpoint (for example grpcs://) should use that instead of the returned one.
func ParseBytestreamURI(uri string) (endpoint string, instance string, d Digest, err error) {
	u, err := url.Parse(uri)
	if err != nil {
		return "", "", Digest{}, fmt.Errorf("invalid bytestream URI %q: %w", uri, err)
	}
	if u.Scheme != "bytestream" || u.Host == "" {
		return "", "", Digest{}, fmt.Errorf("invalid bytestream URI %q: want bytestream://host:port/[instance/]blobs/<hash>/<size>", uri)
	}

	segments := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	n := len(segments)
	if n < 3 || segments[n-3] != "blobs" {
		if n >= 4 && segments[n-4] == "blobs" {
			return "", "", Digest{}, fmt.Errorf("unsupported bytestream URI %q: digest function %q; only SHA-256 is supported", uri, segments[n-3])
		}
		return "", "", Digest{}, fmt.Errorf("invalid bytestream URI %q: the path must end in blobs/<hash>/<size>", uri)
	}

	size, err := strconv.ParseInt(segments[n-1], 10, 64)
	if err != nil {
		return "", "", Digest{}, fmt.Errorf("invalid bytestream URI %q: size %q is not a number", uri, segments[n-1])
	}
	d = Digest{Hash: segments[n-2], Size: size}
	if err := d.Validate(); err != nil {
		return "", "", Digest{}, fmt.Errorf("invalid bytestream URI %q: %w", uri, err)
	}

	instance = strings.Join(segments[:n-3], "/")
	return "grpc://" + u.Host, instance, d, nil
}

// readResourceName returns the ByteStream resource name for reading d, compressed with zstd
// when compressed is true.
func readResourceName(instance string, d Digest, compressed bool) string {
	name := fmt.Sprintf("blobs/%s/%d", d.Hash, d.Size)
	if compressed {
		name = "compressed-blobs/zstd/" + fmt.Sprintf("%s/%d", d.Hash, d.Size)
	}
	return withInstance(instance, name)
}

// writeResourceName returns the ByteStream resource name for uploading d under uploadID.
func writeResourceName(instance, uploadID string, d Digest) string {
	return withInstance(instance, fmt.Sprintf("uploads/%s/blobs/%s/%d", uploadID, d.Hash, d.Size))
}

func withInstance(instance, name string) string {
	if instance == "" {
		return name
	}
	return instance + "/" + name
}
