// Package upstream is a read-only blob store that reads through from another OCI registry. A
// blob or manifest the registry does not hold is fetched from the upstream registry under the
// same repository name and streamed to the client without being stored.
//
// Credentials come from the docker config (through go-containerregistry's authn.Keychain, which
// reads credHelpers and credsStore too) or from a Bazel credential helper. They are sent only to
// the upstream host: a redirect to the upstream's storage gets none, whether the store follows
// it or passes it on to the client (Options.Redirect).
package upstream

import (
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
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/registry/blobstore"
)

// maxTransports bounds the cached per-repository transports, each holding a pull token.
const maxTransports = 10_000

// HeaderSource supplies request headers for a URI; credhelper.Helper implements it.
type HeaderSource interface {
	Get(ctx context.Context, uri string) (http.Header, error)
}

// Options configures a Store.
type Options struct {
	// URL is the upstream registry's base URL, http(s)://host[:port]. Required.
	URL string

	// AllowPlainHTTP permits an http:// URL whose host is not a loopback address. Without it,
	// plain HTTP is accepted only for localhost, 127.0.0.0/8 and ::1, because credentials and
	// blobs would otherwise cross the network unencrypted.
	AllowPlainHTTP bool

	// Keychain resolves credentials for the upstream host; nil means authn.DefaultKeychain.
	Keychain authn.Keychain

	// CredentialHelper, when set, supplies the headers of every request to the upstream host
	// instead of Keychain.
	CredentialHelper HeaderSource

	// Redirect passes the upstream's redirects to other hosts (its blob storage) on to the
	// client, instead of following them and streaming the bytes.
	Redirect bool

	// Transport sends the requests; nil means a clone of http.DefaultTransport.
	Transport http.RoundTripper

	// Logger receives the store's log lines; nil means slog.Default().
	Logger *slog.Logger
}

// Store reads blobs and manifests from an upstream registry.
type Store struct {
	base     *url.URL
	registry name.Registry
	keychain authn.Keychain
	helper   HeaderSource
	redirect bool
	rawBase  http.RoundTripper
	logger   *slog.Logger

	// transports holds one authenticated transport per repository, because registry tokens
	// are scoped to a repository.
	mu         sync.Mutex
	transports map[string]http.RoundTripper
}

var (
	_ blobstore.Store      = (*Store)(nil)
	_ blobstore.Redirector = (*Store)(nil)
)

// New returns a store that reads from the registry at opts.URL. It sends no request.
func New(opts Options) (*Store, error) {
	base, err := url.Parse(opts.URL)
	if err != nil || base.Host == "" || (base.Scheme != "http" && base.Scheme != "https") {
		return nil, fmt.Errorf("invalid upstream registry URL %q; use http(s)://host[:port]", opts.URL)
	}
	if base.Path != "" && base.Path != "/" {
		return nil, fmt.Errorf("upstream registry URL %q has a path; the registry API is always at /v2/, so give only http(s)://host[:port]", opts.URL)
	}
	if base.Scheme == "http" && !opts.AllowPlainHTTP && !isLoopback(base.Hostname()) {
		return nil, fmt.Errorf("upstream registry URL %q uses plain HTTP to a host that is not loopback; use https, or allow it explicitly with --upstream-plain-http", opts.URL)
	}

	var nameOpts []name.Option
	if base.Scheme == "http" {
		nameOpts = append(nameOpts, name.Insecure)
	}
	registry, err := name.NewRegistry(base.Host, nameOpts...)
	if err != nil {
		return nil, fmt.Errorf("invalid upstream registry host %q: %w", base.Host, err)
	}

	s := &Store{
		base:       &url.URL{Scheme: base.Scheme, Host: base.Host},
		registry:   registry,
		keychain:   opts.Keychain,
		helper:     opts.CredentialHelper,
		redirect:   opts.Redirect,
		rawBase:    opts.Transport,
		logger:     opts.Logger,
		transports: map[string]http.RoundTripper{},
	}
	if s.keychain == nil {
		s.keychain = authn.DefaultKeychain
	}
	if s.rawBase == nil {
		s.rawBase = http.DefaultTransport.(*http.Transport).Clone()
	}
	if s.logger == nil {
		s.logger = slog.Default()
	}
	return s, nil
}

// URL returns the upstream registry's base URL.
func (s *Store) URL() string { return s.base.String() }

