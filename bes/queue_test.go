package bes

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func testJob(invocationID, label, strategy string) Job {
	name := label[3:]
	return Job{
		ID:              jobID(invocationID, label, "k8-fastbuild", name+".push_request.json"),
		InvocationID:    invocationID,
		Label:           label,
		RequestName:     name + ".push_request.json",
		RequestContents: pushRequestJSON(strategy, name),
	}
}

func newTestQueue(t *testing.T, store Store, pusher Pusher) *Queue {
	return NewQueue(store, nil, pusher, QueueOptions{
		Workers:        2,
		MaxAttempts:    3,
		InitialBackoff: 10 * time.Millisecond,
		Metrics:        NewMetrics(prometheus.NewRegistry()),
	})
}

func waitQueue(t *testing.T, queue *Queue, invocationID string) []Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	jobs, err := queue.Wait(ctx, invocationID)
	if err != nil {
		t.Fatalf("waiting for %s: %v (jobs %+v)", invocationID, err, jobs)
	}
	return jobs
}

func TestQueueResumesJobsAfterKill(t *testing.T) {
	dir := t.TempDir()
	store, err := OpenBoltStore(dir, BoltStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// The first process stores jobs and dies before any worker runs them: no Close, no
	// state change after Enqueue.
	first := newTestQueue(t, store, &recordingPusher{})
	for _, label := range []string{"//:a", "//:b", "//:c"} {
		if _, err := first.Enqueue(testJob("inv-kill", label, "bes")); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}

	store, err = OpenBoltStore(dir, BoltStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	pusher := &recordingPusher{}
	second := newTestQueue(t, store, pusher)
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	defer second.Close(context.Background())

	jobs := waitQueue(t, second, "inv-kill")
	for _, job := range jobs {
		if job.State != StateSucceeded {
			t.Errorf("%s is %s after restart; expected succeeded", job.Label, job.State)
		}
	}
	labels := pusher.labels()
	slices.Sort(labels)
	if !slices.Equal(labels, []string{"//:a", "//:b", "//:c"}) {
		t.Errorf("restarted queue pushed %v; expected //:a, //:b, //:c", labels)
	}
}

func TestQueueResumesInterruptedPush(t *testing.T) {
	dir := t.TempDir()
	store, err := OpenBoltStore(dir, BoltStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}

	started := make(chan struct{}, 1)
	blocking := PusherFunc(func(ctx context.Context, job PushJob) (PushResult, error) {
		started <- struct{}{}
		<-ctx.Done()
		return PushResult{}, ctx.Err()
	})
	first := newTestQueue(t, store, blocking)
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Enqueue(testJob("inv-interrupt", "//:slow", "bes")); err != nil {
		t.Fatal(err)
	}
	<-started

	// The shutdown deadline passes while the push runs, so Close cancels it.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := first.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close returned %v; expected the deadline error", err)
	}
	job, _, err := store.Get(jobID("inv-interrupt", "//:slow", "k8-fastbuild", "slow.push_request.json"))
	if err != nil {
		t.Fatal(err)
	}
	if job.State != StateQueued {
		t.Errorf("interrupted job is %s; expected queued", job.State)
	}
	if job.Attempts != 0 {
		t.Errorf("interrupted job counts %d attempts; expected 0, because shutdown is not a push failure", job.Attempts)
	}
	store.Close()

	store, err = OpenBoltStore(dir, BoltStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	second := newTestQueue(t, store, &recordingPusher{})
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	defer second.Close(context.Background())

	jobs := waitQueue(t, second, "inv-interrupt")
	if jobs[0].State != StateSucceeded {
		t.Errorf("resumed job is %s (%s); expected succeeded", jobs[0].State, jobs[0].Error)
	}
}

func TestQueueEnqueueIsIdempotent(t *testing.T) {
	store, err := OpenBoltStore(t.TempDir(), BoltStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	queue := newTestQueue(t, store, &recordingPusher{})

	created, err := queue.Enqueue(testJob("inv", "//:a", "bes"))
	if err != nil || !created {
		t.Fatalf("first Enqueue returned %v, %v; expected true, nil", created, err)
	}
	created, err = queue.Enqueue(testJob("inv", "//:a", "bes"))
	if err != nil || created {
		t.Errorf("second Enqueue returned %v, %v; expected false, nil", created, err)
	}
}

func TestQueueBoundsConcurrency(t *testing.T) {
	store, err := OpenBoltStore(t.TempDir(), BoltStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()

	running := make(chan struct{}, 10)
	release := make(chan struct{})
	pusher := PusherFunc(func(ctx context.Context, job PushJob) (PushResult, error) {
		running <- struct{}{}
		<-release
		return PushResult{}, nil
	})
	queue := newTestQueue(t, store, pusher)
	if err := queue.Start(); err != nil {
		t.Fatal(err)
	}
	defer queue.Close(context.Background())

	for _, label := range []string{"//:a", "//:b", "//:c", "//:d", "//:e"} {
		if _, err := queue.Enqueue(testJob("inv-bound", label, "bes")); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(running); n != 2 {
		t.Errorf("%d pushes run at once; expected the 2 workers", n)
	}
	close(release)
	waitQueue(t, queue, "inv-bound")
}

func TestBoltStoreListsUnfinishedOnly(t *testing.T) {
	store, err := OpenBoltStore(t.TempDir(), BoltStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()

	for label, state := range map[string]State{"//:q": StateQueued, "//:r": StateRunning, "//:s": StateSucceeded, "//:f": StateFailed, "//:k": StateSkipped} {
		job := testJob("inv", label, "bes")
		job.State = state
		if err := store.Put(job); err != nil {
			t.Fatal(err)
		}
	}

	jobs, err := store.ListUnfinished()
	if err != nil {
		t.Fatal(err)
	}
	var labels []string
	for _, job := range jobs {
		labels = append(labels, job.Label)
	}
	slices.Sort(labels)
	if !slices.Equal(labels, []string{"//:q", "//:r"}) {
		t.Errorf("unfinished jobs are %v; expected //:q and //:r", labels)
	}
}

func TestBoltStoreSecondOpenFails(t *testing.T) {
	if testing.Short() {
		t.Skip("waits one second for the file lock")
	}
	dir := t.TempDir()
	store, err := OpenBoltStore(dir, BoltStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()

	if second, err := OpenBoltStore(dir, BoltStoreOptions{}); err == nil {
		second.Close()
		t.Errorf("second OpenBoltStore on %s succeeded; expected the lock to reject it", dir)
	}
}

func TestQueueDeletesExpiredJobs(t *testing.T) {
	store, err := OpenBoltStore(t.TempDir(), BoltStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()

	old := testJob("inv-old", "//:old", "bes")
	old.State = StateSucceeded
	old.FinishedAt = time.Now().Add(-48 * time.Hour)
	recent := testJob("inv-recent", "//:recent", "bes")
	recent.State = StateFailed
	recent.FinishedAt = time.Now().Add(-time.Hour)
	unfinished := testJob("inv-old", "//:unfinished", "bes")
	unfinished.State = StateQueued
	for _, job := range []Job{old, recent, unfinished} {
		if err := store.Put(job); err != nil {
			t.Fatal(err)
		}
	}

	queue := NewQueue(store, nil, &recordingPusher{}, QueueOptions{
		Workers:   1,
		Retention: 24 * time.Hour,
		Metrics:   NewMetrics(prometheus.NewRegistry()),
	})
	if err := queue.Start(); err != nil {
		t.Fatal(err)
	}
	if err := queue.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}

	if _, found, _ := store.Get(old.ID); found {
		t.Errorf("job finished 48h ago is still stored with a retention of 24h")
	}
	if _, found, _ := store.Get(recent.ID); !found {
		t.Errorf("job finished 1h ago was deleted with a retention of 24h")
	}
	if _, found, _ := store.Get(unfinished.ID); !found {
		t.Errorf("unfinished job was deleted")
	}
}
