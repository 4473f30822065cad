package reapi

import (
	"context"
	"fmt"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// FindMissing returns the digests in digests that the cache does not have, each once, in
// the order given. Requests are split so that none exceeds the gRPC message size that
// servers accept by default. The empty blob is never missing, since REAPI servers must
// always report it present.
func (c *Client) FindMissing(ctx context.Context, digests []Digest) ([]Digest, error) {
	seen := make(map[Digest]bool, len(digests))
	var unique []Digest
	for _, d := range digests {
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("remote cache %s: FindMissingBlobs: %w", c.endpoint, err)
		}
		if seen[d] || d.Size == 0 {
			continue
		}
		seen[d] = true
		unique = append(unique, d)
	}

	missing := make(map[Digest]bool)
	for _, batch := range c.findMissingBatches(unique) {
		found, err := c.findMissingBatch(ctx, batch)
		if err != nil {
			return nil, err
		}
		for _, d := range found {
			missing[d] = true
		}
	}

	var result []Digest
	for _, d := range unique {
		if missing[d] {
			result = append(result, d)
		}
	}
	return result, nil
}

// findMissingBatches splits digests into requests of at most maxMessageBytes each.
func (c *Client) findMissingBatches(digests []Digest) [][]*repb.Digest {
	base := proto.Size(&repb.FindMissingBlobsRequest{InstanceName: c.instance})

	var batches [][]*repb.Digest
	var batch []*repb.Digest
	size := base
	for _, d := range digests {
		p := d.proto()
		// Each digest is a length-delimited field 2 of the request: one tag byte, the length
		// varint and the digest message.
		entry := 1 + protowire.SizeBytes(proto.Size(p))
		if len(batch) > 0 && size+entry > maxMessageBytes {
			batches = append(batches, batch)
			batch, size = nil, base
		}
		batch = append(batch, p)
		size += entry
	}
	if len(batch) > 0 {
		batches = append(batches, batch)
	}
	return batches
}

func (c *Client) findMissingBatch(ctx context.Context, batch []*repb.Digest) ([]Digest, error) {
	var resp *repb.FindMissingBlobsResponse
	err := c.retry(ctx, "FindMissingBlobs", []any{"digests", len(batch)}, func(ctx context.Context) error {
		var err error
		resp, err = c.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{
			InstanceName:   c.instance,
			BlobDigests:    batch,
			DigestFunction: repb.DigestFunction_SHA256,
		})
		return err
	})
	if err != nil {
		return nil, c.rpcError(fmt.Sprintf("FindMissingBlobs for %d digests", len(batch)), err)
	}

	missing := make([]Digest, 0, len(resp.GetMissingBlobDigests()))
	for _, p := range resp.GetMissingBlobDigests() {
		missing = append(missing, digestFromProto(p))
	}
	return missing, nil
}

// batchRead reads one small blob with BatchReadBlobs and checks its digest.
func (c *Client) batchRead(ctx context.Context, d Digest) ([]byte, error) {
	var data []byte
	err := c.retry(ctx, "BatchReadBlobs", []any{"digest", d.String()}, func(ctx context.Context) error {
		resp, err := c.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{
			InstanceName:   c.instance,
			Digests:        []*repb.Digest{d.proto()},
			DigestFunction: repb.DigestFunction_SHA256,
		})
		if err != nil {
			return err
		}
		return blobStatus(resp.GetResponses(), d, func(r *repb.BatchReadBlobsResponse_Response) (*repb.Digest, int32, string) {
			data = r.GetData()
			return r.GetDigest(), r.GetStatus().GetCode(), r.GetStatus().GetMessage()
		})
	})
	if err != nil {
		return nil, c.blobError("BatchReadBlobs", d, err)
	}

	if got := DigestOf(data); got != d {
		return nil, fmt.Errorf("remote cache %s: blob %s: BatchReadBlobs returned bytes with digest %s; the cache entry is corrupt", c.endpoint, d, got)
	}
	return data, nil
}

// batchUpdate uploads one small blob with BatchUpdateBlobs.
func (c *Client) batchUpdate(ctx context.Context, d Digest, data []byte) error {
	err := c.retry(ctx, "BatchUpdateBlobs", []any{"digest", d.String()}, func(ctx context.Context) error {
		resp, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{
			InstanceName:   c.instance,
			Requests:       []*repb.BatchUpdateBlobsRequest_Request{{Digest: d.proto(), Data: data}},
			DigestFunction: repb.DigestFunction_SHA256,
		})
		if err != nil {
			return err
		}
		return blobStatus(resp.GetResponses(), d, func(r *repb.BatchUpdateBlobsResponse_Response) (*repb.Digest, int32, string) {
			return r.GetDigest(), r.GetStatus().GetCode(), r.GetStatus().GetMessage()
		})
	})
	if err != nil {
		return c.blobError("BatchUpdateBlobs", d, err)
	}
	return nil
}

// blobStatus finds d's entry among a batch call's responses and returns its status as an error.
func blobStatus[R any](responses []R, d Digest, fields func(R) (*repb.Digest, int32, string)) error {
	for _, r := range responses {
		digest, code, message := fields(r)
		if digestFromProto(digest) != d {
			continue
		}
		if codes.Code(code) == codes.OK {
			return nil
		}
		return statusError(codes.Code(code), message)
	}
	return statusError(codes.Internal, "the response has no entry for the requested blob")
}
