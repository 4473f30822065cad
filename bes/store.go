package bes

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

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

// BoltStore is a Store in one bbolt file. Jobs are JSON values keyed by job ID; a second
// bucket indexes the unfinished ones so that a restart does not scan every old job.
type BoltStore struct {
	db *bolt.DB
}

// OpenBoltStore opens or creates the queue file jobs.db in dir. Only one process can
// hold it, so a second server on the same dir fails after a second.
func OpenBoltStore(dir string) (*BoltStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open job store: create data directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, "jobs.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, InitialMmapSize: 64 << 20, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, fmt.Errorf("open job store %s: %w; is another img bes using this --data-dir?", path, err)
	}

	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(jobsBucket); err != nil {
			return err
		}
		_, err := tx.CreateBucketIfNotExists(unfinishedBucket)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open job store %s: create buckets: %w", path, err)
	}
	return &BoltStore{db: db}, nil
}

func (s *BoltStore) Create(job Job) (bool, error) {
	created := false
	err := s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(jobsBucket).Get([]byte(job.ID)) != nil {
			return nil
		}
		created = true
		return putJob(tx, job)
	})
	if err != nil {
		return false, fmt.Errorf("store job %s: %w", jobName(job), err)
	}
	return created, nil
}

func (s *BoltStore) Put(job Job) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		return putJob(tx, job)
	})
	if err != nil {
		return fmt.Errorf("store job %s: %w", jobName(job), err)
	}
	return nil
}

func putJob(tx *bolt.Tx, job Job) error {
	value, err := json.Marshal(job)
	if err != nil {
		return err
	}

	key := []byte(job.ID)
	if err := tx.Bucket(jobsBucket).Put(key, value); err != nil {
		return err
	}

	unfinished := tx.Bucket(unfinishedBucket)
	if job.State.Final() {
		return unfinished.Delete(key)
	}
	return unfinished.Put(key, nil)
}

func (s *BoltStore) Get(id string) (Job, bool, error) {
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

func (s *BoltStore) Close() error {
	if s.db == nil {
		return errors.New("close job store: already closed")
	}
	err := s.db.Close()
	s.db = nil
	return err
}

// jobName names a job in messages: its target and invocation.
func jobName(job Job) string {
	return fmt.Sprintf("%s (invocation %s)", job.Label, job.InvocationID)
}
