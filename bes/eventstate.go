package bes

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// FileRecord is a file from a NamedSetOfFiles event: its path below the execution
// root and its location, a bytestream:// URI or inline contents.
type FileRecord struct {
	Name     string `json:"name"`
	URI      string `json:"uri,omitempty"`
	Contents []byte `json:"contents,omitempty"`
}

// NamedSetRecord is the part of a NamedSetOfFiles event that can lead to a push
// request: its JSON files and the ids of its nested sets.
type NamedSetRecord struct {
	Files  []FileRecord `json:"files,omitempty"`
	Nested []string     `json:"nested,omitempty"`
}

// InvocationState is the stored event state of one invocation.
type InvocationState struct {
	NamedSets map[string]NamedSetRecord
	// PushTargets maps the label of each configured push target to its kind.
	PushTargets map[string]string
}

// EventState keeps the build event state that later events of an invocation refer to,
// so that a restarted server resolves push targets whose earlier events the previous
// process acknowledged. Bazel resends only unacknowledged events after a restart.
type EventState interface {
	PutNamedSet(invocationID, setID string, set NamedSetRecord) error
	PutPushTarget(invocationID, label, kind string) error
	// LoadInvocation returns the stored state of an invocation, empty when none is stored.
	LoadInvocation(invocationID string) (InvocationState, error)
	DeleteInvocation(invocationID string) error
	// DeleteIdleBefore deletes the state of invocations last written before cutoff and
	// returns how many it deleted.
	DeleteIdleBefore(cutoff time.Time) (int, error)
	Close() error
}

// Keys inside an invocation's bucket of BoltEventState.
const (
	touchedKey       = "touched"
	namedSetPrefix   = "set\x00"
	pushTargetPrefix = "target\x00"
)

// BoltEventState is an EventState in the bbolt file events.db, with one bucket per
// invocation. It writes without fsync: a write survives a crash of the server process,
// which is the restart this state exists for, but not a crash of the machine.
// Skipping fsync keeps these writes, one per relevant build event, off the disk's
// latency, because they sit on the acknowledgement path.
type BoltEventState struct {
	db *bolt.DB
}

// OpenBoltEventState opens or creates events.db in dir.
func OpenBoltEventState(dir string) (*BoltEventState, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open event state: create data directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, "events.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, NoSync: true, NoGrowSync: true, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, fmt.Errorf("open event state %s: %w; is another img bes using this --data-dir?", path, err)
	}
	return &BoltEventState{db: db}, nil
}

func (s *BoltEventState) PutNamedSet(invocationID, setID string, set NamedSetRecord) error {
	value, err := json.Marshal(set)
	if err != nil {
		return err
	}
	return s.put(invocationID, namedSetPrefix+setID, value)
}

func (s *BoltEventState) PutPushTarget(invocationID, label, kind string) error {
	return s.put(invocationID, pushTargetPrefix+label, []byte(kind))
}

func (s *BoltEventState) put(invocationID, key string, value []byte) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		bucket, err := tx.CreateBucketIfNotExists([]byte(invocationID))
		if err != nil {
			return err
		}
		if err := bucket.Put([]byte(touchedKey), strconv.AppendInt(nil, time.Now().UnixNano(), 10)); err != nil {
			return err
		}
		return bucket.Put([]byte(key), value)
	})
	if err != nil {
		return fmt.Errorf("store event state of invocation %s: %w", invocationID, err)
	}
	return nil
}

func (s *BoltEventState) LoadInvocation(invocationID string) (InvocationState, error) {
	state := InvocationState{NamedSets: map[string]NamedSetRecord{}, PushTargets: map[string]string{}}
	err := s.db.View(func(tx *bolt.Tx) error {
		bucket := tx.Bucket([]byte(invocationID))
		if bucket == nil {
			return nil
		}
		return bucket.ForEach(func(key, value []byte) error {
			name := string(key)
			if setID, ok := strings.CutPrefix(name, namedSetPrefix); ok {
				var set NamedSetRecord
				if err := json.Unmarshal(value, &set); err != nil {
					return fmt.Errorf("file set %q: %w", setID, err)
				}
				state.NamedSets[setID] = set
			}
			if label, ok := strings.CutPrefix(name, pushTargetPrefix); ok {
				state.PushTargets[label] = string(value)
			}
			return nil
		})
	})
	if err != nil {
		return InvocationState{}, fmt.Errorf("load event state of invocation %s: %w", invocationID, err)
	}
	return state, nil
}

func (s *BoltEventState) DeleteInvocation(invocationID string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		err := tx.DeleteBucket([]byte(invocationID))
		if errors.Is(err, bolt.ErrBucketNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("delete event state of invocation %s: %w", invocationID, err)
	}
	return nil
}

func (s *BoltEventState) DeleteIdleBefore(cutoff time.Time) (int, error) {
	deleted := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		var idle [][]byte
		err := tx.ForEach(func(name []byte, bucket *bolt.Bucket) error {
			touched, _ := strconv.ParseInt(string(bucket.Get([]byte(touchedKey))), 10, 64)
			if time.Unix(0, touched).Before(cutoff) {
				idle = append(idle, append([]byte(nil), name...))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, name := range idle {
			if err := tx.DeleteBucket(name); err != nil {
				return err
			}
		}
		deleted = len(idle)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("delete idle event state: %w", err)
	}
	return deleted, nil
}

func (s *BoltEventState) Close() error {
	return s.db.Close()
}
