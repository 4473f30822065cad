// Package registry is an OCI distribution-spec v1.1 registry server. Handlers live in one file
// per resource (blobs, uploads, manifests, tags, referrers, catalog), routes in routes.go and
// error codes in errors.go. Blob bytes go through a blobstore.Store and everything else through
// a metadata.Store, so the server itself keeps no state.
package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rulesimg/img/registry/blobstore"
	"github.com/rulesimg/img/registry/metadata"
)

// DefaultChunkMinLength is the OCI-Chunk-Min-Length announced when Options leaves it zero:
// 5 MiB, the smallest part an S3 multipart upload accepts, so a store that forwards chunks to
// object storage can pass them on as they come.
const DefaultChunkMinLength = 5 << 20

// maxManifestSize is the largest manifest accepted, the 4 MiB limit that the distribution spec
// recommends registries support at least.
const maxManifestSize = 4 << 20

// Options configures a Server.
type Options struct {
	Blobs    blobstore.Store
	Metadata metadata.Store

	// Logger receives one line per request; nil means slog.Default().
	Logger *slog.Logger

	// ChunkMinLength is announced in OCI-Chunk-Min-Length; 0 means DefaultChunkMinLength, and
	// a negative value announces nothing.
	ChunkMinLength int64

	// Registerer receives the request metrics; nil registers nothing.
	Registerer prometheus.Registerer

	// ManifestSources supply manifests that Metadata lacks, looked up in order, for example an
	// upstream registry read through. Manifests they return are served, not stored.
	ManifestSources []ManifestSource

	// UploadIdleTimeout ends an upload request whose client sends nothing for this long, which
	// releases the session for a retry; 0 means DefaultUploadIdleTimeout and a negative value
	// waits forever.
	UploadIdleTimeout time.Duration
}

// ManifestSource supplies manifests by repository and reference (a tag or a digest). It returns
// an error matching metadata.ErrManifestUnknown when it has none.
type ManifestSource interface {
	Manifest(ctx context.Context, repository, reference string) (metadata.Manifest, error)
}

// DefaultUploadIdleTimeout is the UploadIdleTimeout when Options leaves it zero.
const DefaultUploadIdleTimeout = 2 * time.Minute

// Server serves the /v2/ API.
type Server struct {
	blobs             blobstore.Store
	metadata          metadata.Store
	logger            *slog.Logger
	chunkMinLength    int64
	uploadIdleTimeout time.Duration
	manifestSources   []ManifestSource

	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// New returns a Server for the given stores.
func New(opts Options) (*Server, error) {
	if opts.Blobs == nil || opts.Metadata == nil {
		return nil, errors.New("registry: Options.Blobs and Options.Metadata are required")
	}
	s := &Server{
		blobs:             opts.Blobs,
		metadata:          opts.Metadata,
		logger:            opts.Logger,
		chunkMinLength:    opts.ChunkMinLength,
		uploadIdleTimeout: opts.UploadIdleTimeout,
		manifestSources:   opts.ManifestSources,
	}
	if s.logger == nil {
		s.logger = slog.Default()
	}
	if s.chunkMinLength == 0 {
		s.chunkMinLength = DefaultChunkMinLength
	}
	if s.uploadIdleTimeout == 0 {
		s.uploadIdleTimeout = DefaultUploadIdleTimeout
	}

	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "img_registry_requests_total",
		Help: "Registry API requests by route, method and HTTP status.",
	}, []string{"route", "method", "status"})
	s.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "img_registry_request_duration_seconds",
		Help:    "Registry API request duration by route and method.",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 9),
	}, []string{"route", "method"})
	if opts.Registerer != nil {
		for _, collector := range []prometheus.Collector{s.requests, s.duration} {
			if err := opts.Registerer.Register(collector); err != nil {
				return nil, fmt.Errorf("registry: register metrics: %w", err)
			}
		}
	}
	return s, nil
}

// requestInfo collects what the log line and metrics of one request need. Handlers fill it in
// as they learn the ids.
type requestInfo struct {
	route      string
	repository string
	digest     string
	uploadID   string
	err        error
}

type requestInfoKey struct{}

func requestInfoFrom(r *http.Request) *requestInfo {
	if info, ok := r.Context().Value(requestInfoKey{}).(*requestInfo); ok {
		return info
	}
	return &requestInfo{}
}

// statusRecorder remembers the status and body size a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusRecorder) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *statusRecorder) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ServeHTTP routes a request, then logs it and counts it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	info := &requestInfo{}
	r = r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, info))
	recorder := &statusRecorder{ResponseWriter: w}
	recorder.Header().Set("Docker-Distribution-API-Version", "registry/2.0")

	s.route(recorder, r)

	status := recorder.status
	if status == 0 {
		status = http.StatusOK
	}
	s.requests.WithLabelValues(info.route, r.Method, strconv.Itoa(status)).Inc()
	s.duration.WithLabelValues(info.route, r.Method).Observe(time.Since(start).Seconds())
	s.logRequest(r, info, status, recorder.bytes, time.Since(start))
}

func (s *Server) logRequest(r *http.Request, info *requestInfo, status int, bytes int64, elapsed time.Duration) {
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", status),
		slog.Int64("bytes", bytes),
		slog.Duration("duration", elapsed),
	}
	if info.repository != "" {
		attrs = append(attrs, slog.String("repository", info.repository))
	}
	if info.digest != "" {
		attrs = append(attrs, slog.String("digest", info.digest))
	}
	if info.uploadID != "" {
		attrs = append(attrs, slog.String("upload_id", info.uploadID))
	}

	level := slog.LevelInfo
	if info.err != nil {
		attrs = append(attrs, slog.String("error", info.err.Error()))
		if status >= 500 {
			level = slog.LevelError
		}
	}
	s.logger.LogAttrs(r.Context(), level, "registry request", attrs...)
}
