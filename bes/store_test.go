package bes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// TestBoltStoreAppliesLogAtOpen stands for a crash after a job reached a log and before
// the applier put it into the database: the next open must find it, in either log.
func TestBoltStoreAppliesLogAtOpen(t *testing.T) {
	dir := t.TempDir()
	log, records, err := openJobLog(filepath.Join(dir, "jobs.log.1"), jobLogCapacity)
	if err != nil {
		t.Fatal(err)
	}
	if len(records) != 0 {
		t.Fatalf("a new log has %d records", len(records))
	}
	var payloads [][]byte
	for _, label := range []string{"//:a", "//:b"} {
		payloads = append(payloads, jobJSON(t, testJob("inv-log", label, "bes")))
	}
	if err := log.append(payloads, true); err != nil {
		t.Fatal(err)
	}
	log.Close()

	store, err := OpenBoltStore(dir, BoltStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	jobs, err := store.ListUnfinished()
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 2 {
		t.Errorf("store has %d unfinished jobs after the open, expected the 2 of the log", len(jobs))
	}
}

// TestJobLogStopsAtTornRecord checks that reading ends at a record whose checksum fails,
// as after a crash during a write.
func TestJobLogStopsAtTornRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jobs.log")
	log, _, err := openJobLog(path, 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	if err := log.append([][]byte{[]byte(`"first"`), []byte(`"second"`), []byte(`"third"`)}, true); err != nil {
		t.Fatal(err)
	}
	log.Close()

	// The second record's payload starts after the first record and its own header.
	file, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := file.WriteAt([]byte("X"), jobLogHeader+int64(len(`"first"`))+jobLogHeader+1); err != nil {
		t.Fatal(err)
	}
	file.Close()

	log, records, err := openJobLog(path, 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	if len(records) != 1 || string(records[0]) != `"first"` {
		t.Errorf("read %q from a log with a torn second record, expected only the first", records)
	}
}

// TestJobLogIgnoresOlderGeneration checks that records left from before a restart of the
// log, past the newer ones, are not read again.
func TestJobLogIgnoresOlderGeneration(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jobs.log")
	log, _, err := openJobLog(path, 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	if err := log.append([][]byte{[]byte(`"old-1"`), []byte(`"old-2"`), []byte(`"old-3"`)}, true); err != nil {
		t.Fatal(err)
	}
	// The new record is as long as the first old one, so the next old record follows it
	// intact and only its generation distinguishes it.
	log.restart()
	if err := log.append([][]byte{[]byte(`"new-1"`)}, true); err != nil {
		t.Fatal(err)
	}
	log.Close()

	log, records, err := openJobLog(path, 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	if len(records) != 1 || string(records[0]) != `"new-1"` {
		t.Errorf("read %q, expected only the record of the newest generation", records)
	}
}

// TestBoltStoreLogStartsOver fills a small log many times over and checks that no job is
// lost, that a replayed job is not created twice, and that reads see every write.
func TestBoltStoreLogStartsOver(t *testing.T) {
	dir := t.TempDir()
	store, err := OpenBoltStore(dir, BoltStoreOptions{logCapacity: 8 << 10})
	if err != nil {
		t.Fatal(err)
	}
	const count = 200
	for i := range count {
		created, err := store.Create(testJob("inv-wrap", fmt.Sprintf("//:t%03d", i), "bes"))
		if err != nil {
			t.Fatal(err)
		}
		if !created {
			t.Fatalf("job %d not created", i)
		}
	}
	jobs, err := store.ListInvocation("inv-wrap")
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != count {
		t.Errorf("store lists %d jobs right after creating %d", len(jobs), count)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}

	store, err = OpenBoltStore(dir, BoltStoreOptions{logCapacity: 8 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	created, err := store.Create(testJob("inv-wrap", "//:t007", "bes"))
	if err != nil {
		t.Fatal(err)
	}
	if created {
		t.Error("a replayed job was created a second time after a restart")
	}
	jobs, err = store.ListUnfinished()
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != count {
		t.Errorf("store has %d unfinished jobs after a restart, expected %d", len(jobs), count)
	}
}

// TestBoltStoreJobLargerThanLog checks that a job too large for the log still gets stored.
func TestBoltStoreJobLargerThanLog(t *testing.T) {
	store, err := OpenBoltStore(t.TempDir(), BoltStoreOptions{logCapacity: 4 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	job := testJob("inv-large", "//:large", "bes")
	job.RequestContents = make([]byte, 64<<10)
	created, err := store.Create(job)
	if err != nil {
		t.Fatal(err)
	}
	if !created {
		t.Error("large job not created")
	}
	if _, found, err := store.Get(job.ID); err != nil || !found {
		t.Errorf("Get of the large job = found %v, %v", found, err)
	}
}

// TestBoltStoreConcurrentCreateOnce sends one job from many goroutines at once, as
// replayed streams do, and expects exactly one of them to create it.
func TestBoltStoreConcurrentCreateOnce(t *testing.T) {
	store, err := OpenBoltStore(t.TempDir(), BoltStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()

	var wg sync.WaitGroup
	var mu sync.Mutex
	creations := 0
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			created, err := store.Create(testJob("inv-dup", "//:dup", "bes"))
			if err != nil {
				t.Error(err)
				return
			}
			if created {
				mu.Lock()
				creations++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if creations != 1 {
		t.Errorf("%d of 20 concurrent Creates of one job created it, expected 1", creations)
	}
}

func jobJSON(t *testing.T, job Job) []byte {
	t.Helper()
	value, err := json.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	return value
}

// TestBoltStoreSyncIntervalKeepsJobs checks that with a sync interval, the jobs that Create
// returned for are in the log files before any sync, where a process restarted after a
// crash reads them.
func TestBoltStoreSyncIntervalKeepsJobs(t *testing.T) {
	dir := t.TempDir()
	store, err := OpenBoltStore(dir, BoltStoreOptions{SyncInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for _, label := range []string{"//:a", "//:b", "//:c"} {
		if _, err := store.Create(testJob("inv-interval", label, "bes")); err != nil {
			t.Fatal(err)
		}
	}
	if !store.logs[store.current].unsynced.Load() {
		t.Error("the log was synced although the interval has not passed")
	}

	// The store stays open, so its applier may have moved the jobs into the database, but
	// the logs keep them.
	var found int
	for i := range store.logs {
		log, records, err := openJobLog(filepath.Join(dir, fmt.Sprintf("jobs.log.%d", i)), jobLogCapacity)
		if err != nil {
			t.Fatal(err)
		}
		log.Close()
		found += len(records)
	}
	if found != 3 {
		t.Errorf("the logs hold %d jobs, expected 3", found)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestBoltStoreReadSeesCreate checks that a read right after Create returns lists the new
// job, although the applier moves it into the database later.
func TestBoltStoreReadSeesCreate(t *testing.T) {
	store, err := OpenBoltStore(t.TempDir(), BoltStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	for i := range 20 {
		job := testJob("inv-read", fmt.Sprintf("//:r%03d", i), "bes")
		if _, err := store.Create(job); err != nil {
			t.Fatal(err)
		}
		if _, found, err := store.Get(job.ID); err != nil || !found {
			t.Fatalf("Get right after Create of job %d = found %v, %v", i, found, err)
		}
	}
}

// TestBoltStoreObservesSyncs checks that every sync of a new job reaches SyncSeconds, which
// /metrics shows as img_bes_job_log_sync_seconds.
func TestBoltStoreObservesSyncs(t *testing.T) {
	registry := prometheus.NewRegistry()
	metrics := NewMetrics(registry)
	store, err := OpenBoltStore(t.TempDir(), BoltStoreOptions{SyncSeconds: metrics.JobLogSync()})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	for _, label := range []string{"//:a", "//:b"} {
		if _, err := store.Create(testJob("inv-sync", label, "bes")); err != nil {
			t.Fatal(err)
		}
	}
	var sample dto.Metric
	if err := metrics.jobLogSync.Write(&sample); err != nil {
		t.Fatal(err)
	}
	if count := sample.GetHistogram().GetSampleCount(); count != 2 {
		t.Errorf("the sync histogram counted %d syncs for two Creates one after the other, expected 2", count)
	}
}

// TestBoltStoreWarnsOfSlowSync checks that a synced write slower than the threshold is
// logged once a minute at most, and that a store with a sync interval, whose
// acknowledgements do not wait for the disk, logs none.
func TestBoltStoreWarnsOfSlowSync(t *testing.T) {
	for _, tc := range []struct {
		name     string
		interval time.Duration
		warnings int
	}{
		{"sync per job", 0, 1},
		{"sync interval", time.Hour, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			store, err := OpenBoltStore(t.TempDir(), BoltStoreOptions{
				SyncInterval: tc.interval,
				Logger:       slog.New(slog.NewTextHandler(&logs, nil)),
				slowSync:     time.Nanosecond,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			for _, label := range []string{"//:a", "//:b", "//:c"} {
				if _, err := store.Create(testJob("inv-slow", label, "bes")); err != nil {
					t.Fatal(err)
				}
			}
			if got := strings.Count(logs.String(), "writing push jobs to disk was slow"); got != tc.warnings {
				t.Errorf("logged %d slow-write warnings for 3 Creates, expected %d:\n%s", got, tc.warnings, logs.String())
			}
			if tc.warnings > 0 && !strings.Contains(logs.String(), "jobs.log.") {
				t.Errorf("the warning does not name the log file:\n%s", logs.String())
			}
		})
	}
}
