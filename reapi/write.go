package reapi

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"

	"google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Write uploads d's bytes, read from r, to the cache.
//
// Blobs up to 512 KiB go through BatchUpdateBlobs. Larger blobs are streamed with ByteStream
// Write in 1 MiB chunks. After a broken stream, QueryWriteStatus returns how much the cache
// kept, and the upload resumes there. When r is an io.Seeker (an *os.File, for example) it
// is rewound as far as needed. Otherwise a resume that needs bytes already read from r
// fails, and bazel-remote keeps no partial uploads, so any broken stream needs a rewind. An upload that the cache completes early, because it already has the blob, is a
// success. The bytes are hashed as they are read, and the final chunk is never sent when
// they do not match d, so the cache never commits a wrong blob from this client.
func (c *Client) Write(ctx context.Context, d Digest, r io.Reader) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("remote cache %s: write: %w", c.endpoint, err)
	}
	if c.caps.MaxCASBlobSizeBytes > 0 && d.Size > c.caps.MaxCASBlobSizeBytes {
		return fmt.Errorf("remote cache %s: write blob %s: the cache accepts blobs of at most %d bytes", c.endpoint, d, c.caps.MaxCASBlobSizeBytes)
	}

	src, err := newUploadSource(r)
	if err != nil {
		return fmt.Errorf("remote cache %s: write blob %s: %w", c.endpoint, d, err)
	}

	if d.Size == 0 {
		// REAPI servers always have the empty blob, so only check that r is empty.
		if err := src.checkEnd(d); err != nil {
			return fmt.Errorf("remote cache %s: write blob %s: %w", c.endpoint, d, err)
		}
		return nil
	}

	if c.isSmall(d) {
		data, err := src.next(d, d.Size)
		if err == nil {
			err = src.checkEnd(d)
		}
		if err != nil {
			return fmt.Errorf("remote cache %s: write blob %s: %w", c.endpoint, d, err)
		}
		return c.batchUpdate(ctx, d, data)
	}

	return c.streamWrite(ctx, d, src)
}

// streamWrite uploads d with ByteStream Write, resuming after broken streams.
func (c *Client) streamWrite(ctx context.Context, d Digest, src *uploadSource) error {
	uploadID, err := newUUID()
	if err != nil {
		return fmt.Errorf("remote cache %s: write blob %s: %w", c.endpoint, d, err)
	}
	resource := writeResourceName(c.instance, uploadID, d)

	var offset int64
	retries := 0
	for {
		err := c.writeAttempt(ctx, resource, d, src, offset)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || !retryable(err) {
			return c.blobError("ByteStream.Write", d, err)
		}

		committed, complete := c.queryWriteStatus(ctx, resource, d)
		if complete {
			c.logger.Info("remote cache write completed by the cache after a broken stream", "endpoint", c.endpoint, "digest", d.String())
			return nil
		}
		if committed > offset {
			// The cache kept more than before, so this attempt made progress.
			retries = 0
		}
		offset = committed

		retries++
		if retries > c.retries {
			return c.rpcError(fmt.Sprintf("ByteStream.Write of blob %s after %d retries", d, c.retries), err)
		}
		if err := c.sleepBeforeRetry(ctx, "ByteStream.Write", retries, err, []any{"digest", d.String(), "offset", offset}); err != nil {
			return c.rpcError(fmt.Sprintf("ByteStream.Write of blob %s", d), err)
		}
	}
}

// writeAttempt sends d from offset on over one stream. An error from src or a digest
// mismatch cancels the stream before its final message, so the cache commits nothing.
func (c *Client) writeAttempt(ctx context.Context, resource string, d Digest, src *uploadSource, offset int64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	if err := src.rewind(offset); err != nil {
		return err
	}

	stream, err := c.byteStream.Write(ctx)
	if err != nil {
		return err
	}

	for pos := offset; pos < d.Size; {
		chunk, err := src.next(d, min(streamChunkBytes, d.Size-pos))
		if err != nil {
			return err
		}
		finish := pos+int64(len(chunk)) == d.Size
		if finish {
			if err := src.checkEnd(d); err != nil {
				return err
			}
		}

		req := &bytestream.WriteRequest{WriteOffset: pos, Data: chunk, FinishWrite: finish}
		if pos == offset {
			req.ResourceName = resource
		}
		if err := stream.Send(req); err != nil {
			if err == io.EOF {
				// The cache ended the stream early; CloseAndRecv returns why.
				break
			}
			return err
		}
		pos += int64(len(chunk))
	}

	resp, err := stream.CloseAndRecv()
	if err != nil {
		return err
	}
	// A compressed upload that the cache completes early reports -1; an uncompressed one
	// reports the blob size, whether it was uploaded now or before.
	if committed := resp.GetCommittedSize(); committed != d.Size && committed != -1 {
		return fmt.Errorf("the cache committed %d bytes of %d", committed, d.Size)
	}
	return nil
}

