// Package credhelper is a client for the Bazel credential-helper protocol: it runs
// `<helper> get`, writes {"uri": "..."} to the helper's standard input and reads
// {"headers": {...}, "expires": "..."} from its standard output.
//
// The same helper serves registry hosts and the remote cache, exactly as Bazel's
// --credential_helper does, so users configure one helper for both.
package credhelper

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/textproto"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

const (
	// DefaultTimeout matches the default of Bazel's --credential_helper_timeout.
	DefaultTimeout = 10 * time.Second

	// DefaultCacheDuration matches the default of Bazel's --credential_helper_cache_duration:
	// how long a response without "expires" stays cached.
	DefaultCacheDuration = 30 * time.Minute

	// maxStdoutBytes bounds the response that is read from a helper. Real responses are a few
	// KiB, so a larger one is a misbehaving helper rather than a credential.
	maxStdoutBytes = 1 << 20

	// maxStderrBytes bounds how much of the helper's standard error is kept for error messages.
	maxStderrBytes = 4 << 10

	// killGrace is how long Wait waits for the helper's output pipes to close after the helper
	// was killed, since a grandchild (a shell script's `sleep`) may still hold them open.
	killGrace = time.Second
)

// Helper runs one credential helper and caches its responses per URI.
//
// The cache key is the full request URI, as in Bazel (its credential cache is a
// Cache<URI, GetCredentialsResponse>): a helper may return different headers for different
// paths on one host, so a per-host key would hand one path's headers to another.
// A Helper is safe for concurrent use.
type Helper struct {
	path          string
	timeout       time.Duration
	cacheDuration time.Duration
	logger        *slog.Logger
	now           func() time.Time

	mu      sync.Mutex
	entries map[string]*entry
}

// entry is one URI's cached response, or the helper run that is producing it.
type entry struct {
	done    chan struct{} // closed when the run has finished and the fields below are set
	headers http.Header
	expires time.Time // zero when the response must not be reused
	err     error
}

// Option configures a Helper.
type Option func(*Helper)

// WithTimeout sets how long one helper run may take before it is killed (default 10s, like
// Bazel's --credential_helper_timeout).
func WithTimeout(d time.Duration) Option {
	return func(h *Helper) { h.timeout = d }
}

// WithCacheDuration sets how long a response without "expires" is reused (default 30m, like
// Bazel's --credential_helper_cache_duration). Zero runs the helper for every Get that does not
// join a run already in progress.
func WithCacheDuration(d time.Duration) Option {
	return func(h *Helper) { h.cacheDuration = d }
}

// WithLogger sets the logger for helper runs. Logs name the helper and the URI, never headers.
func WithLogger(logger *slog.Logger) Option {
	return func(h *Helper) { h.logger = logger }
}

// New returns a Helper that runs the executable at path: an absolute or relative file path
// when it contains a slash, otherwise a name looked up in PATH when Get runs it.
func New(path string, opts ...Option) *Helper {
	h := &Helper{
		path:          path,
		timeout:       DefaultTimeout,
		cacheDuration: DefaultCacheDuration,
		logger:        slog.New(slog.DiscardHandler),
		now:           time.Now,
		entries:       make(map[string]*entry),
	}
	for _, opt := range opts {
		opt(h)
	}
	return h
}

// Path returns the helper path as given to New.
func (h *Helper) Path() string {
	return h.path
}

// Get returns the headers the helper supplies for uri. A cached response is returned until
// its "expires" time, or for the cache duration when the helper gave none. Concurrent calls
// for one URI share a single helper run. Each caller stops waiting when its own ctx ends,
// but the run goes on for the callers still waiting, bounded by the timeout.
// A failed run is not cached, so the next Get runs the helper again.
func (h *Helper) Get(ctx context.Context, uri string) (http.Header, error) {
	for {
		e, started := h.entryFor(uri)
		if started {
			go h.run(context.WithoutCancel(ctx), uri, e)
		}

		select {
		case <-e.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("credential helper %s: get credentials for %s: %w", h.path, uri, context.Cause(ctx))
		}

		if e.err != nil {
			return nil, e.err
		}
		if !started && !e.expires.IsZero() && !h.now().Before(e.expires) {
			// The response expired between the lookup and now; run the helper again.
			continue
		}
		return e.headers.Clone(), nil
	}
}

// entryFor returns the entry to wait for, and whether the caller must start its run.
func (h *Helper) entryFor(uri string) (*entry, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()

	if e, ok := h.entries[uri]; ok {
		select {
		case <-e.done:
			if e.err == nil && h.now().Before(e.expires) {
				return e, false
			}
		default:
			return e, false
		}
	}

	e := &entry{done: make(chan struct{})}
	h.entries[uri] = e
	return e, true
}

// run runs the helper for uri, fills e and publishes it.
func (h *Helper) run(ctx context.Context, uri string, e *entry) {
	start := h.now()
	headers, expires, err := h.invoke(ctx, uri)

	e.headers = headers
	e.err = err
	switch {
	case err != nil:
		h.logger.Warn("credential helper failed", "helper", h.path, "uri", uri, "error", err)
	case expires.IsZero():
		e.expires = start.Add(h.cacheDuration)
	default:
		e.expires = expires
	}

	h.mu.Lock()
	if err != nil || !start.Before(e.expires) {
		// Failed runs and responses that are already stale serve only the callers waiting now.
		if h.entries[uri] == e {
			delete(h.entries, uri)
		}
		e.expires = time.Time{}
	}
	h.mu.Unlock()
	close(e.done)

	if err == nil {
		h.logger.Debug("credential helper ran", "helper", h.path, "uri", uri,
			"duration", h.now().Sub(start), "header_count", len(headers), "cached_until", e.expires)
	}
}

