package bes

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the server's Prometheus collectors. NewMetrics registers them on the
// given registerer, so tests can use a registry of their own.
type Metrics struct {
	events        *prometheus.CounterVec
	ackSeconds    prometheus.Histogram
	streams       prometheus.Gauge
	streamErrors  *prometheus.CounterVec
	jobsCreated   prometheus.Counter
	jobsFinished  *prometheus.CounterVec
	jobsRetried   prometheus.Counter
	jobsRunning   prometheus.Gauge
	jobsQueued    prometheus.Gauge
	pushSeconds   *prometheus.HistogramVec
	replayedEvent prometheus.Counter
	jobLogSync    prometheus.Histogram
}

// NewMetrics creates the collectors and registers them on registerer.
func NewMetrics(registerer prometheus.Registerer) *Metrics {
	m := &Metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "img_bes_build_events_total",
			Help: "Build events received on tool event streams, by Bazel event payload type.",
		}, []string{"type"}),
		ackSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "img_bes_event_ack_seconds",
			Help:    "Time from receiving a tool build event to sending its acknowledgement, in seconds.",
			Buckets: prometheus.ExponentialBuckets(0.00001, 4, 10),
		}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "img_bes_streams_active",
			Help: "Open PublishBuildToolEventStream calls.",
		}),
		streamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "img_bes_stream_errors_total",
			Help: "Tool event streams that ended with an error, by gRPC code.",
		}, []string{"code"}),
		jobsCreated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "img_bes_push_jobs_created_total",
			Help: "Push jobs created from build events; replayed events do not count again.",
		}),
		jobsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "img_bes_push_jobs_finished_total",
			Help: "Push jobs that reached a final state, by state (succeeded, failed, skipped).",
		}, []string{"state"}),
		jobsRetried: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "img_bes_push_retries_total",
			Help: "Push attempts that failed with a transient error and were scheduled again.",
		}),
		jobsRunning: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "img_bes_push_jobs_running",
			Help: "Push jobs that a worker is running now.",
		}),
		jobsQueued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "img_bes_push_jobs_waiting",
			Help: "Push jobs waiting for a worker or for their retry time.",
		}),
		pushSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "img_bes_push_attempt_seconds",
			Help:    "Duration of one push attempt, fetching the push request included, in seconds, by outcome.",
			Buckets: prometheus.ExponentialBuckets(0.01, 3, 10),
		}, []string{"outcome"}),
		replayedEvent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "img_bes_replayed_events_total",
			Help: "Build events acknowledged again without processing, because Bazel resent a sequence number already processed.",
		}),
		jobLogSync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "img_bes_job_log_sync_seconds",
			Help: "Duration of one fdatasync of the push job log, in seconds. With the default --job-sync-interval 0, " +
				"an event that creates a push job waits for the sync in progress and its own.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
	}

	registerer.MustRegister(m.events, m.ackSeconds, m.streams, m.streamErrors, m.jobsCreated,
		m.jobsFinished, m.jobsRetried, m.jobsRunning, m.jobsQueued, m.pushSeconds, m.replayedEvent,
		m.jobLogSync)
	return m
}

// JobLogSync observes the syncs of the job log, for BoltStoreOptions.SyncSeconds. It tells
// a slow disk apart from other causes of slow acknowledgements.
func (m *Metrics) JobLogSync() prometheus.Observer {
	return m.jobLogSync
}
