package bes

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
)

// Store keeps push jobs durably. Every method that writes returns only after the write
// is on disk, because the server acknowledges a build event only after the job it
// creates is stored. BoltStore is the embedded default; a shared database can take its
// place when several servers share one queue.
type Store interface {
	// Create stores job unless a job with the same ID exists, and reports whether it
	// stored it, so that a replayed event does not create a second job.
	Create(job Job) (created bool, err error)
	// Put replaces the stored job that has job.ID.
	Put(job Job) error
	Get(id string) (Job, bool, error)
	// ListInvocation returns the jobs of one invocation in ID order.
	ListInvocation(invocationID string) ([]Job, error)
	// ListUnfinished returns the jobs whose state is not final, for resuming.
	ListUnfinished() ([]Job, error)
	// DeleteFinishedBefore deletes final jobs that finished before cutoff and returns
	// how many it deleted.
	DeleteFinishedBefore(cutoff time.Time) (int, error)
	Close() error
}

var (
	jobsBucket       = []byte("jobs")
	unfinishedBucket = []byte("unfinished")
)

// BoltStore is a Store in one bbolt file, jobs.db, with a write-ahead log in front of it,
// the files jobs.log.0 and jobs.log.1. Jobs are JSON values keyed by job ID. A second
// bucket indexes the unfinished ones, so that a restart does not scan every old job.
//
// Create is on the path of a build event's acknowledgement, so it returns once the new job
// is in the log (see jobLog), and an applier goroutine moves jobs into the database
// afterwards. Writes go through one committer goroutine that puts all writes that arrived
// while the previous one synced into the next write, so a Create waits for at most the sync
// in progress and its own. Put, which records a push's outcome, goes through the applier and
// returns once the database has it. Reads first wait for the applier to catch up, so they
// see every write that returned before them.
type BoltStore struct {
	db *bolt.DB
	// logs are used in turn: when the current one is full, the other one starts over.
	// Its jobs were logged a whole log ago, so the applier has long moved them into the
	// database and the switch does not wait. A single log had to wait at every restart
	// until its last jobs reached the database.
	logs    [2]*jobLog
	current int
	// logged is the submitted count after the last write to each log: once the applier
	// is done with that many writes, the database has every job of the log.
	logged [2]int64
	// syncInterval is BoltStoreOptions.SyncInterval.
	syncInterval time.Duration
	log          *slog.Logger
	// slowSync is the duration from which warnIfSlow reports a synced log write, and
	// lastSlowWarning the time of its last report. Only the committer uses them.
	slowSync        time.Duration
	lastSlowWarning time.Time

	writes chan *storeWrite
	// closing is closed by Close, and stopped when the committer has returned.
	closing chan struct{}
	stopped chan struct{}

	mu      sync.Mutex
	applied *sync.Cond
	// queue holds the writes the applier has not taken yet, and pending the IDs of created
	// jobs that the database does not have yet.
	queue   []*storeWrite
	pending map[string]bool
	// submitted and done count the writes handed to the applier and those it finished.
	submitted, done int64
	// shutdown is set by Close once the committer has stopped, and applierDone is closed
	// when the applier returns.
	shutdown    bool
	applierDone chan struct{}
}

// storeWrite is one Create or Put.
type storeWrite struct {
	job   Job
	value []byte
	// create stores the job only when its ID is new, and sets created when it did.
	create  bool
	created bool
	// result receives the outcome: for a Create once the log has it, for a Put once the
	// database has it.
	result chan error
}

const (
	// jobLogCapacity is the size of each log file. A push job takes about 1 KiB, so a log
	// holds thousands of them.
	jobLogCapacity = 8 << 20
	// maxGroupedWrites bounds one log write, so a burst cannot make it, and every Create
	// that waits for it, arbitrarily long. An applier transaction takes up to four times
	// as many writes.
	maxGroupedWrites = 256
	// applyInterval is the least time between two commits of the applier. Reads wait for
	// the applier, so it is also how much older than a write a read can be delayed.
	applyInterval = 20 * time.Millisecond
	// slowJobLogSync is ten times the acknowledgement latency that img bes aims for. A
	// synced log write that takes longer is logged, because every event that creates a
	// push job waits for one.
	slowJobLogSync = 100 * time.Millisecond
)

// BoltStoreOptions configure a BoltStore. The zero value is the safe default.
type BoltStoreOptions struct {
	// SyncInterval, when positive, lets Create return once a new job is written to the
	// operating system, and syncs the log every SyncInterval instead. A crash of the
	// process then loses nothing, but a crash of the machine can lose the jobs of the
	// last interval. Zero syncs every new job before Create returns.
	SyncInterval time.Duration
	// SyncSeconds, when set, observes the duration of every sync of the log, as
	// Metrics.JobLogSync does.
	SyncSeconds prometheus.Observer
	// Logger receives the store's warnings and errors (slog.Default()).
	Logger *slog.Logger

	// logCapacity replaces jobLogCapacity in tests, and slowSync slowJobLogSync.
	logCapacity int64
	slowSync    time.Duration
}