// response is the JSON the helper prints. Unknown fields are ignored, as the protocol requires.
type response struct {
	Headers map[string][]string `json:"headers"`
	Expires string              `json:"expires"`
}

// invoke runs the helper process once.
func (h *Helper) invoke(ctx context.Context, uri string) (http.Header, time.Time, error) {
	path, err := h.resolve()
	if err != nil {
		return nil, time.Time{}, err
	}

	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()

	request, err := json.Marshal(map[string]string{"uri": uri})
	if err != nil {
		return nil, time.Time{}, h.errorf(uri, "encode request: %w", err)
	}

	var stdout, stderr limitedBuffer
	stdout.limit = maxStdoutBytes
	stderr.limit = maxStderrBytes
	cmd := exec.CommandContext(ctx, path, "get")
	cmd.Stdin = bytes.NewReader(request)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.WaitDelay = killGrace
	startInOwnProcessGroup(cmd)

	err = cmd.Run()
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return nil, time.Time{}, h.errorf(uri, "timed out after %s and was killed%s; make the helper faster or raise its timeout", h.timeout, stderrSuffix(&stderr))
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return nil, time.Time{}, h.errorf(uri, "%s%s", exitErr.ProcessState, stderrSuffix(&stderr))
	}
	if err != nil {
		return nil, time.Time{}, h.errorf(uri, "run: %w", err)
	}
	if stdout.truncated {
		return nil, time.Time{}, h.errorf(uri, "printed more than %d bytes", maxStdoutBytes)
	}

	return h.parse(uri, stdout.Bytes(), &stderr)
}

// parse decodes the helper's standard output. Error messages never quote the output,
// because it contains the credentials.
func (h *Helper) parse(uri string, stdout []byte, stderr *limitedBuffer) (http.Header, time.Time, error) {
	if len(bytes.TrimSpace(stdout)) == 0 {
		return nil, time.Time{}, h.errorf(uri, "exited with status 0 but printed no response%s", stderrSuffix(stderr))
	}

	var resp response
	if err := json.Unmarshal(stdout, &resp); err != nil {
		var syntaxErr *json.SyntaxError
		var typeErr *json.UnmarshalTypeError
		detail := "invalid JSON"
		if errors.As(err, &syntaxErr) {
			detail = fmt.Sprintf("invalid JSON at byte %d", syntaxErr.Offset)
		} else if errors.As(err, &typeErr) {
			detail = fmt.Sprintf("field %q has the wrong type", typeErr.Field)
		}
		return nil, time.Time{}, h.errorf(uri, "printed a response that is not of the form {\"headers\": {\"Name\": [\"value\"]}}: %s%s", detail, stderrSuffix(stderr))
	}

	var expires time.Time
	if resp.Expires != "" {
		var err error
		expires, err = time.Parse(time.RFC3339, resp.Expires)
		if err != nil {
			return nil, time.Time{}, h.errorf(uri, "printed \"expires\": %q, which is not an RFC 3339 time such as 2026-12-04T12:00:00Z", resp.Expires)
		}
	}

	headers := make(http.Header, len(resp.Headers))
	for name, values := range resp.Headers {
		key := textproto.CanonicalMIMEHeaderKey(name)
		headers[key] = append(headers[key], values...)
	}
	return headers, expires, nil
}

// resolve finds the helper executable.
func (h *Helper) resolve() (string, error) {
	if h.path == "" {
		return "", errors.New("credential helper: no helper path given")
	}

	if strings.Contains(h.path, "/") {
		info, err := os.Stat(h.path)
		if err != nil {
			return "", fmt.Errorf("credential helper %s: %w", h.path, err)
		}
		if info.IsDir() || info.Mode()&0o111 == 0 {
			return "", fmt.Errorf("credential helper %s: not an executable file; check the path and its execute permission", h.path)
		}
		return h.path, nil
	}

	path, err := exec.LookPath(h.path)
	if err != nil {
		return "", fmt.Errorf("credential helper %s: not found in PATH; give its absolute path or add its folder to PATH: %w", h.path, err)
	}
	return path, nil
}

func (h *Helper) errorf(uri, format string, args ...any) error {
	return fmt.Errorf("credential helper %s: get credentials for %s: "+format, append([]any{h.path, uri}, args...)...)
}

// stderrSuffix formats the helper's trimmed standard error for an error message.
func stderrSuffix(stderr *limitedBuffer) string {
	text := strings.TrimSpace(stderr.String())
	if text == "" {
		return ""
	}
	if stderr.truncated {
		text += " …"
	}
	return "; stderr: " + text
}

// limitedBuffer keeps the first limit bytes written to it and drops the rest, so a helper
// cannot make the caller hold unbounded output.
type limitedBuffer struct {
	bytes.Buffer
	limit     int
	truncated bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	room := b.limit - b.Len()
	if room < len(p) {
		b.truncated = true
		if room > 0 {
			b.Buffer.Write(p[:room])
		}
		return len(p), nil
	}
	return b.Buffer.Write(p)
}
