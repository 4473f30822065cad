package bes

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	buildpb "google.golang.org/genproto/googleapis/devtools/build/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	bep "github.com/rulesimg/img/proto/buildeventstream"
)

// recordingPusher records every push and returns what fail returns for its label.
type recordingPusher struct {
	mu    sync.Mutex
	calls []PushJob
	fail  func(job PushJob, attempt int) error
}

func (p *recordingPusher) Push(ctx context.Context, job PushJob) (PushResult, error) {
	p.mu.Lock()
	p.calls = append(p.calls, job)
	attempt := 0
	for _, call := range p.calls {
		if call.Label == job.Label {
			attempt++
		}
	}
	fail := p.fail
	p.mu.Unlock()

	if fail != nil {
		if err := fail(job, attempt); err != nil {
			return PushResult{}, err
		}
	}
	return PushResult{Digest: job.Decoded.Image.Root.Digest.String()}, nil
}

func (p *recordingPusher) labels() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var labels []string
	for _, call := range p.calls {
		labels = append(labels, call.Label)
	}
	return labels
}

// sortedLabels returns the labels of the pushes in label order.
func (p *recordingPusher) sortedLabels() []string {
	labels := p.labels()
	slices.Sort(labels)
	return labels
}

// testServer is a Server on a real 127.0.0.1 gRPC listener, with its queue and store.
type testServer struct {
	events   *BoltEventState
	server   *Server
	queue    *Queue
	store    *BoltStore
	client   buildpb.PublishBuildEventClient
	registry *prometheus.Registry
	dataDir  string
}

type testServerConfig struct {
	pusher     Pusher
	fetcher    RequestFetcher
	commitMode CommitMode
	dataDir    string
	// quiet drops the server's logs, for benchmarks.
	quiet bool
	// eventState keeps the event state in events.db in dataDir.
	eventState bool
	// wrapStore, when set, wraps the job store that the queue and the server use.
	wrapStore func(Store) Store
}

func startTestServer(t testing.TB, config testServerConfig) *testServer {
	t.Helper()

	if config.dataDir == "" {
		config.dataDir = t.TempDir()
	}
	store, err := OpenBoltStore(config.dataDir, BoltStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}

	registry := prometheus.NewRegistry()
	metrics := NewMetrics(registry)
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if config.quiet {
		logger = slog.New(slog.DiscardHandler)
	}
	var queueStore Store = store
	if config.wrapStore != nil {
		queueStore = config.wrapStore(store)
	}
	queue := NewQueue(queueStore, config.fetcher, config.pusher, QueueOptions{
		Logger:         logger,
		Workers:        3,
		MaxAttempts:    3,
		InitialBackoff: 10 * time.Millisecond,
		MaxBackoff:     50 * time.Millisecond,
		Metrics:        metrics,
	})
	if err := queue.Start(); err != nil {
		t.Fatal(err)
	}
	var events *BoltEventState
	serverOptions := ServerOptions{CommitMode: config.commitMode, ResultsURL: "http://results/invocation/"}
	if config.eventState {
		events, err = OpenBoltEventState(config.dataDir)
		if err != nil {
			t.Fatal(err)
		}
		serverOptions.EventState = events
	}
	server := NewServer(queue, serverOptions)

	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	grpcServer := grpc.NewServer()
	buildpb.RegisterPublishBuildEventServer(grpcServer, server)
	go grpcServer.Serve(listener)

	conn, err := grpc.NewClient(listener.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}

	ts := &testServer{events: events, server: server, queue: queue, store: store, client: buildpb.NewPublishBuildEventClient(conn), registry: registry, dataDir: config.dataDir}
	t.Cleanup(func() {
		conn.Close()
		grpcServer.Stop()
		ts.stop(t)
	})
	return ts
}

// stop closes the queue and the store; calling it twice is harmless.
func (ts *testServer) stop(t testing.TB) {
	if ts.store.db == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ts.queue.Close(ctx)
	if err := ts.store.Close(); err != nil {
		t.Error(err)
	}
	if ts.events != nil {
		ts.events.Close()
	}
}

