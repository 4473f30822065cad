package push

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// repoClient speaks the OCI distribution protocol with one repository. Its methods are
// the push protocol's steps, in the order a push takes them: check a blob, mount it,
// start an upload, send bytes, read an upload's committed range, commit it, check and
// put a manifest.
type repoClient struct {
	registry   string
	repository string
	base       *url.URL // scheme://host
	http       *http.Client
	opts       *options
	log        *slog.Logger
}

func (c *repoClient) String() string { return c.registry + "/" + c.repository }

func (c *repoClient) url(path string, query url.Values) string {
	u := *c.base
	u.Path = "/v2/" + c.repository + path
	u.RawQuery = query.Encode()
	return u.String()
}

// do sends a request built by build, retrying transient failures with backoff. build
// is called again for each attempt, so request bodies must be made inside it.
func (c *repoClient) do(ctx context.Context, build func() (*http.Request, error), ok ...int) (*http.Response, error) {
	var lastErr error
	for attempt := 0; ; attempt++ {
		req, err := build()
		if err != nil {
			return nil, err
		}
		res, err := c.http.Do(req)
		if err == nil {
			for _, code := range ok {
				if res.StatusCode == code {
					return res, nil
				}
			}
			err = newRegistryError(res)
		}
		lastErr = err
		if !retryableError(err) || attempt >= c.opts.retries || ctx.Err() != nil {
			return nil, lastErr
		}
		wait := c.opts.backoff.delay(attempt)
		var regErr *RegistryError
		if errors.As(err, &regErr) {
			if d, ok := retryAfter(regErr.retryAfter); ok {
				wait = d
			}
		}
		c.log.Warn("retrying registry request", "method", req.Method, "url", req.URL.Redacted(), "attempt", attempt+1, "wait", wait, "error", err)
		if err := sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
}

// blobExists checks for a blob with HEAD. Some registries respond to HEAD with 401, 403
// or 405 even with a valid token. Then a one-byte ranged GET decides, and if that is
// rejected too, the blob counts as missing, so it is uploaded.
func (c *repoClient) blobExists(ctx context.Context, desc ocispec.Descriptor) (bool, error) {
	target := c.url("/blobs/"+desc.Digest.String(), nil)
	res, err := c.do(ctx, func() (*http.Request, error) {
		return http.NewRequestWithContext(ctx, http.MethodHead, target, nil)
	}, http.StatusOK, http.StatusNotFound, http.StatusUnauthorized, http.StatusForbidden, http.StatusMethodNotAllowed)
	if err != nil {
		return false, err
	}
	drain(res)
	switch res.StatusCode {
	case http.StatusOK:
		return true, nil
	case http.StatusNotFound:
		return false, nil
	}

	res, err = c.do(ctx, func() (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err == nil {
			req.Header.Set("Range", "bytes=0-0")
		}
		return req, err
	}, http.StatusOK, http.StatusPartialContent, http.StatusNotFound, http.StatusUnauthorized, http.StatusForbidden, http.StatusMethodNotAllowed)
	if err != nil {
		return false, err
	}
	drain(res)
	return res.StatusCode == http.StatusOK || res.StatusCode == http.StatusPartialContent, nil
}

// uploadSession is an open upload: where to send the next request and what the
// registry has accepted so far.
type uploadSession struct {
	location string
	offset   int64
	minChunk int64 // OCI-Chunk-Min-Length, 0 when not announced
}

// mountBlob requests a cross-repository mount of a blob. A registry that rejects it
// responds 202 with a fresh upload session, which is returned for a normal upload.
func (c *repoClient) mountBlob(ctx context.Context, desc ocispec.Descriptor, from string) (bool, *uploadSession, error) {
	target := c.url("/blobs/uploads/", url.Values{"mount": {desc.Digest.String()}, "from": {from}})
	res, err := c.do(ctx, func() (*http.Request, error) {
		return http.NewRequestWithContext(ctx, http.MethodPost, target, nil)
	}, http.StatusCreated, http.StatusAccepted)
	if err != nil {
		return false, nil, err
	}
	drain(res)
	if res.StatusCode == http.StatusCreated {
		return true, nil, nil
	}
	session, err := c.sessionFrom(res)
	return false, session, err
}

// startUpload opens an upload session.
func (c *repoClient) startUpload(ctx context.Context) (*uploadSession, error) {
	target := c.url("/blobs/uploads/", nil)
	res, err := c.do(ctx, func() (*http.Request, error) {
		return http.NewRequestWithContext(ctx, http.MethodPost, target, nil)
	}, http.StatusAccepted)
	if err != nil {
		return nil, err
	}
	drain(res)
	return c.sessionFrom(res)
}

func (c *repoClient) sessionFrom(res *http.Response) (*uploadSession, error) {
	location, err := c.resolveLocation(res)
	if err != nil {
		return nil, err
	}
	session := &uploadSession{location: location}
	if value := res.Header.Get("OCI-Chunk-Min-Length"); value != "" {
		if n, err := strconv.ParseInt(value, 10, 64); err == nil && n > 0 {
			session.minChunk = n
		}
	}
	return session, nil
}

// resolveLocation resolves a Location header against the request URL, because
// registries may send relative locations.
func (c *repoClient) resolveLocation(res *http.Response) (string, error) {
	location := res.Header.Get("Location")
	if location == "" {
		return "", fmt.Errorf("registry %s responded to %s %s without a Location header", c.registry, res.Request.Method, res.Request.URL.Path)
	}
	u, err := res.Request.URL.Parse(location)
	if err != nil {
		return "", fmt.Errorf("registry %s sent an invalid Location %q: %w", c.registry, location, err)
	}
	return u.String(), nil
}

// sendChunk PATCHes body (length bytes) at the session's offset and advances it. The
// body is passed to net/http untouched, so a *os.File goes out through sendfile(2).
func (c *repoClient) sendChunk(ctx context.Context, session *uploadSession, body io.Reader, length int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, session.location, body)
	if err != nil {
		return err
	}
	req.ContentLength = length
	if length == 0 {
		req.Body = http.NoBody
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", session.offset, session.offset+length-1))
	res, err := c.http.Do(req)
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusAccepted && res.StatusCode != http.StatusNoContent {
		return newRegistryError(res)
	}
	drain(res)
	if location, err := c.resolveLocation(res); err == nil {
		session.location = location
	}
	session.offset += length
	return nil
}

// uploadStatus requests how many bytes an upload session contains, so that an upload cut
// off mid-stream continues from there instead of starting over.
func (c *repoClient) uploadStatus(ctx context.Context, session *uploadSession) error {
	res, err := c.do(ctx, func() (*http.Request, error) {
		return http.NewRequestWithContext(ctx, http.MethodGet, session.location, nil)
	}, http.StatusNoContent, http.StatusOK)
	if err != nil {
		return err
	}
	drain(res)
	if location, err := c.resolveLocation(res); err == nil {
		session.location = location
	}
	session.offset = committedBytes(res.Header.Get("Range"))
	return nil
}

// commitUpload closes a session with the blob's digest; the registry verifies it.
// body is the monolithic upload's content, or nil after PATCHes.
func (c *repoClient) commitUpload(ctx context.Context, session *uploadSession, desc ocispec.Descriptor, body io.Reader, length int64) error {
	target, err := url.Parse(session.location)
	if err != nil {
		return err
	}
	query := target.Query()
	query.Set("digest", desc.Digest.String())
	target.RawQuery = query.Encode()

	req, err := http.NewRequestWithContext(ctx, http.MethodPut, target.String(), body)
	if err != nil {
		return err
	}
	req.ContentLength = length
	if length == 0 {
		req.Body = http.NoBody
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	res, err := c.http.Do(req)
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusCreated {
		return newRegistryError(res)
	}
	drain(res)
	return nil
}

// manifestDigest returns the digest a reference (tag or digest) points at, or "" when
// the registry does not have it.
func (c *repoClient) manifestDigest(ctx context.Context, reference string, mediaType string) (digest.Digest, error) {
	target := c.url("/manifests/"+reference, nil)
	res, err := c.do(ctx, func() (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, target, nil)
		if err == nil {
			req.Header.Set("Accept", strings.Join(acceptedManifestTypes(mediaType), ", "))
		}
		return req, err
	}, http.StatusOK, http.StatusNotFound)
	if err != nil {
		return "", err
	}
	drain(res)
	if res.StatusCode == http.StatusNotFound {
		return "", nil
	}
	return digest.Digest(res.Header.Get("Docker-Content-Digest")), nil
}

// putManifest uploads a manifest or index under a tag or its digest.
func (c *repoClient) putManifest(ctx context.Context, reference string, desc ocispec.Descriptor, body []byte) error {
	target := c.url("/manifests/"+reference, nil)
	res, err := c.do(ctx, func() (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, target, bytes.NewReader(body))
		if err == nil {
			req.Header.Set("Content-Type", desc.MediaType)
		}
		return req, err
	}, http.StatusCreated, http.StatusOK, http.StatusAccepted)
	if err != nil {
		return err
	}
	drain(res)
	if got := res.Header.Get("Docker-Content-Digest"); got != "" && got != desc.Digest.String() {
		return fmt.Errorf("registry %s stored the manifest as %s, but its bytes hash to %s", c.registry, got, desc.Digest)
	}
	return nil
}

func acceptedManifestTypes(mediaType string) []string {
	types := []string{
		ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex,
		"application/vnd.docker.distribution.manifest.v2+json",
		"application/vnd.docker.distribution.manifest.list.v2+json",
	}
	if mediaType != "" {
		types = append([]string{mediaType}, types...)
	}
	return types
}

// committedBytes reads how many bytes an upload session holds from its "0-N" Range
// header, N being the last byte's index. Registries send "0-0" for an empty session as
// well as for one byte; counting that as 0 costs at most one byte sent twice.
func committedBytes(value string) int64 {
	value = strings.TrimPrefix(value, "bytes=")
	_, end, ok := strings.Cut(value, "-")
	if !ok {
		return 0
	}
	n, err := strconv.ParseInt(end, 10, 64)
	if err != nil || n <= 0 {
		return 0
	}
	return n + 1
}

// isLoopback reports whether host (with optional port) names this machine, where plain
// HTTP cannot be intercepted on the way.
func isLoopback(host string) bool {
	hostname := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		hostname = h
	}
	if hostname == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(hostname, "[]"))
	return ip != nil && ip.IsLoopback()
}
