package bes

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	buildpb "google.golang.org/genproto/googleapis/devtools/build/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// gatedStore holds every Create until release is closed. entered is closed once want
// Creates wait at the same time.
type gatedStore struct {
	Store
	release chan struct{}
	entered chan struct{}
	want    int

	mu      sync.Mutex
	waiting int
}

func (g *gatedStore) Create(job Job) (bool, error) {
	g.mu.Lock()
	g.waiting++
	if g.waiting == g.want {
		close(g.entered)
	}
	g.mu.Unlock()
	<-g.release
	return g.Store.Create(job)
}

// TestStreamStoresJobsTogether checks that a stream handles the events after a push target
// while that target's job is still being stored, so that the jobs of targets completing
// in a row can share one sync of the job log. Acknowledgements still come in order.
func TestStreamStoresJobsTogether(t *testing.T) {
	const targets = 10
	gate := &gatedStore{release: make(chan struct{}), entered: make(chan struct{}), want: targets}
	var release sync.Once
	t.Cleanup(func() { release.Do(func() { close(gate.release) }) })
	ts := startTestServer(t, testServerConfig{pusher: &recordingPusher{}, wrapStore: func(store Store) Store {
		gate.Store = store
		return gate
	}})

	stream := newEventStream("inv-together").started(t)
	for i := range targets {
		stream.pushTarget(t, fmt.Sprintf("//:p%02d", i), "bes")
	}
	stream.finish()

	type result struct {
		acks int
		err  error
		seq  []int64
	}
	done := make(chan result, 1)
	go func() {
		acks, err := ts.send(t, stream.events)
		var seq []int64
		for _, ack := range acks {
			seq = append(seq, ack.GetSequenceNumber())
		}
		done <- result{len(acks), err, seq}
	}()

	select {
	case <-gate.entered:
	case <-time.After(10 * time.Second):
		gate.mu.Lock()
		waiting := gate.waiting
		gate.mu.Unlock()
		t.Fatalf("only %d of %d job stores waited at once: the stream did not handle an event before the job of the one before was stored", waiting, targets)
	}
	release.Do(func() { close(gate.release) })

	got := <-done
	if got.err != nil {
		t.Fatalf("stream ended with %v", got.err)
	}
	if got.acks != len(stream.events) {
		t.Fatalf("got %d acknowledgements for %d events", got.acks, len(stream.events))
	}
	for i, sequence := range got.seq {
		if sequence != int64(i+1) {
			t.Fatalf("acknowledgement %d has sequence number %d; expected %d", i, sequence, i+1)
		}
	}
	if jobs := ts.waitDone(t, "inv-together"); len(jobs) != targets {
		t.Errorf("got %d jobs; expected %d", len(jobs), targets)
	}
}

// failOnceStore fails the first Create of the job of label, once a Create of the job of
// after has started: by then the stream has handled the events between the two.
type failOnceStore struct {
	Store
	label, after string
	afterEntered chan struct{}
	afterOnce    sync.Once

	mu     sync.Mutex
	failed bool
}

func (f *failOnceStore) Create(job Job) (bool, error) {
	if job.Label == f.after {
		f.afterOnce.Do(func() { close(f.afterEntered) })
	}
	f.mu.Lock()
	fail := job.Label == f.label && !f.failed
	f.failed = f.failed || fail
	f.mu.Unlock()
	if fail {
		<-f.afterEntered
		return false, errors.New("disk full")
	}
	return f.Store.Create(job)
}