// waitDone waits until every job of the invocation is final.
func (ts *testServer) waitDone(t *testing.T, invocationID string) []Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	jobs, err := ts.queue.Wait(ctx, invocationID)
	if err != nil {
		t.Fatalf("waiting for the jobs of %s: %v (jobs: %+v)", invocationID, err, jobs)
	}
	return jobs
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// eventStream builds the ordered build events of one invocation, numbering them from 1
// as Bazel does.
type eventStream struct {
	invocationID string
	next         int64
	events       []*buildpb.OrderedBuildEvent
}

func newEventStream(invocationID string) *eventStream {
	return &eventStream{invocationID: invocationID, next: 1}
}

func (s *eventStream) streamID() *buildpb.StreamId {
	return &buildpb.StreamId{BuildId: "build-" + s.invocationID, InvocationId: s.invocationID, Component: buildpb.StreamId_TOOL}
}

func (s *eventStream) add(event *buildpb.BuildEvent) *eventStream {
	s.events = append(s.events, &buildpb.OrderedBuildEvent{StreamId: s.streamID(), SequenceNumber: s.next, Event: event})
	s.next++
	return s
}

func (s *eventStream) bazel(t testing.TB, event *bep.BuildEvent) *eventStream {
	t.Helper()
	packed, err := anypb.New(event)
	if err != nil {
		t.Fatal(err)
	}
	return s.add(&buildpb.BuildEvent{Event: &buildpb.BuildEvent_BazelEvent{BazelEvent: packed}})
}

func (s *eventStream) finish() *eventStream {
	return s.add(&buildpb.BuildEvent{Event: &buildpb.BuildEvent_ComponentStreamFinished{
		ComponentStreamFinished: &buildpb.BuildEvent_BuildComponentStreamFinished{Type: buildpb.BuildEvent_BuildComponentStreamFinished_FINISHED},
	}})
}

func (s *eventStream) started(t testing.TB) *eventStream {
	return s.bazel(t, &bep.BuildEvent{
		Id: &bep.BuildEventId{Id: &bep.BuildEventId_Started{Started: &bep.BuildEventId_StartedId{}}},
		Payload: &bep.BuildEvent_Started{Started: &bep.BuildStarted{
			Uuid: s.invocationID, Command: "build", BuildToolVersion: "4.2.3", StartTimeMillis: time.Now().UnixMilli(),
		}},
	})
}

func (s *eventStream) configured(t testing.TB, label, kind string) *eventStream {
	return s.bazel(t, &bep.BuildEvent{
		Id:      &bep.BuildEventId{Id: &bep.BuildEventId_TargetConfigured{TargetConfigured: &bep.BuildEventId_TargetConfiguredId{Label: label}}},
		Payload: &bep.BuildEvent_Configured{Configured: &bep.TargetConfigured{TargetKind: kind}},
	})
}

func (s *eventStream) namedSet(t testing.TB, id string, files []*bep.File, nested ...string) *eventStream {
	var sets []*bep.BuildEventId_NamedSetOfFilesId
	for _, n := range nested {
		sets = append(sets, &bep.BuildEventId_NamedSetOfFilesId{Id: n})
	}
	return s.bazel(t, &bep.BuildEvent{
		Id:      &bep.BuildEventId{Id: &bep.BuildEventId_NamedSet{NamedSet: &bep.BuildEventId_NamedSetOfFilesId{Id: id}}},
		Payload: &bep.BuildEvent_NamedSetOfFiles{NamedSetOfFiles: &bep.NamedSetOfFiles{Files: files, FileSets: sets}},
	})
}

