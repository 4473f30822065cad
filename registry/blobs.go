package registry

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/registry/blobstore"
)

// parseDigest validates a digest from a URL or query, as DIGEST_INVALID when it is malformed or
// uses an algorithm other than sha256 and sha512.
func parseDigest(value string) (digest.Digest, error) {
	dgst := digest.Digest(value)
	if err := blobstore.ValidateDigest(dgst); err != nil {
		return "", wrapError(codeDigestInvalid, err)
	}
	return dgst, nil
}

// blobError maps a store error: a missing blob becomes BLOB_UNKNOWN, anything else stays an
// internal error.
func blobError(err error) error {
	if errors.Is(err, blobstore.ErrNotFound) {
		return wrapError(codeBlobUnknown, err)
	}
	if errors.Is(err, blobstore.ErrUnsupportedDigest) {
		// A store that cannot address the digest cannot hold the blob either.
		return wrapError(codeBlobUnknown, err)
	}
	return err
}

// getBlob serves HEAD and GET of a blob, with a single byte range when asked for one.
func (s *Server) getBlob(w http.ResponseWriter, r *http.Request, name, reference string) {
	ctx := r.Context()
	dgst, err := parseDigest(reference)
	if err != nil {
		writeError(w, r, err)
		return
	}
	requestInfoFrom(r).digest = dgst.String()

	if err := s.checkLinked(r, name, dgst); err != nil {
		writeError(w, r, err)
		return
	}
	size, err := s.blobs.Stat(ctx, dgst)
	if err != nil {
		writeError(w, r, blobError(err))
		return
	}

	header := w.Header()
	header.Set("Docker-Content-Digest", dgst.String())
	header.Set("Accept-Ranges", "bytes")
	header.Set("Content-Type", "application/octet-stream")
	header.Set("Etag", `"`+dgst.String()+`"`)
	if r.Method == http.MethodHead {
		header.Set("Content-Length", strconv.FormatInt(size, 10))
		w.WriteHeader(http.StatusOK)
		return
	}

	if redirector, ok := s.blobs.(blobstore.Redirector); ok && r.Header.Get("Range") == "" {
		url, ok, err := redirector.RedirectURL(ctx, dgst)
		if err != nil {
			writeError(w, r, blobError(err))
			return
		}
		if ok {
			http.Redirect(w, r, url, http.StatusTemporaryRedirect)
			return
		}
	}

	start, end, partial, err := parseRange(r.Header.Get("Range"), size)
	if err != nil {
		header.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		writeError(w, r, err)
		return
	}

	reader, err := s.blobs.Open(ctx, dgst, start)
	if err != nil {
		writeError(w, r, blobError(err))
		return
	}
	defer reader.Close()

	length := end - start + 1
	header.Set("Content-Length", strconv.FormatInt(length, 10))
	if partial {
		header.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, size))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		w.WriteHeader(http.StatusOK)
	}

	copied, err := io.Copy(w, io.LimitReader(reader, length))
	if err == nil && copied < length {
		err = fmt.Errorf("blob %s ended after %d of %d bytes", dgst, start+copied, size)
	}
	if err != nil {
		// The status is sent, so the client sees a short body; the log keeps the cause.
		requestInfoFrom(r).err = fmt.Errorf("send blob %s: %w", dgst, err)
	}
}

// parseRange reads a single "bytes=" range of a blob of size bytes and returns the first and
// last byte. A missing or multi-part range selects the whole blob with partial=false, since
// serving it whole is allowed and multi-part responses are not worth their complexity here.
func parseRange(header string, size int64) (start, end int64, partial bool, err error) {
	whole := func() (int64, int64, bool, error) { return 0, size - 1, false, nil }
	spec, ok := strings.CutPrefix(header, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return whole()
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return whole()
	}
	invalid := newError(codeRangeInvalid, "range %q is not satisfiable for a blob of %d bytes", header, size)

	if first == "" {
		// A suffix range: the last n bytes.
		n, err := strconv.ParseInt(last, 10, 64)
		if err != nil || n <= 0 {
			return 0, 0, false, invalid
		}
		return max(size-n, 0), size - 1, true, nil
	}

	start, err = strconv.ParseInt(first, 10, 64)
	if err != nil || start < 0 || start >= size {
		return 0, 0, false, invalid
	}
	end = size - 1
	if last != "" {
		end, err = strconv.ParseInt(last, 10, 64)
		if err != nil || end < start {
			return 0, 0, false, invalid
		}
		end = min(end, size-1)
	}
	return start, end, true, nil
}

// deleteBlob removes a blob from one repository. The store keeps one copy of each blob for
// every repository, so the bytes stay and other repositories still serve the blob.
//
// TODO: nothing removes the bytes of a blob that no repository links any more. Until a
// garbage collection exists, only deleting the store's own files or objects frees them.
func (s *Server) deleteBlob(w http.ResponseWriter, r *http.Request, name, reference string) {
	dgst, err := parseDigest(reference)
	if err != nil {
		writeError(w, r, err)
		return
	}
	requestInfoFrom(r).digest = dgst.String()

	if err := s.checkLinked(r, name, dgst); err != nil {
		writeError(w, r, err)
		return
	}
	if _, err := s.blobs.Stat(r.Context(), dgst); err != nil {
		writeError(w, r, blobError(err))
		return
	}
	if err := s.metadata.UnlinkBlob(r.Context(), name, dgst); err != nil {
		writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
}

// checkLinked returns BLOB_UNKNOWN when the blob was deleted from repository name.
func (s *Server) checkLinked(r *http.Request, name string, dgst digest.Digest) error {
	unlinked, err := s.metadata.BlobUnlinked(r.Context(), name, dgst)
	if err != nil {
		return err
	}
	if unlinked {
		return blobError(fmt.Errorf("blob %s was deleted from repository %s; push it again to restore it: %w", dgst, name, blobstore.ErrNotFound))
	}
	return nil
}