// TestStoreFailureResendsFromFailedEvent checks that a job that cannot be stored ends the
// stream before its event is acknowledged, and that the events Bazel then resends from
// there are handled again, although the server had handled later events already.
func TestStoreFailureResendsFromFailedEvent(t *testing.T) {
	pusher := &recordingPusher{}
	ts := startTestServer(t, testServerConfig{pusher: pusher, wrapStore: func(store Store) Store {
		return &failOnceStore{Store: store, label: "//:b", after: "//:c", afterEntered: make(chan struct{})}
	}})

	stream := newEventStream("inv-store-fails").started(t).
		pushTarget(t, "//:a", "bes").
		pushTarget(t, "//:b", "bes").
		pushTarget(t, "//:c", "bes").
		finish()
	// Events: 1 started; 2 to 4 //:a; 5 to 7 //:b, whose job is stored at 7; 8 to 10 //:c.
	acks, err := ts.send(t, stream.events)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("stream ended with %v; expected Unavailable", err)
	}
	if len(acks) != 6 {
		t.Fatalf("got %d acknowledgements; expected the 6 before the failed event", len(acks))
	}

	// Bazel resends every event not acknowledged.
	acks, err = ts.send(t, stream.events[6:])
	if err != nil {
		t.Fatalf("resent stream ended with %v", err)
	}
	if len(acks) != len(stream.events)-6 {
		t.Errorf("resent stream got %d acknowledgements; expected %d", len(acks), len(stream.events)-6)
	}

	jobs := ts.waitDone(t, "inv-store-fails")
	if len(jobs) != 3 {
		t.Errorf("got %d jobs; expected 3", len(jobs))
	}
	if labels := pusher.sortedLabels(); !slices.Equal(labels, []string{"//:a", "//:b", "//:c"}) {
		t.Errorf("pushed %v; expected each of //:a, //:b, //:c once", labels)
	}
}

// blockedFailStore holds the first Create until release is closed and then fails it.
type blockedFailStore struct {
	Store
	release chan struct{}
	entered chan struct{}

	mu    sync.Mutex
	calls int
}

func (b *blockedFailStore) Create(job Job) (bool, error) {
	b.mu.Lock()
	b.calls++
	first := b.calls == 1
	b.mu.Unlock()
	if first {
		close(b.entered)
		<-b.release
		return false, errors.New("disk full")
	}
	return b.Store.Create(job)
}

// TestRetriedStreamWaitsForDyingStreamsJob covers a retried stream that resends an event
// whose job the dying stream is still storing: the event counts as a replay, but its
// acknowledgement must wait for that job, and fail with it.
func TestRetriedStreamWaitsForDyingStreamsJob(t *testing.T) {
	store := &blockedFailStore{release: make(chan struct{}), entered: make(chan struct{})}
	var release sync.Once
	t.Cleanup(func() { release.Do(func() { close(store.release) }) })
	pusher := &recordingPusher{}
	ts := startTestServer(t, testServerConfig{pusher: pusher, wrapStore: func(inner Store) Store {
		store.Store = inner
		return store
	}})

	// Events: 1 started; 2 to 4 //:a, whose job is stored at 4; 5 finished.
	stream := newEventStream("inv-overlap").started(t).pushTarget(t, "//:a", "bes").finish()
	type result struct {
		acks int
		err  error
	}
	send := func(events []*buildpb.OrderedBuildEvent) chan result {
		done := make(chan result, 1)
		go func() {
			acks, err := ts.send(t, events)
			done <- result{len(acks), err}
		}()
		return done
	}

	dying := send(stream.events)
	<-store.entered
	retried := send(stream.events[3:])
	select {
	case got := <-retried:
		t.Fatalf("the retried stream ended with %d acknowledgements and %v before the job of its first event was stored", got.acks, got.err)
	case <-time.After(500 * time.Millisecond):
	}
	release.Do(func() { close(store.release) })

	for name, done := range map[string]chan result{"dying": dying, "retried": retried} {
		got := <-done
		if status.Code(got.err) != codes.Unavailable {
			t.Errorf("the %s stream ended with %v; expected Unavailable", name, got.err)
		}
		if name == "retried" && got.acks != 0 {
			t.Errorf("the retried stream got %d acknowledgements for an event whose job was not stored", got.acks)
		}
	}

	// Bazel tries once more with the events still not acknowledged.
	if _, err := ts.send(t, stream.events[3:]); err != nil {
		t.Fatalf("third stream ended with %v", err)
	}
	jobs := ts.waitDone(t, "inv-overlap")
	if len(jobs) != 1 || jobs[0].Label != "//:a" {
		t.Errorf("got jobs %+v; expected the one of //:a", jobs)
	}
}