// OpenBoltStore opens or creates the queue files jobs.db, jobs.log.0 and jobs.log.1 in dir
// and moves the jobs that the logs hold into the database. Only one process can hold the
// database, so a second server on the same dir fails after a second.
func OpenBoltStore(dir string, opts BoltStoreOptions) (*BoltStore, error) {
	logCapacity := opts.logCapacity
	if logCapacity == 0 {
		logCapacity = jobLogCapacity
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open job store: create data directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, "jobs.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, InitialMmapSize: 64 << 20, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, fmt.Errorf("open job store %s: %w; is another img bes using this --data-dir?", path, err)
	}
	var logs [2]*jobLog
	var records [][]byte
	closeAll := func() {
		for _, log := range logs {
			if log != nil {
				log.Close()
			}
		}
		db.Close()
	}
	for i := range logs {
		log, logRecords, err := openJobLog(filepath.Join(dir, fmt.Sprintf("jobs.log.%d", i)), logCapacity)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("open job store: %w", err)
		}
		log.syncSeconds = opts.SyncSeconds
		logs[i] = log
		records = append(records, logRecords...)
	}

	// Jobs in the logs may be missing from the database after a crash. Creating them
	// again changes nothing for those that it has, and the order does not matter.
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(jobsBucket); err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(unfinishedBucket); err != nil {
			return err
		}
		for _, record := range records {
			var job Job
			if err := json.Unmarshal(record, &job); err != nil {
				return fmt.Errorf("job in a log of %s: %w", dir, err)
			}
			if tx.Bucket(jobsBucket).Get([]byte(job.ID)) != nil {
				continue
			}
			if err := putJob(tx, job.ID, record, job.State); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("open job store %s: %w", path, err)
	}
	for _, log := range logs {
		log.restart()
	}

	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	slowSync := opts.slowSync
	if slowSync == 0 {
		slowSync = slowJobLogSync
	}
	s := &BoltStore{
		db:           db,
		logs:         logs,
		syncInterval: opts.SyncInterval,
		log:          logger,
		slowSync:     slowSync,
		writes:       make(chan *storeWrite),
		closing:      make(chan struct{}),
		stopped:      make(chan struct{}),
		pending:      map[string]bool{},
		applierDone:  make(chan struct{}),
	}
	s.applied = sync.NewCond(&s.mu)
	go s.commit()
	go s.apply()
	if s.syncInterval > 0 {
		go s.syncLogs()
	}
	return s, nil
}

func (s *BoltStore) Create(job Job) (bool, error) {
	write, err := s.write(job, true)
	if err != nil {
		return false, err
	}
	return write.created, nil
}

func (s *BoltStore) Put(job Job) error {
	_, err := s.write(job, false)
	return err
}

// write hands job to the committer and waits for the result.
func (s *BoltStore) write(job Job, create bool) (*storeWrite, error) {
	// A job that bbolt would reject must not fail the other writes of its group.
	if len(job.ID) == 0 || len(job.ID) > bolt.MaxKeySize {
		return nil, fmt.Errorf("store job %s: the job id has %d bytes, outside bbolt's key limit of 1 to %d", jobName(job), len(job.ID), bolt.MaxKeySize)
	}
	value, err := json.Marshal(job)
	if err != nil {
		return nil, fmt.Errorf("store job %s: %w", jobName(job), err)
	}
	write := &storeWrite{job: job, value: value, create: create, result: make(chan error, 1)}
	select {
	case s.writes <- write:
	case <-s.closing:
		return nil, fmt.Errorf("store job %s: the job store is closed", jobName(job))
	}
	if err := <-write.result; err != nil {
		return nil, fmt.Errorf("store job %s: %w", jobName(job), err)
	}
	return write, nil
}

// commit runs until Close. It takes the writes that are waiting, logs the new jobs among
// them in one write and hands all of them to the applier, in the order they came.
func (s *BoltStore) commit() {
	defer close(s.stopped)
	for {
		var group []*storeWrite
		select {
		case write := <-s.writes:
			group = append(group, write)
		case <-s.closing:
			return
		}
	gather:
		for len(group) < maxGroupedWrites {
			select {
			case write := <-s.writes:
				group = append(group, write)
			default:
				break gather
			}
		}

		created, err := s.newJobs(group)
		if err == nil {
			err = s.logJobs(created)
		}
		answer := slices.Clone(group)
		if err != nil {
			group = slices.DeleteFunc(group, func(write *storeWrite) bool { return write.create || write.created })
		}
		// Submitted before the callers hear back, so that a read right after a Create
		// waits for the applier to put the job in the database.
		s.submit(group)
		if len(created) > 0 && err == nil {
			s.mu.Lock()
			s.logged[s.current] = s.submitted
			s.mu.Unlock()
		}
		// Every Create hears back once the log has its job, a replayed one too. Those
		// that went to the database directly hear back from the applier.
		for _, write := range answer {
			if write.create {
				write.result <- err
			}
		}
	}
}

