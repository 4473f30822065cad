package bes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rulesimg/img/image"
)

// QueueOptions configure a Queue. Zero fields take the defaults in parentheses.
type QueueOptions struct {
	// Workers is the number of pushes that run at once (4).
	Workers int
	// MaxAttempts is how often a push is tried before it fails for good (5).
	MaxAttempts int
	// InitialBackoff is the wait before the first retry (1s). It doubles with every
	// further retry up to MaxBackoff (1m), with up to 20% random jitter added.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// Retention is how long finished jobs stay listed; older ones are deleted at Start
	// and every hour after. Zero keeps them forever.
	Retention time.Duration

	Logger  *slog.Logger
	Metrics *Metrics
}

func (o QueueOptions) withDefaults() QueueOptions {
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 5
	}
	if o.InitialBackoff <= 0 {
		o.InitialBackoff = time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(prometheus.NewRegistry())
	}
	return o
}

// errSkipped ends an attempt whose push request names a strategy other than bes.
var errSkipped = errors.New("push request names another strategy")

// Queue runs push jobs from a Store with a bounded number of workers. A job is stored
// before Enqueue returns and stays unfinished in the store until a worker finishes it,
// so jobs that were queued or running when the process stopped run again after Start.
type Queue struct {
	store   Store
	fetcher RequestFetcher
	pusher  Pusher
	opts    QueueOptions
	log     *slog.Logger
	metrics *Metrics

	mu      sync.Mutex
	cond    *sync.Cond
	ready   []Job
	timers  map[string]*time.Timer
	changed chan struct{}
	closing bool
	// running holds the jobs that workers run now. Their running state stays in memory,
	// so a push start costs no disk write that would delay the next acknowledgement.
	// After a crash, such a job is still queued in the store.
	running map[string]Job
	// closed is closed when Close starts.
	closed chan struct{}

	// runCtx is the context of every push; Close cancels it only when in-flight pushes
	// outlast the shutdown deadline.
	runCtx    context.Context
	cancelRun context.CancelFunc
	workers   sync.WaitGroup
}

// NewQueue creates a queue over store. Call Start to resume stored jobs and run workers.
func NewQueue(store Store, fetcher RequestFetcher, pusher Pusher, opts QueueOptions) *Queue {
	opts = opts.withDefaults()
	q := &Queue{
		store:   store,
		fetcher: fetcher,
		pusher:  pusher,
		opts:    opts,
		log:     opts.Logger,
		metrics: opts.Metrics,
		timers:  map[string]*time.Timer{},
		changed: make(chan struct{}),
		running: map[string]Job{},
		closed:  make(chan struct{}),
	}
	q.cond = sync.NewCond(&q.mu)
	q.runCtx, q.cancelRun = context.WithCancel(context.Background())
	return q
}

// Start queues every unfinished job in the store and starts the workers.
func (q *Queue) Start() error {
	jobs, err := q.store.ListUnfinished()
	if err != nil {
		return fmt.Errorf("resume push jobs: %w", err)
	}

	for _, job := range jobs {
		q.log.Info("resuming push job", "invocation_id", job.InvocationID, "target", job.Label, "state", job.State, "attempts", job.Attempts)
		job.State = StateQueued
		q.schedule(job)
	}

	for range q.opts.Workers {
		q.workers.Add(1)
		go q.work()
	}
	if q.opts.Retention > 0 {
		q.workers.Add(1)
		go q.prune()
	}
	return nil
}

// pruneInterval is how often finished jobs older than Retention are deleted.
const pruneInterval = time.Hour

// prune deletes expired finished jobs now and every pruneInterval until Close.
func (q *Queue) prune() {
	defer q.workers.Done()
	ticker := time.NewTicker(pruneInterval)
	defer ticker.Stop()
	for {
		deleted, err := q.store.DeleteFinishedBefore(time.Now().Add(-q.opts.Retention))
		if err != nil {
			q.log.Error("deleting old push jobs failed", "error", err)
		} else if deleted > 0 {
			q.log.Info("deleted old push jobs", "count", deleted, "retention", q.opts.Retention)
		}

		select {
		case <-ticker.C:
		case <-q.closed:
			return
		}
	}
}

// Enqueue stores job as queued and hands it to a worker. When a job with the same ID
// exists, as for a replayed build event, it changes nothing and returns false.
func (q *Queue) Enqueue(job Job) (bool, error) {
	job.State = StateQueued
	if job.CreatedAt.IsZero() {
		job.CreatedAt = time.Now().UTC()
	}

	created, err := q.store.Create(job)
	if err != nil {
		return false, err
	}
	if !created {
		return false, nil
	}

	q.metrics.jobsCreated.Inc()
	q.log.Info("push job queued", "invocation_id", job.InvocationID, "target", job.Label, "request", job.RequestURI)
	q.schedule(job)
	q.notify()
	return true, nil
}

