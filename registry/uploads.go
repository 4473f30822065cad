package registry

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/registry/blobstore"
)

func uploadLocation(name, id string) string {
	return "/v2/" + name + "/blobs/uploads/" + id
}

func blobLocation(name string, dgst digest.Digest) string {
	return "/v2/" + name + "/blobs/" + dgst.String()
}

// uploadError maps a store error of an upload session.
func uploadError(err error) error {
	switch {
	case errors.Is(err, blobstore.ErrUploadUnknown):
		return wrapError(codeBlobUploadUnknown, err)
	case errors.Is(err, blobstore.ErrDigestMismatch):
		return wrapError(codeDigestInvalid, err)
	case errors.Is(err, blobstore.ErrUnsupportedDigest):
		return wrapError(codeDigestInvalid, err)
	case errors.Is(err, blobstore.ErrReadOnly):
		return wrapError(codeUnsupported, err)
	}
	return err
}

// startUpload serves POST /blobs/uploads/: a cross-repository mount, a monolithic upload with
// ?digest=, or the start of a session.
func (s *Server) startUpload(w http.ResponseWriter, r *http.Request, name, _ string) {
	query := r.URL.Query()

	if mount := query.Get("mount"); mount != "" {
		if s.mountBlob(w, r, name, mount) {
			return
		}
		// The blob is not stored, so the spec falls back to starting a session (202).
	}

	writer, err := s.blobs.Create(r.Context())
	if err != nil {
		writeError(w, r, uploadError(err))
		return
	}
	requestInfoFrom(r).uploadID = writer.ID()

	if value := query.Get("digest"); value != "" {
		// The client never learns this session's id, so a failed monolithic upload must not
		// leave the session behind.
		s.finishUpload(w, r, name, writer, value, false)
		return
	}

	defer writer.Close()
	s.writeUploadStatus(w, name, writer, http.StatusAccepted)
}

// mountBlob responds 201 to a mount when the blob exists and was not deleted from the from
// repository, and returns false otherwise.
func (s *Server) mountBlob(w http.ResponseWriter, r *http.Request, name, mount string) bool {
	dgst, err := parseDigest(mount)
	if err != nil {
		return false
	}
	requestInfoFrom(r).digest = dgst.String()
	if from := r.URL.Query().Get("from"); from != "" {
		unlinked, err := s.metadata.BlobUnlinked(r.Context(), from, dgst)
		if err != nil {
			writeError(w, r, err)
			return true
		}
		if unlinked {
			return false
		}
	}
	if _, err := s.blobs.Stat(r.Context(), dgst); err != nil {
		if !errors.Is(err, blobstore.ErrNotFound) {
			writeError(w, r, err)
			return true
		}
		return false
	}
	if err := s.metadata.LinkBlobs(r.Context(), name, dgst); err != nil {
		writeError(w, r, err)
		return true
	}

	w.Header().Set("Location", blobLocation(name, dgst))
	w.Header().Set("Docker-Content-Digest", dgst.String())
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return true
}

// getUpload reports how many bytes a session holds, so a client can resume after a failure.
func (s *Server) getUpload(w http.ResponseWriter, r *http.Request, name, id string) {
	requestInfoFrom(r).uploadID = id
	writer, err := s.blobs.Resume(r.Context(), id)
	if err != nil {
		writeError(w, r, uploadError(err))
		return
	}
	defer writer.Close()
	s.writeUploadStatus(w, name, writer, http.StatusNoContent)
}

// patchUpload appends a chunk, or the whole stream when no Content-Range is sent.
func (s *Server) patchUpload(w http.ResponseWriter, r *http.Request, name, id string) {
	requestInfoFrom(r).uploadID = id
	writer, err := s.blobs.Resume(r.Context(), id)
	if err != nil {
		writeError(w, r, uploadError(err))
		return
	}
	defer writer.Close()

	if err := s.appendChunk(w, r, name, writer); err != nil {
		writeError(w, r, err)
		return
	}
	s.writeUploadStatus(w, name, writer, http.StatusAccepted)
}

// putUpload appends an optional last chunk and commits the session under ?digest=.
func (s *Server) putUpload(w http.ResponseWriter, r *http.Request, name, id string) {
	requestInfoFrom(r).uploadID = id
	writer, err := s.blobs.Resume(r.Context(), id)
	if err != nil {
		writeError(w, r, uploadError(err))
		return
	}
	s.finishUpload(w, r, name, writer, r.URL.Query().Get("digest"), true)
}