// ReadOnly reports that the store accepts no uploads, so a chain sends them to another store.
func (s *Store) ReadOnly() bool { return true }

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// transportFor returns the authenticated transport for repository, creating it on first use.
// Creating it pings the upstream and, for token auth, fetches a pull token.
func (s *Store) transportFor(ctx context.Context, repository string) (http.RoundTripper, error) {
	if s.helper != nil {
		return &helperTransport{base: s.rawBase, upstream: s.base, helper: s.helper}, nil
	}

	s.mu.Lock()
	rt, ok := s.transports[repository]
	s.mu.Unlock()
	if ok {
		return rt, nil
	}

	// The handshake runs without the lock, so a slow upstream delays only the requests of
	// this repository. Two requests may both shake hands, and the later transport wins.
	authenticator, err := s.keychain.Resolve(s.registry)
	if err != nil {
		return nil, fmt.Errorf("read credentials for upstream registry %s from the docker config: %w", s.base.Host, err)
	}
	scope := "repository:" + repository + ":pull"
	rt, err = transport.NewWithContext(ctx, s.registry, authenticator, s.rawBase, []string{scope})
	if err != nil {
		return nil, s.authError(repository, err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.transports) >= maxTransports {
		// Dropping them all is crude but bounded, and costs one handshake per repository.
		clear(s.transports)
	}
	s.transports[repository] = rt
	return rt, nil
}

// authError explains a failed handshake with the upstream: its rejection of our credentials
// reads differently from a network failure.
func (s *Store) authError(repository string, err error) error {
	var terr *transport.Error
	if errors.As(err, &terr) && (terr.StatusCode == http.StatusUnauthorized || terr.StatusCode == http.StatusForbidden) {
		return fmt.Errorf("upstream registry %s rejected our credentials for repository %s (HTTP %d); check its entry in the docker config or the --credential-helper: %w",
			s.base.Host, repository, terr.StatusCode, err)
	}
	return fmt.Errorf("connect to upstream registry %s for repository %s: %w", s.base.Host, repository, err)
}

// helperTransport adds the credential helper's headers to requests for the upstream host.
type helperTransport struct {
	base     http.RoundTripper
	upstream *url.URL
	helper   HeaderSource
}

func (t *helperTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != t.upstream.Scheme || req.URL.Host != t.upstream.Host {
		return t.base.RoundTrip(req)
	}
	// One URI for the whole registry, so the helper runs once per registry rather than once
	// per blob; credential helpers hand out host-wide credentials.
	headers, err := t.helper.Get(req.Context(), t.upstream.String()+"/v2/")
	if err != nil {
		return nil, fmt.Errorf("credential helper for upstream registry %s: %w", t.upstream.Host, err)
	}
	req = req.Clone(req.Context())
	for key, values := range headers {
		req.Header[http.CanonicalHeaderKey(key)] = values
	}
	return t.base.RoundTrip(req)
}

// do sends a request for path of repository and returns the response. With follow unset, a
// redirect is returned as is.
func (s *Store) do(ctx context.Context, method, repository, path string, header http.Header, follow bool) (*http.Response, error) {
	rt, err := s.transportFor(ctx, repository)
	if err != nil {
		return nil, err
	}
	client := &http.Client{Transport: rt}
	if !follow {
		client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}

	target := s.base.String() + "/v2/" + repository + path
	req, err := http.NewRequestWithContext(ctx, method, target, nil)
	if err != nil {
		return nil, err
	}
	for key, values := range header {
		req.Header[key] = values
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, target, err)
	}
	return resp, nil
}

// repository returns the repository the request names, which the upstream's URLs need.
func repository(ctx context.Context, dgst digest.Digest) (string, error) {
	repository, ok := blobstore.RepositoryFrom(ctx)
	if !ok {
		// Without a repository the upstream cannot be asked, so the blob is not found here.
		return "", fmt.Errorf("blob %s: no repository to look it up in the upstream registry: %w", dgst, blobstore.ErrNotFound)
	}
	return repository, nil
}

// Stat returns the blob's size from a HEAD request to the upstream.
//
// NOTE: an unreachable upstream is an error, not ErrNotFound. While it is down, a chain
// responds 500 to HEAD of a blob no other store holds, and pushes through the chain fail.
func (s *Store) Stat(ctx context.Context, dgst digest.Digest) (int64, error) {
	if err := blobstore.ValidateDigest(dgst); err != nil {
		return 0, err
	}
	repo, err := repository(ctx, dgst)
	if err != nil {
		return 0, err
	}
	resp, err := s.do(ctx, http.MethodHead, repo, "/blobs/"+dgst.String(), nil, true)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, s.statusError(resp, "blob", repo, dgst.String())
	}
	if resp.ContentLength < 0 {
		return 0, fmt.Errorf("upstream registry %s sent no Content-Length for blob %s in %s", s.base.Host, dgst, repo)
	}
	return resp.ContentLength, nil
}