// Wait blocks until every job of the invocation is final or ctx ends, and returns the
// jobs as last read.
func (q *Queue) Wait(ctx context.Context, invocationID string) ([]Job, error) {
	for {
		q.mu.Lock()
		changed := q.changed
		q.mu.Unlock()

		jobs, err := q.Jobs(invocationID)
		if err != nil {
			return nil, err
		}
		if allFinal(jobs) {
			return jobs, nil
		}

		select {
		case <-changed:
		case <-ctx.Done():
			return jobs, ctx.Err()
		}
	}
}

func allFinal(jobs []Job) bool {
	for _, job := range jobs {
		if !job.State.Final() {
			return false
		}
	}
	return true
}

// Jobs returns the jobs of one invocation as stored, with the state of running jobs.
func (q *Queue) Jobs(invocationID string) ([]Job, error) {
	jobs, err := q.store.ListInvocation(invocationID)
	if err != nil {
		return nil, err
	}

	q.mu.Lock()
	defer q.mu.Unlock()
	for i, job := range jobs {
		if running, ok := q.running[job.ID]; ok && !job.State.Final() {
			jobs[i] = running
		}
	}
	return jobs, nil
}

// Close stops the workers from taking jobs and waits for running pushes until ctx ends.
// Pushes still running then are cancelled and stay unfinished in the store, as do
// queued jobs and jobs waiting for a retry, so the next Start resumes all of them.
func (q *Queue) Close(ctx context.Context) error {
	q.mu.Lock()
	if !q.closing {
		close(q.closed)
	}
	q.closing = true
	for id, timer := range q.timers {
		timer.Stop()
		delete(q.timers, id)
	}
	q.cond.Broadcast()
	q.mu.Unlock()

	done := make(chan struct{})
	go func() {
		q.workers.Wait()
		close(done)
	}()

	select {
	case <-done:
		q.cancelRun()
		return nil
	case <-ctx.Done():
		q.log.Warn("cancelling running pushes at shutdown; they resume on the next start")
		q.cancelRun()
		<-done
		return ctx.Err()
	}
}

// schedule makes job ready now or, when it waits for a retry, at its NextAttempt.
func (q *Queue) schedule(job Job) {
	q.mu.Lock()
	defer q.mu.Unlock()

	if q.closing {
		return
	}

	delay := time.Until(job.NextAttempt)
	if delay <= 0 {
		q.ready = append(q.ready, job)
		q.metrics.jobsQueued.Inc()
		q.cond.Signal()
		return
	}

	q.metrics.jobsQueued.Inc()
	q.timers[job.ID] = time.AfterFunc(delay, func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		if _, pending := q.timers[job.ID]; !pending {
			return
		}
		delete(q.timers, job.ID)
		q.ready = append(q.ready, job)
		q.cond.Signal()
	})
}

// next blocks until a job is ready, and returns false once the queue is closing.
func (q *Queue) next() (Job, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()

	for len(q.ready) == 0 && !q.closing {
		q.cond.Wait()
	}
	if q.closing {
		return Job{}, false
	}

	job := q.ready[0]
	q.ready[0] = Job{}
	q.ready = q.ready[1:]
	q.metrics.jobsQueued.Dec()
	return job, true
}

func (q *Queue) setRunning(job Job, running bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if running {
		q.running[job.ID] = job
	} else {
		delete(q.running, job.ID)
	}
}

func (q *Queue) notify() {
	q.mu.Lock()
	close(q.changed)
	q.changed = make(chan struct{})
	q.mu.Unlock()
}

func (q *Queue) work() {
	defer q.workers.Done()
	for {
		job, ok := q.next()
		if !ok {
			return
		}
		q.run(job)
	}
}