func (s *eventStream) completed(t testing.TB, label string, success bool, groups map[string][]string) *eventStream {
	var outputGroups []*bep.OutputGroup
	for name, ids := range groups {
		group := &bep.OutputGroup{Name: name}
		for _, id := range ids {
			group.FileSets = append(group.FileSets, &bep.BuildEventId_NamedSetOfFilesId{Id: id})
		}
		outputGroups = append(outputGroups, group)
	}
	return s.bazel(t, &bep.BuildEvent{
		Id: &bep.BuildEventId{Id: &bep.BuildEventId_TargetCompleted{TargetCompleted: &bep.BuildEventId_TargetCompletedId{
			Label: label, Configuration: &bep.BuildEventId_ConfigurationId{Id: "k8-fastbuild"},
		}}},
		Payload: &bep.BuildEvent_Completed{Completed: &bep.TargetComplete{Success: success, OutputGroup: outputGroups}},
	})
}

// pushTarget adds the events Bazel sends for one push target: configured, the named set
// with its push request file, and completed.
func (s *eventStream) pushTarget(t testing.TB, label, strategy string) *eventStream {
	name := strings.TrimPrefix(label, "//:")
	setID := fmt.Sprintf("set-%d", s.next)
	return s.configured(t, label, DefaultPushKind).
		namedSet(t, setID, []*bep.File{inlineFile(name+".push_request.json", pushRequestJSON(strategy, name))}).
		completed(t, label, true, map[string][]string{PushRequestOutputGroup: {setID}, "default": {setID}})
}

func inlineFile(name string, contents []byte) *bep.File {
	return &bep.File{Name: name, PathPrefix: []string{"bazel-out", "k8-fastbuild", "bin"}, File: &bep.File_Contents{Contents: contents}}
}

// pushRequestJSON returns a valid push request of one single-layer image whose digests
// depend on name, so that requests of different targets differ.
func pushRequestJSON(strategy, name string) []byte {
	hash := func(salt string) string {
		return fmt.Sprintf("sha256:%064x", []byte(name+salt))[:71]
	}
	return fmt.Appendf(nil, `{
  "version": 1,
  "strategy": %q,
  "root": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": %q, "size": 500},
  "manifests": [{
    "descriptor": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": %q, "size": 500},
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": %q, "size": 100},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": %q, "size": 1000}]
  }],
  "destinations": [{"registry": "127.0.0.1:5000", "repository": "test/%s", "tags": ["latest", "v1"]}]
}
`, strategy, hash("m"), hash("m"), hash("c"), hash("l"), strings.ReplaceAll(name, "_", "-"))
}

// send publishes events on one tool event stream and returns the acknowledgements and
// the status the stream ended with.
func (ts *testServer) send(t *testing.T, events []*buildpb.OrderedBuildEvent) ([]*buildpb.PublishBuildToolEventStreamResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	stream, err := ts.client.PublishBuildToolEventStream(ctx)
	if err != nil {
		t.Fatal(err)
	}

	acks := make(chan []*buildpb.PublishBuildToolEventStreamResponse, 1)
	streamErr := make(chan error, 1)
	go func() {
		var received []*buildpb.PublishBuildToolEventStreamResponse
		for {
			response, err := stream.Recv()
			if err != nil {
				acks <- received
				if errors.Is(err, io.EOF) {
					err = nil
				}
				streamErr <- err
				return
			}
			received = append(received, response)
		}
	}()

	for _, event := range events {
		if err := stream.Send(&buildpb.PublishBuildToolEventStreamRequest{OrderedBuildEvent: event}); err != nil {
			break
		}
	}
	stream.CloseSend()
	return <-acks, <-streamErr
}

func (ts *testServer) httpGet(t *testing.T, handler http.Handler, path string) (int, string) {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := &http.Server{Handler: handler}
	go server.Serve(listener)
	defer server.Close()

	response, err := http.Get("http://" + listener.Addr().String() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response.StatusCode, string(body)
}

func jobsByLabel(jobs []Job) map[string]Job {
	byLabel := map[string]Job{}
	for _, job := range jobs {
		byLabel[job.Label] = job
	}
	return byLabel
}

var _ = proto.Marshal
