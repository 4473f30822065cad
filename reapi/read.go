package reapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/genproto/googleapis/bytestream"
)

// maxZstdWindowBytes bounds the memory of one zstd decoder. Default and high compression
// levels use windows of at most 8 MiB, and zstd's long mode at most 128 MiB.
const maxZstdWindowBytes = 128 << 20

// Open returns a reader of d's bytes from offset on.
//
// Blobs up to 512 KiB are read whole with BatchReadBlobs. Larger blobs are streamed with
// ByteStream Read, compressed with zstd when the cache supports it, and a broken stream is
// resumed from the last byte received. When offset is 0, every byte is hashed, and a digest
// or length mismatch makes Read return an error in place of io.EOF, so a consumer that
// commits only on io.EOF never commits corrupt data. From an offset above 0, only the length
// is checked. A blob that is not in the cache is an error matching ErrNotFound, returned by
// Open itself.
func (c *Client) Open(ctx context.Context, d Digest, offset int64) (io.ReadCloser, error) {
	return c.open(ctx, d, offset, true)
}

// OpenUnverified is Open without the hash of the bytes; only the length is checked. It is
// for consumers that verify the digest themselves, such as a registry serving a blob to
// a client that checks every blob it pulls: hashing there too cost about a quarter of
// the registry's CPU per byte served.
func (c *Client) OpenUnverified(ctx context.Context, d Digest, offset int64) (io.ReadCloser, error) {
	return c.open(ctx, d, offset, false)
}

func (c *Client) open(ctx context.Context, d Digest, offset int64, verify bool) (io.ReadCloser, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("remote cache %s: read: %w", c.endpoint, err)
	}
	if offset < 0 || offset > d.Size {
		return nil, fmt.Errorf("remote cache %s: read blob %s: offset %d is outside the blob", c.endpoint, d, offset)
	}

	if d.Size == 0 {
		return io.NopCloser(bytes.NewReader(nil)), nil
	}

	if c.isSmall(d) {
		data, err := c.batchRead(ctx, d)
		if err != nil {
			return nil, err
		}
		return io.NopCloser(bytes.NewReader(data[offset:])), nil
	}

	ctx, cancel := context.WithCancel(ctx)
	r := &blobReader{
		c:          c,
		ctx:        ctx,
		cancel:     cancel,
		d:          d,
		pos:        offset,
		compressed: c.caps.Zstd,
	}
	if offset == 0 && verify {
		r.hasher = sha256.New()
	}
	if err := c.retry(ctx, "ByteStream.Read", []any{"digest", d.String(), "offset", offset}, r.startStream); err != nil {
		r.Close()
		return nil, c.blobError("ByteStream.Read", d, err)
	}
	return r, nil
}

// ReadAll returns all of d's bytes. Use it only for blobs known to be small, such as
// manifests and configs, because it holds the whole blob in memory.
func (c *Client) ReadAll(ctx context.Context, d Digest) ([]byte, error) {
	r, err := c.Open(ctx, d, 0)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// blobReader streams one blob with ByteStream Read and resumes broken streams.
type blobReader struct {
	c          *Client
	ctx        context.Context
	cancel     context.CancelFunc
	d          Digest
	compressed bool

	pos    int64     // absolute offset of the next byte to return
	hasher hash.Hash // hashes bytes from offset 0; nil when Open started at an offset

	streamCancel context.CancelFunc // ends the current stream
	chunks       *chunkReader       // compressed or plain bytes of the current stream
	decoder      *zstd.Decoder      // decompresses chunks when compressed
	source       io.Reader          // plain bytes of the current stream
	retries      int                // consecutive retries without progress
	err          error              // sticky error after a failure or the end
}

// startStream opens a stream at r.pos and receives its first message, so that a missing
// blob fails here rather than in the first Read.
func (r *blobReader) startStream(ctx context.Context) error {
	r.stopStream()

	streamCtx, streamCancel := context.WithCancel(ctx)
	stream, err := r.c.byteStream.Read(streamCtx, &bytestream.ReadRequest{
		ResourceName: readResourceName(r.c.instance, r.d, r.compressed),
		ReadOffset:   r.pos,
	})
	if err != nil {
		streamCancel()
		return err
	}
	chunks := &chunkReader{stream: stream}
	if err := chunks.fill(); err != nil && err != io.EOF {
		streamCancel()
		return err
	}

	r.streamCancel = streamCancel
	r.chunks = chunks
	r.source = chunks
	if r.compressed {
		if r.decoder == nil {
			r.decoder, err = zstd.NewReader(chunks, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxZstdWindowBytes))
		} else {
			err = r.decoder.Reset(chunks)
		}
		if err != nil {
			streamCancel()
			return err
		}
		r.source = r.decoder
	}
	return nil
}