// run makes one attempt at job and stores the outcome: final, or queued for a retry.
func (q *Queue) run(job Job) {
	log := q.log.With("invocation_id", job.InvocationID, "target", job.Label)

	job.State = StateRunning
	job.Attempts++
	job.Error = ""
	if job.StartedAt.IsZero() {
		job.StartedAt = time.Now().UTC()
	}
	q.setRunning(job, true)
	q.notify()

	q.metrics.jobsRunning.Inc()
	start := time.Now()
	result, err := q.attempt(q.runCtx, &job, log)
	elapsed := time.Since(start)
	q.metrics.jobsRunning.Dec()

	switch {
	case err == nil:
		job.State = StateSucceeded
		job.Digest = result.Digest
		if len(result.References) > 0 {
			job.References = result.References
		}
		q.metrics.pushSeconds.WithLabelValues("succeeded").Observe(elapsed.Seconds())
		log.Info("push succeeded", "digest", job.Digest, "references", job.References, "attempt", job.Attempts, "duration", elapsed)

	case errors.Is(err, errSkipped):
		job.State = StateSkipped
		q.metrics.pushSeconds.WithLabelValues("skipped").Observe(elapsed.Seconds())
		log.Debug("push target left alone: its push request names another strategy", "strategy", job.Strategy)

	case q.runCtx.Err() != nil:
		// Shutdown cancelled the push: keep it unfinished so the next start runs it.
		job.State = StateQueued
		job.Attempts--
		job.Error = ""
		q.metrics.pushSeconds.WithLabelValues("interrupted").Observe(elapsed.Seconds())
		log.Warn("push interrupted by shutdown; it resumes on the next start", "error", err)

	case IsPermanent(err) || job.Attempts >= q.opts.MaxAttempts:
		job.State = StateFailed
		job.Error = err.Error()
		q.metrics.pushSeconds.WithLabelValues("failed").Observe(elapsed.Seconds())
		log.Error("push failed", "error", err, "attempt", job.Attempts, "permanent", IsPermanent(err))

	default:
		job.State = StateQueued
		job.Error = err.Error()
		delay := q.backoff(job.Attempts)
		job.NextAttempt = time.Now().Add(delay).UTC()
		q.metrics.jobsRetried.Inc()
		q.metrics.pushSeconds.WithLabelValues("retried").Observe(elapsed.Seconds())
		log.Warn("push failed; retrying", "error", err, "attempt", job.Attempts, "max_attempts", q.opts.MaxAttempts, "retry_in", delay)
	}

	if job.State.Final() {
		job.FinishedAt = time.Now().UTC()
		job.NextAttempt = time.Time{}
		q.metrics.jobsFinished.WithLabelValues(string(job.State)).Inc()
	}
	if err := q.store.Put(job); err != nil {
		log.Error("recording push outcome failed; the job runs again after a restart", "state", job.State, "error", err)
	}
	q.setRunning(job, false)
	if job.State == StateQueued && q.runCtx.Err() == nil {
		q.schedule(job)
	}
	q.notify()
}

// attempt reads and decodes the push request of job, then pushes it. It records the
// strategy and references on job, so the results page shows them even when the push
// fails.
func (q *Queue) attempt(ctx context.Context, job *Job, log *slog.Logger) (result PushResult, err error) {
	defer func() {
		if recovered := recover(); recovered != nil {
			log.Error("push panicked", "panic", recovered, "stack", string(debug.Stack()))
			err = Permanent(fmt.Errorf("push of %s panicked: %v", job.Label, recovered))
		}
	}()

	data, err := q.readRequest(ctx, job)
	if err != nil {
		return PushResult{}, err
	}

	request, err := image.DecodeRequest(bytes.NewReader(data), "")
	if err != nil {
		return PushResult{}, Permanent(fmt.Errorf("push request %s of %s is invalid: %w; rebuild with rules that match this img version", job.RequestName, job.Label, err))
	}
	job.Strategy = request.Strategy
	job.References = references(request)
	if request.Strategy != image.StrategyBES {
		return PushResult{}, errSkipped
	}

	// The files map names blob files in the push target's runfiles on the build
	// machine, which this server cannot read, so every blob comes from the remote cache.
	request.Files = nil

	return q.pusher.Push(ctx, PushJob{
		InvocationID: job.InvocationID,
		BuildID:      job.BuildID,
		Label:        job.Label,
		RequestURI:   job.RequestURI,
		Request:      data,
		Decoded:      request,
	})
}

func (q *Queue) readRequest(ctx context.Context, job *Job) ([]byte, error) {
	if job.RequestContents != nil {
		return job.RequestContents, nil
	}
	if job.RequestURI == "" {
		return nil, Permanent(fmt.Errorf("push request %s of %s has neither a URI nor contents in the build event", job.RequestName, job.Label))
	}
	if q.fetcher == nil {
		return nil, Permanent(fmt.Errorf("push request %s of %s is at %s, but no remote cache client is configured", job.RequestName, job.Label, job.RequestURI))
	}

	data, err := q.fetcher.Fetch(ctx, job.RequestURI)
	if err != nil {
		return nil, fmt.Errorf("read push request of %s from %s: %w", job.Label, job.RequestURI, err)
	}
	return data, nil
}

// references lists registry/repository:tag for every destination tag of request, and
// registry/repository for a destination without tags.
func references(request *image.Request) []string {
	var refs []string
	for _, dest := range request.Destinations {
		if len(dest.Tags) == 0 {
			refs = append(refs, dest.String())
			continue
		}
		for _, tag := range dest.Tags {
			refs = append(refs, dest.String()+":"+tag)
		}
	}
	return refs
}

func (q *Queue) backoff(attempts int) time.Duration {
	delay := q.opts.InitialBackoff
	for i := 1; i < attempts && delay < q.opts.MaxBackoff; i++ {
		delay *= 2
	}
	delay = min(delay, q.opts.MaxBackoff)
	jitter := time.Duration(rand.Int64N(int64(delay)/5 + 1))
	return delay + jitter
}