// Open streams the blob from the upstream, from offset. The response body is returned as is,
// so nothing is buffered.
func (s *Store) Open(ctx context.Context, dgst digest.Digest, offset int64) (io.ReadCloser, error) {
	if err := blobstore.ValidateDigest(dgst); err != nil {
		return nil, err
	}
	repo, err := repository(ctx, dgst)
	if err != nil {
		return nil, err
	}
	header := http.Header{}
	if offset > 0 {
		header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	resp, err := s.do(ctx, http.MethodGet, repo, "/blobs/"+dgst.String(), header, true)
	if err != nil {
		return nil, err
	}

	switch {
	case resp.StatusCode == http.StatusPartialContent && offset > 0:
		return resp.Body, nil
	case resp.StatusCode == http.StatusOK && offset == 0:
		return newVerifier(resp.Body, resp.ContentLength, dgst, s.base.Host), nil
	case resp.StatusCode == http.StatusOK:
		// The upstream ignored the range, so skip to offset here.
		if _, err := io.CopyN(io.Discard, resp.Body, offset); err != nil {
			resp.Body.Close()
			return nil, fmt.Errorf("skip to offset %d of blob %s from upstream registry %s: %w", offset, dgst, s.base.Host, err)
		}
		return resp.Body, nil
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && offset > 0:
		resp.Body.Close()
		return io.NopCloser(strings.NewReader("")), nil
	default:
		defer resp.Body.Close()
		return nil, s.statusError(resp, "blob", repo, dgst.String())
	}
}

// RedirectURL returns the location the upstream redirects a blob GET to when Options.Redirect
// is set and that location is on another host, such as the upstream's object storage. A
// redirect to the upstream host itself would need our credentials, so the store follows it
// and streams the bytes instead.
func (s *Store) RedirectURL(ctx context.Context, dgst digest.Digest) (string, bool, error) {
	if !s.redirect {
		return "", false, nil
	}
	repo, err := repository(ctx, dgst)
	if err != nil {
		return "", false, err
	}
	resp, err := s.do(ctx, http.MethodGet, repo, "/blobs/"+dgst.String(), nil, false)
	if err != nil {
		return "", false, err
	}
	resp.Body.Close()

	switch resp.StatusCode {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
	case http.StatusOK:
		return "", false, nil
	default:
		return "", false, s.statusError(resp, "blob", repo, dgst.String())
	}

	location, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil || resp.Header.Get("Location") == "" {
		return "", false, fmt.Errorf("upstream registry %s redirected blob %s to an invalid Location %q", s.base.Host, dgst, resp.Header.Get("Location"))
	}
	if location.Host == s.base.Host {
		return "", false, nil
	}
	s.logger.Debug("passing on the upstream's redirect", "digest", dgst.String(), "repository", repo, "host", location.Host)
	return location.String(), true, nil
}

// Create reports ErrReadOnly: uploads go to another store of the chain.
func (s *Store) Create(ctx context.Context) (blobstore.Writer, error) {
	return nil, fmt.Errorf("upstream registry %s: %w", s.base.Host, blobstore.ErrReadOnly)
}

// Resume reports ErrReadOnly, because the store never starts an upload session.
func (s *Store) Resume(ctx context.Context, id string) (blobstore.Writer, error) {
	return nil, fmt.Errorf("upstream registry %s: %w", s.base.Host, blobstore.ErrReadOnly)
}

// Delete reports ErrReadOnly: the store never deletes from the upstream.
func (s *Store) Delete(ctx context.Context, dgst digest.Digest) error {
	return fmt.Errorf("upstream registry %s: %w", s.base.Host, blobstore.ErrReadOnly)
}

// verifier hashes a whole blob as it is read and returns an error with its last bytes when
// they do not match the digest. It checks once Content-Length bytes have arrived, because the
// registry stops reading there and never sees io.EOF. The client's own digest check rejects the
// bytes too, but the registry's log then names the upstream that sent them.
type verifier struct {
	io.ReadCloser
	digester  digest.Digester
	expected  digest.Digest
	remaining int64 // bytes until Content-Length, or -1 when the upstream sent none
	checked   bool
	host      string
}

func newVerifier(body io.ReadCloser, contentLength int64, expected digest.Digest, host string) *verifier {
	return &verifier{
		ReadCloser: body,
		digester:   expected.Algorithm().Digester(),
		expected:   expected,
		remaining:  contentLength,
		host:       host,
	}
}

func (v *verifier) Read(p []byte) (int, error) {
	n, err := v.ReadCloser.Read(p)
	v.digester.Hash().Write(p[:n])
	if v.remaining >= 0 {
		v.remaining -= int64(n)
	}
	if !v.checked && (v.remaining == 0 || (v.remaining < 0 && err == io.EOF)) {
		v.checked = true
		if actual := v.digester.Digest(); actual != v.expected {
			return n, fmt.Errorf("upstream registry %s sent bytes with digest %s for blob %s", v.host, actual, v.expected)
		}
	}
	return n, err
}
