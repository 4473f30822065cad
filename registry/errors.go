package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// errorCode is an error code of the OCI distribution spec, sent in the "errors" list of a
// response body.
type errorCode string

const (
	codeBlobUnknown         errorCode = "BLOB_UNKNOWN"
	codeBlobUploadInvalid   errorCode = "BLOB_UPLOAD_INVALID"
	codeBlobUploadUnknown   errorCode = "BLOB_UPLOAD_UNKNOWN"
	codeDigestInvalid       errorCode = "DIGEST_INVALID"
	codeManifestBlobUnknown errorCode = "MANIFEST_BLOB_UNKNOWN"
	codeManifestInvalid     errorCode = "MANIFEST_INVALID"
	codeManifestUnknown     errorCode = "MANIFEST_UNKNOWN"
	codeNameInvalid         errorCode = "NAME_INVALID"
	codeNameUnknown         errorCode = "NAME_UNKNOWN"
	codeSizeInvalid         errorCode = "SIZE_INVALID"
	codeUnauthorized        errorCode = "UNAUTHORIZED"
	codeDenied              errorCode = "DENIED"
	codeUnsupported         errorCode = "UNSUPPORTED"
	codeTooManyRequests     errorCode = "TOO_MANY_REQUESTS"

	// codeRangeInvalid is not in the spec's table, but the spec requires 416 for an
	// out-of-order chunk and distribution sends this code with it.
	codeRangeInvalid errorCode = "RANGE_INVALID"

	// codeInternal is for failures of the registry itself (a disk or cache error), which the
	// spec leaves to the HTTP status.
	codeInternal errorCode = "INTERNAL"
)

// errorCodes maps each code to its HTTP status and the message sent with it.
var errorCodes = map[errorCode]struct {
	status  int
	message string
}{
	codeBlobUnknown:         {http.StatusNotFound, "blob unknown to registry"},
	codeBlobUploadInvalid:   {http.StatusBadRequest, "blob upload invalid"},
	codeBlobUploadUnknown:   {http.StatusNotFound, "blob upload unknown to registry"},
	codeDigestInvalid:       {http.StatusBadRequest, "provided digest did not match uploaded content"},
	codeManifestBlobUnknown: {http.StatusBadRequest, "manifest references a manifest or blob unknown to registry"},
	codeManifestInvalid:     {http.StatusBadRequest, "manifest invalid"},
	codeManifestUnknown:     {http.StatusNotFound, "manifest unknown to registry"},
	codeNameInvalid:         {http.StatusBadRequest, "invalid repository name"},
	codeNameUnknown:         {http.StatusNotFound, "repository name not known to registry"},
	codeSizeInvalid:         {http.StatusBadRequest, "provided length did not match content length"},
	codeUnauthorized:        {http.StatusUnauthorized, "authentication required"},
	codeDenied:              {http.StatusForbidden, "requested access to the resource is denied"},
	codeUnsupported:         {http.StatusMethodNotAllowed, "the operation is unsupported"},
	codeTooManyRequests:     {http.StatusTooManyRequests, "too many requests"},
	codeRangeInvalid:        {http.StatusRequestedRangeNotSatisfiable, "requested range is not satisfiable"},
	codeInternal:            {http.StatusInternalServerError, "internal error"},
}

// apiError is a failed request: the code, the detail for the client, and the cause for the log.
type apiError struct {
	code   errorCode
	detail string
	cause  error

	// status overrides the code's status where the spec requires another, such as 413 for a
	// manifest over the size limit.
	status int
}

func (e *apiError) Error() string {
	if e.cause != nil && e.cause.Error() != e.detail {
		return fmt.Sprintf("%s: %s: %v", e.code, e.detail, e.cause)
	}
	return fmt.Sprintf("%s: %s", e.code, e.detail)
}

func (e *apiError) Unwrap() error { return e.cause }

// newError returns an apiError with a detail formatted like fmt.Sprintf.
func newError(code errorCode, format string, args ...any) *apiError {
	return &apiError{code: code, detail: fmt.Sprintf(format, args...)}
}

// wrapError returns an apiError caused by err, whose message becomes the detail.
func wrapError(code errorCode, err error) *apiError {
	return &apiError{code: code, detail: err.Error(), cause: err}
}

// writeError sends err as an OCI error body. Errors that are not an apiError become 500
// INTERNAL, so a store failure never reads as a missing blob.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	var api *apiError
	if !errors.As(err, &api) {
		api = wrapError(codeInternal, err)
	}
	entry, ok := errorCodes[api.code]
	if !ok {
		entry = errorCodes[codeInternal]
	}
	status := entry.status
	if api.status != 0 {
		status = api.status
	}

	body, _ := json.Marshal(map[string]any{
		"errors": []map[string]any{{
			"code":    api.code,
			"message": entry.message,
			"detail":  api.detail,
		}},
	})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
	requestInfoFrom(r).err = err
}