// queryWriteStatus returns how many bytes of the upload the cache kept, and whether the
// blob is complete. Any failure counts as nothing kept, since the upload then starts over.
func (c *Client) queryWriteStatus(ctx context.Context, resource string, d Digest) (int64, bool) {
	resp, err := c.byteStream.QueryWriteStatus(ctx, &bytestream.QueryWriteStatusRequest{ResourceName: resource})
	if err != nil {
		if status.Code(err) != codes.NotFound && status.Code(err) != codes.Unimplemented {
			c.logger.Warn("remote cache QueryWriteStatus failed; restarting the upload", "endpoint", c.endpoint, "digest", d.String(), "error", err)
		}
		return 0, false
	}
	if resp.GetComplete() {
		return d.Size, true
	}
	return min(max(resp.GetCommittedSize(), 0), d.Size), false
}

// uploadSource reads an upload's bytes, hashes them once, and rewinds a seekable reader
// for resumed uploads.
type uploadSource struct {
	r      io.Reader
	seeker io.Seeker // nil when r cannot be rewound
	start  int64     // seeker position of the blob's first byte

	pos      int64 // blob offset of the next byte r returns
	hashed   int64 // bytes [0, hashed) went into hasher
	hasher   hash.Hash
	buf      []byte
	finished bool // checkEnd passed
}

func newUploadSource(r io.Reader) (*uploadSource, error) {
	s := &uploadSource{r: r, hasher: sha256.New()}
	if seeker, ok := r.(io.Seeker); ok {
		start, err := seeker.Seek(0, io.SeekCurrent)
		if err == nil {
			s.seeker = seeker
			s.start = start
		}
	}
	return s, nil
}

// rewind positions the source at blob offset offset.
func (s *uploadSource) rewind(offset int64) error {
	if offset == s.pos {
		return nil
	}
	if offset > s.hashed {
		return fmt.Errorf("cannot resume at offset %d: only %d bytes were read", offset, s.hashed)
	}
	if s.seeker == nil {
		return fmt.Errorf("the upload stream broke after %d bytes and the cache kept %d, but the source cannot be rewound; retry the upload", s.pos, offset)
	}
	if _, err := s.seeker.Seek(s.start+offset, io.SeekStart); err != nil {
		return fmt.Errorf("rewind the source to offset %d: %w", offset, err)
	}
	s.pos = offset
	return nil
}

// next reads the n bytes at s.pos. The returned slice is valid until the next call.
func (s *uploadSource) next(d Digest, n int64) ([]byte, error) {
	if int64(cap(s.buf)) < n {
		s.buf = make([]byte, n)
	}
	buf := s.buf[:n]
	read, err := io.ReadFull(s.r, buf)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, fmt.Errorf("the source ended after %d bytes, but the digest has size %d", s.pos+int64(read), d.Size)
	}
	if err != nil {
		return nil, fmt.Errorf("read the source at offset %d: %w", s.pos, err)
	}

	// Only bytes past s.hashed are new; a rewound source repeats bytes already hashed.
	if end := s.pos + n; end > s.hashed {
		s.hasher.Write(buf[s.hashed-s.pos:])
		s.hashed = end
	}
	s.pos += n
	return buf, nil
}

// checkEnd checks, once all d.Size bytes were read, that the source ends there and that
// the bytes match d.
func (s *uploadSource) checkEnd(d Digest) error {
	if s.finished {
		return nil
	}

	var extra [1]byte
	n, err := io.ReadFull(s.r, extra[:])
	if n > 0 {
		return fmt.Errorf("the source is longer than the digest size of %d bytes", d.Size)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read the source at offset %d: %w", s.pos, err)
	}

	if got := hex.EncodeToString(s.hasher.Sum(nil)); got != d.Hash {
		return fmt.Errorf("the source bytes have digest sha256:%s/%d, not the expected one; the upload was cancelled before the cache committed it", got, d.Size)
	}
	s.finished = true
	return nil
}

// newUUID returns a random version 4 UUID for an upload resource name.
func newUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate upload id: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], nil
}