// finishUpload appends the request body to a held session and commits it. It ends the session
// on success and on a digest mismatch. On other failures it keeps the session for a retry when
// resumable is set, and cancels it otherwise.
func (s *Server) finishUpload(w http.ResponseWriter, r *http.Request, name string, writer blobstore.Writer, value string, resumable bool) {
	ctx := r.Context()
	fail := func(err error) {
		if resumable && !errors.Is(err, blobstore.ErrDigestMismatch) {
			writer.Close()
		} else {
			// A mismatch means the client must start over, so the bytes are of no further use.
			writer.Cancel(ctx)
		}
		writeError(w, r, err)
	}

	dgst, err := parseDigest(value)
	if err != nil {
		fail(err)
		return
	}
	requestInfoFrom(r).digest = dgst.String()

	if err := s.appendChunk(w, r, name, writer); err != nil {
		fail(err)
		return
	}
	if err := writer.Commit(ctx, dgst); err != nil {
		fail(uploadError(err))
		return
	}
	if err := s.metadata.LinkBlobs(ctx, name, dgst); err != nil {
		writeError(w, r, err)
		return
	}

	w.Header().Set("Location", blobLocation(name, dgst))
	w.Header().Set("Docker-Content-Digest", dgst.String())
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
}

// appendChunk writes the request body to the session. A Content-Range must start where the
// stored bytes end, else the chunk is rejected with 416 and the current range, so the client can
// resume from there.
func (s *Server) appendChunk(w http.ResponseWriter, r *http.Request, name string, writer blobstore.Writer) error {
	if value := r.Header.Get("Content-Range"); value != "" {
		start, end, err := parseContentRange(value)
		if err != nil {
			return err
		}
		if start != writer.Size() {
			s.setUploadHeaders(w, name, writer)
			return newError(codeRangeInvalid, "chunk starts at byte %d but upload %s contains %d bytes; resume at byte %d", start, writer.ID(), writer.Size(), writer.Size())
		}
		if r.ContentLength >= 0 && end-start+1 != r.ContentLength {
			return newError(codeSizeInvalid, "Content-Range %s covers %d bytes but Content-Length is %d", value, end-start+1, r.ContentLength)
		}
	}

	before := writer.Size()
	body := &idleTimeoutReader{reader: r.Body, controller: http.NewResponseController(w), timeout: s.uploadIdleTimeout}
	copied, err := writer.ReadFrom(body)
	if err != nil {
		// The stored bytes stay in the session, so a client can ask GET for the range and resume.
		return fmt.Errorf("upload %s: reading the request body failed after %d bytes (the session contains %d): %w", writer.ID(), copied, before+copied, err)
	}
	if r.ContentLength >= 0 && copied != r.ContentLength {
		return newError(codeSizeInvalid, "request body had %d bytes but Content-Length is %d", copied, r.ContentLength)
	}
	return nil
}

// idleTimeoutReader moves the connection's read deadline forward before every read, so a client
// that stops sending fails after timeout, and releases its upload session, however long the
// whole upload takes.
type idleTimeoutReader struct {
	reader     io.Reader
	controller *http.ResponseController
	timeout    time.Duration
}

func (r *idleTimeoutReader) Read(p []byte) (int, error) {
	if r.timeout > 0 {
		// Servers whose connections have no deadlines (some test servers) return an error
		// here, and then the read simply waits as long as the client.
		r.controller.SetReadDeadline(time.Now().Add(r.timeout))
	}
	return r.reader.Read(p)
}

// parseContentRange reads the "<start>-<end>" form the spec uses for chunks (an optional
// "bytes " prefix is accepted too).
func parseContentRange(value string) (start, end int64, err error) {
	spec := strings.TrimPrefix(strings.TrimSpace(value), "bytes ")
	if i := strings.IndexByte(spec, '/'); i >= 0 {
		spec = spec[:i]
	}
	first, last, ok := strings.Cut(spec, "-")
	start, err1 := strconv.ParseInt(first, 10, 64)
	end, err2 := strconv.ParseInt(last, 10, 64)
	if !ok || err1 != nil || err2 != nil || start < 0 || end < start {
		return 0, 0, newError(codeRangeInvalid, "invalid Content-Range %q; send <start>-<end> with inclusive byte offsets", value)
	}
	return start, end, nil
}

// cancelUpload ends a session and discards its bytes.
func (s *Server) cancelUpload(w http.ResponseWriter, r *http.Request, name, id string) {
	requestInfoFrom(r).uploadID = id
	writer, err := s.blobs.Resume(r.Context(), id)
	if err != nil {
		writeError(w, r, uploadError(err))
		return
	}
	if err := writer.Cancel(r.Context()); err != nil {
		writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) setUploadHeaders(w http.ResponseWriter, name string, writer blobstore.Writer) {
	header := w.Header()
	header.Set("Location", uploadLocation(name, writer.ID()))
	header.Set("Docker-Upload-UUID", writer.ID())
	// The spec's Range is inclusive, so an empty session has no valid range; "0-0" is what
	// distribution and the clients written against it expect then.
	header.Set("Range", fmt.Sprintf("0-%d", max(writer.Size()-1, 0)))
	if s.chunkMinLength > 0 {
		header.Set("OCI-Chunk-Min-Length", strconv.FormatInt(s.chunkMinLength, 10))
	}
}

func (s *Server) writeUploadStatus(w http.ResponseWriter, name string, writer blobstore.Writer, status int) {
	s.setUploadHeaders(w, name, writer)
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(status)
}