func (r *blobReader) stopStream() {
	if r.streamCancel != nil {
		r.streamCancel()
		r.streamCancel = nil
	}
}

func (r *blobReader) Read(p []byte) (int, error) {
	for {
		if r.err != nil {
			return 0, r.err
		}
		if r.pos == r.d.Size {
			r.err = r.finish()
			return 0, r.err
		}

		if remaining := r.d.Size - r.pos; int64(len(p)) > remaining {
			p = p[:remaining]
		}
		n, err := r.source.Read(p)
		if n > 0 {
			if r.hasher != nil {
				r.hasher.Write(p[:n])
			}
			r.pos += int64(n)
			r.retries = 0
			return n, nil
		}
		if err == nil {
			continue
		}

		if err := r.resume(err); err != nil {
			r.err = err
			return 0, err
		}
	}
}

// resume handles a failed or ended stream: it opens a new one at r.pos when the failure is
// retryable, and otherwise returns the error for Read.
func (r *blobReader) resume(err error) error {
	c := r.c
	// A decoder error hides the stream's own error, so prefer the stream's.
	if r.chunks.err != nil && r.chunks.err != io.EOF {
		err = r.chunks.err
	}

	if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
		// The server ended the stream before the blob's last byte. Treat it as a dropped
		// stream: a server that keeps doing so runs out of retries.
		err = &streamEndedError{offset: r.pos, size: r.d.Size}
	}
	if r.ctx.Err() != nil {
		return c.rpcError(fmt.Sprintf("ByteStream.Read of blob %s", r.d), context.Cause(r.ctx))
	}
	if !retryable(err) {
		return c.blobError("ByteStream.Read", r.d, err)
	}

	for {
		r.retries++
		if r.retries > c.retries {
			return c.rpcError(fmt.Sprintf("ByteStream.Read of blob %s at offset %d after %d retries", r.d, r.pos, c.retries), err)
		}
		attrs := []any{"digest", r.d.String(), "offset", r.pos}
		if sleepErr := c.sleepBeforeRetry(r.ctx, "ByteStream.Read", r.retries, err, attrs); sleepErr != nil {
			return c.rpcError(fmt.Sprintf("ByteStream.Read of blob %s", r.d), sleepErr)
		}

		err = r.startStream(r.ctx)
		if err == nil {
			c.logger.Info("remote cache read resumed", "endpoint", c.endpoint, "digest", r.d.String(), "offset", r.pos)
			return nil
		}
		if !retryable(err) || r.ctx.Err() != nil {
			return c.blobError("ByteStream.Read", r.d, err)
		}
	}
}

// finish checks the blob once its last byte was returned.
func (r *blobReader) finish() error {
	r.stopStream()
	if r.hasher == nil {
		return io.EOF
	}
	if got := hex.EncodeToString(r.hasher.Sum(nil)); got != r.d.Hash {
		r.c.logger.Error("remote cache returned corrupt blob", "endpoint", r.c.endpoint, "digest", r.d.String(), "got_hash", got)
		return fmt.Errorf("remote cache %s: blob %s: the bytes read have SHA-256 %s; the cache entry is corrupt, so delete it from the cache and upload it again", r.c.endpoint, r.d, got)
	}
	return io.EOF
}

// Close ends the stream and always returns nil.
func (r *blobReader) Close() error {
	r.stopStream()
	r.cancel()
	if r.decoder != nil {
		r.decoder.Close()
		r.decoder = nil
	}
	if r.err == nil {
		r.err = fmt.Errorf("remote cache %s: read blob %s: reader is closed", r.c.endpoint, r.d)
	}
	return nil
}

// streamEndedError is a ByteStream Read that ended without error before the blob's last byte.
type streamEndedError struct {
	offset, size int64
}

func (e *streamEndedError) Error() string {
	return fmt.Sprintf("the cache ended the stream at offset %d of %d bytes", e.offset, e.size)
}

// chunkReader turns a ByteStream Read stream into an io.Reader. It keeps the stream's error,
// because a zstd decoder reading from it may return its own error in place of the stream's.
type chunkReader struct {
	stream bytestream.ByteStream_ReadClient
	buf    []byte
	err    error
}

// fill receives the next non-empty message into buf.
func (cr *chunkReader) fill() error {
	for len(cr.buf) == 0 && cr.err == nil {
		msg, err := cr.stream.Recv()
		if err != nil {
			cr.err = err
			return err
		}
		cr.buf = msg.GetData()
	}
	return cr.err
}

func (cr *chunkReader) Read(p []byte) (int, error) {
	if len(cr.buf) == 0 {
		if err := cr.fill(); err != nil && len(cr.buf) == 0 {
			return 0, err
		}
	}
	n := copy(p, cr.buf)
	cr.buf = cr.buf[n:]
	return n, nil
}