// newJobs marks the creates of group whose job is new, in the database, the applier's
// queue and group itself, and returns them.
func (s *BoltStore) newJobs(group []*storeWrite) ([]*storeWrite, error) {
	// The lock comes first: the applier clears a job from pending under it after the
	// commit, so a snapshot taken under the lock has every job that pending lacks.
	s.mu.Lock()
	defer s.mu.Unlock()
	var created []*storeWrite
	seen := map[string]bool{}
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, write := range group {
			if !write.create {
				continue
			}
			id := write.job.ID
			if seen[id] || s.pending[id] || tx.Bucket(jobsBucket).Get([]byte(id)) != nil {
				continue
			}
			seen[id] = true
			write.created = true
			created = append(created, write)
		}
		return nil
	})
	return created, err
}

// logJobs writes the jobs of created to the current log, switching to the other log when
// it is full. Jobs that do not fit even into an empty log go to the database directly: they
// become plain writes whose caller hears back from the applier.
func (s *BoltStore) logJobs(created []*storeWrite) error {
	if len(created) == 0 {
		return nil
	}
	payloads := make([][]byte, len(created))
	for i, write := range created {
		payloads[i] = write.value
	}
	log := s.logs[s.current]
	if !log.fitsEmpty(payloads) {
		for _, write := range created {
			write.create = false
		}
		return nil
	}
	if !log.fits(payloads) {
		s.current = 1 - s.current
		log = s.logs[s.current]
		s.catchUpTo(s.logged[s.current])
		log.restart()
	}
	start := time.Now()
	if err := log.append(payloads, s.syncInterval == 0); err != nil {
		return err
	}
	if s.syncInterval == 0 {
		s.warnIfSlow(log, len(payloads), time.Since(start))
	}
	return nil
}

// warnIfSlow logs a synced write of count jobs to log that took elapsed, when that is
// slowSync or more, at most once a minute.
func (s *BoltStore) warnIfSlow(log *jobLog, count int, elapsed time.Duration) {
	if elapsed < s.slowSync || time.Since(s.lastSlowWarning) < time.Minute {
		return
	}
	s.lastSlowWarning = time.Now()
	s.log.Warn("writing push jobs to disk was slow, and the build events that created them waited for it; "+
		"put --data-dir on a disk without other heavy writers, or set --job-sync-interval",
		"path", log.path, "jobs", count, "duration", elapsed, "threshold", s.slowSync)
}

// syncLogs syncs the logs every syncInterval until Close.
func (s *BoltStore) syncLogs() {
	ticker := time.NewTicker(s.syncInterval)
	defer ticker.Stop()
	for {
		select {
		case <-s.closing:
			return
		case <-ticker.C:
		}
		for _, log := range s.logs {
			if err := log.syncIfWritten(); err != nil {
				s.log.Error("syncing the push job log failed; jobs of the last interval are lost if the machine crashes before the next sync", "error", err)
			}
		}
	}
}

// submit queues group for the applier. Created jobs stay in pending until the applier has
// put them in the database.
func (s *BoltStore) submit(group []*storeWrite) {
	if len(group) == 0 {
		return
	}
	s.mu.Lock()
	for _, write := range group {
		if write.created {
			s.pending[write.job.ID] = true
		}
	}
	s.queue = append(s.queue, group...)
	s.submitted += int64(len(group))
	s.mu.Unlock()
	s.applied.Broadcast()
}

// apply moves queued writes into the database, one transaction for all writes waiting at
// the time, until Close and an empty queue.
func (s *BoltStore) apply() {
	defer close(s.applierDone)
	var last time.Time
	for {
		// Commits at most every applyInterval: each one costs two fdatasyncs and the CPU
		// of writing back its pages, and no acknowledgement waits for it.
		time.Sleep(applyInterval - time.Since(last))
		last = time.Now()

		s.mu.Lock()
		for len(s.queue) == 0 && !s.shutdown {
			s.applied.Wait()
		}
		if len(s.queue) == 0 {
			s.mu.Unlock()
			return
		}
		group := s.queue[:min(len(s.queue), 4*maxGroupedWrites)]
		s.queue = s.queue[len(group):]
		s.mu.Unlock()

		err := s.db.Update(func(tx *bolt.Tx) error {
			for _, write := range group {
				if write.create && !write.created {
					continue
				}
				if err := putJob(tx, write.job.ID, write.value, write.job.State); err != nil {
					return err
				}
			}
			return nil
		})

		s.mu.Lock()
		for _, write := range group {
			if write.created {
				delete(s.pending, write.job.ID)
			}
		}
		s.done += int64(len(group))
		s.mu.Unlock()
		s.applied.Broadcast()

		for _, write := range group {
			if !write.create {
				write.result <- err
			}
		}
		if err != nil {
			// TODO: logged jobs that fail here reach the database only at the next start,
			// from the log. Until then the results page does not list them.
			s.log.Error("moving push jobs into the job database failed", "count", len(group), "error", err)
		}
	}
}

