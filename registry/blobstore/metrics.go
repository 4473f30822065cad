package blobstore

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts blob store operations. One Metrics serves every store it wraps, distinguished
// by the store label.
type Metrics struct {
	operations *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	bytesRead  *prometheus.CounterVec
}

// NewMetrics registers the blob store metrics with registerer.
func NewMetrics(registerer prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		operations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "img_blobstore_operations_total",
			Help: "Blob store operations by store, operation and result (ok, not_found, error).",
		}, []string{"store", "operation", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "img_blobstore_operation_duration_seconds",
			Help:    "Blob store operation duration by store and operation; Open counts until the reader is returned.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9),
		}, []string{"store", "operation"}),
		bytesRead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "img_blobstore_read_bytes_total",
			Help: "Bytes read from blob stores by store.",
		}, []string{"store"}),
	}
	for _, collector := range []prometheus.Collector{m.operations, m.duration, m.bytesRead} {
		if err := registerer.Register(collector); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Wrap returns store with its operations counted under the label name.
func (m *Metrics) Wrap(store Store, name string) Store {
	return &metered{Store: store, metrics: m, name: name}
}

type metered struct {
	Store
	metrics *Metrics
	name    string
}

func (s *metered) observe(operation string, start time.Time, err error) {
	result := "ok"
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrUploadUnknown):
		result = "not_found"
	case err != nil:
		result = "error"
	}
	s.metrics.operations.WithLabelValues(s.name, operation, result).Inc()
	s.metrics.duration.WithLabelValues(s.name, operation).Observe(time.Since(start).Seconds())
}

func (s *metered) Stat(ctx context.Context, dgst digest.Digest) (int64, error) {
	start := time.Now()
	size, err := s.Store.Stat(ctx, dgst)
	s.observe("stat", start, err)
	return size, err
}

func (s *metered) Open(ctx context.Context, dgst digest.Digest, offset int64) (io.ReadCloser, error) {
	start := time.Now()
	reader, err := s.Store.Open(ctx, dgst, offset)
	s.observe("open", start, err)
	if err != nil {
		return nil, err
	}
	return &countingReader{ReadCloser: reader, counter: s.metrics.bytesRead.WithLabelValues(s.name)}, nil
}

func (s *metered) Create(ctx context.Context) (Writer, error) {
	start := time.Now()
	w, err := s.Store.Create(ctx)
	s.observe("create", start, err)
	if err != nil {
		return nil, err
	}
	return &meteredWriter{Writer: w, store: s}, nil
}

func (s *metered) Resume(ctx context.Context, id string) (Writer, error) {
	start := time.Now()
	w, err := s.Store.Resume(ctx, id)
	s.observe("resume", start, err)
	if err != nil {
		return nil, err
	}
	return &meteredWriter{Writer: w, store: s}, nil
}

func (s *metered) Delete(ctx context.Context, dgst digest.Digest) error {
	start := time.Now()
	err := s.Store.Delete(ctx, dgst)
	s.observe("delete", start, err)
	return err
}

func (s *metered) RedirectURL(ctx context.Context, dgst digest.Digest) (string, bool, error) {
	if redirector, ok := s.Store.(Redirector); ok {
		return redirector.RedirectURL(ctx, dgst)
	}
	return "", false, nil
}

// ReadOnly forwards the wrapped store's declaration, so a chain of metered stores still sends
// uploads past read-only ones.
func (s *metered) ReadOnly() bool { return IsReadOnly(s.Store) }

type meteredWriter struct {
	Writer
	store *metered
}

func (w *meteredWriter) Commit(ctx context.Context, expected digest.Digest) error {
	start := time.Now()
	err := w.Writer.Commit(ctx, expected)
	w.store.observe("commit", start, err)
	return err
}

type countingReader struct {
	io.ReadCloser
	counter prometheus.Counter
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	r.counter.Add(float64(n))
	return n, err
}