// catchUp waits until the applier has finished every write submitted before the call.
func (s *BoltStore) catchUp() {
	s.mu.Lock()
	target := s.submitted
	s.mu.Unlock()
	s.catchUpTo(target)
}

// catchUpTo waits until the applier has finished count writes.
func (s *BoltStore) catchUpTo(count int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.done < count {
		s.applied.Wait()
	}
}

func putJob(tx *bolt.Tx, id string, value []byte, state State) error {
	key := []byte(id)
	if err := tx.Bucket(jobsBucket).Put(key, value); err != nil {
		return err
	}

	unfinished := tx.Bucket(unfinishedBucket)
	if state.Final() {
		return unfinished.Delete(key)
	}
	return unfinished.Put(key, nil)
}

func (s *BoltStore) Get(id string) (Job, bool, error) {
	s.catchUp()
	var job Job
	found := false
	err := s.db.View(func(tx *bolt.Tx) error {
		value := tx.Bucket(jobsBucket).Get([]byte(id))
		if value == nil {
			return nil
		}
		found = true
		return json.Unmarshal(value, &job)
	})
	if err != nil {
		return Job{}, false, fmt.Errorf("read job %q: %w", id, err)
	}
	return job, found, nil
}

func (s *BoltStore) ListInvocation(invocationID string) ([]Job, error) {
	s.catchUp()
	prefix := []byte(invocationPrefix(invocationID))
	var jobs []Job
	err := s.db.View(func(tx *bolt.Tx) error {
		cursor := tx.Bucket(jobsBucket).Cursor()
		for key, value := cursor.Seek(prefix); key != nil && bytes.HasPrefix(key, prefix); key, value = cursor.Next() {
			var job Job
			if err := json.Unmarshal(value, &job); err != nil {
				return fmt.Errorf("job %q: %w", key, err)
			}
			jobs = append(jobs, job)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list jobs of invocation %s: %w", invocationID, err)
	}
	return jobs, nil
}

func (s *BoltStore) ListUnfinished() ([]Job, error) {
	s.catchUp()
	var jobs []Job
	err := s.db.View(func(tx *bolt.Tx) error {
		all := tx.Bucket(jobsBucket)
		return tx.Bucket(unfinishedBucket).ForEach(func(key, _ []byte) error {
			value := all.Get(key)
			if value == nil {
				return nil
			}
			var job Job
			if err := json.Unmarshal(value, &job); err != nil {
				return fmt.Errorf("job %q: %w", key, err)
			}
			jobs = append(jobs, job)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list unfinished jobs: %w", err)
	}
	return jobs, nil
}

func (s *BoltStore) DeleteFinishedBefore(cutoff time.Time) (int, error) {
	deleted := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		jobs := tx.Bucket(jobsBucket)
		var expired [][]byte
		err := jobs.ForEach(func(key, value []byte) error {
			var job Job
			if err := json.Unmarshal(value, &job); err != nil {
				return fmt.Errorf("job %q: %w", key, err)
			}
			if job.State.Final() && job.FinishedAt.Before(cutoff) {
				expired = append(expired, bytes.Clone(key))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, key := range expired {
			if err := jobs.Delete(key); err != nil {
				return err
			}
		}
		deleted = len(expired)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("delete jobs finished before %s: %w", cutoff.Format(time.RFC3339), err)
	}
	return deleted, nil
}

// Close stops taking writes, waits until the database has every job, and closes the files.
func (s *BoltStore) Close() error {
	if s.db == nil {
		return errors.New("close job store: already closed")
	}
	close(s.closing)
	<-s.stopped
	s.mu.Lock()
	s.shutdown = true
	s.mu.Unlock()
	s.applied.Broadcast()
	<-s.applierDone
	for _, log := range s.logs {
		log.Close()
	}
	err := s.db.Close()
	s.db = nil
	return err
}

// jobName names a job in messages: its target and invocation.
func jobName(job Job) string {
	return fmt.Sprintf("%s (invocation %s)", job.Label, job.InvocationID)
}
