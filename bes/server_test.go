package bes

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	buildpb "google.golang.org/genproto/googleapis/devtools/build/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	bep "github.com/rulesimg/img/proto/buildeventstream"
)

func TestLifecycleEventAcknowledged(t *testing.T) {
	ts := startTestServer(t, testServerConfig{pusher: &recordingPusher{}})

	_, err := ts.client.PublishLifecycleEvent(context.Background(), &buildpb.PublishLifecycleEventRequest{
		BuildEvent: &buildpb.OrderedBuildEvent{
			StreamId:       &buildpb.StreamId{BuildId: "b", InvocationId: "inv-lifecycle", Component: buildpb.StreamId_CONTROLLER},
			SequenceNumber: 1,
			Event:          &buildpb.BuildEvent{Event: &buildpb.BuildEvent_BuildEnqueued_{BuildEnqueued: &buildpb.BuildEvent_BuildEnqueued{}}},
		},
	})
	if err != nil {
		t.Fatalf("PublishLifecycleEvent: %v", err)
	}
}

func TestStreamAcksEveryEventInOrder(t *testing.T) {
	ts := startTestServer(t, testServerConfig{pusher: &recordingPusher{}})

	events := newEventStream("inv-acks").started(t).
		configured(t, "//:gen", "genrule rule").
		pushTarget(t, "//:push", "bes").
		finish().events

	acks, err := ts.send(t, events)
	if err != nil {
		t.Fatalf("stream ended with %v", err)
	}
	if len(acks) != len(events) {
		t.Fatalf("got %d acknowledgements for %d events", len(acks), len(events))
	}
	for i, ack := range acks {
		if ack.GetSequenceNumber() != int64(i+1) {
			t.Errorf("acknowledgement %d has sequence number %d; expected %d", i, ack.GetSequenceNumber(), i+1)
		}
		if !proto.Equal(ack.GetStreamId(), events[i].GetStreamId()) {
			t.Errorf("acknowledgement %d has stream id %v; expected %v", i, ack.GetStreamId(), events[i].GetStreamId())
		}
	}
}

func TestStreamPushesOnlyBESTargets(t *testing.T) {
	pusher := &recordingPusher{}
	ts := startTestServer(t, testServerConfig{pusher: pusher})

	stream := newEventStream("inv-strategies").started(t).
		pushTarget(t, "//:push_bes", "bes").
		pushTarget(t, "//:push_lazy", "lazy").
		configured(t, "//:not_a_push_rule", "genrule rule").
		namedSet(t, "gen-set", []*bep.File{inlineFile("gen.push_request.json", pushRequestJSON("bes", "gen"))}).
		completed(t, "//:not_a_push_rule", true, map[string][]string{PushRequestOutputGroup: {"gen-set"}}).
		configured(t, "//:failed_build", DefaultPushKind).
		completed(t, "//:failed_build", false, nil).
		finish()
	if _, err := ts.send(t, stream.events); err != nil {
		t.Fatal(err)
	}

	jobs := jobsByLabel(ts.waitDone(t, "inv-strategies"))
	if len(jobs) != 2 {
		t.Errorf("got jobs for %v; expected //:push_bes and //:push_lazy", slices.Collect(mapsKeys(jobs)))
	}
	if got := jobs["//:push_bes"].State; got != StateSucceeded {
		t.Errorf("//:push_bes is %s; expected succeeded (error %q)", got, jobs["//:push_bes"].Error)
	}
	if got := jobs["//:push_lazy"].State; got != StateSkipped {
		t.Errorf("//:push_lazy is %s; expected skipped", got)
	}
	if got := pusher.labels(); !slices.Equal(got, []string{"//:push_bes"}) {
		t.Errorf("pushed %v; expected only //:push_bes", got)
	}

	wantRefs := []string{"127.0.0.1:5000/test/push-bes:latest", "127.0.0.1:5000/test/push-bes:v1"}
	if got := jobs["//:push_bes"].References; !slices.Equal(got, wantRefs) {
		t.Errorf("references of //:push_bes are %v; expected %v", got, wantRefs)
	}
}

func mapsKeys(m map[string]Job) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func TestStreamReplayIsIdempotent(t *testing.T) {
	pusher := &recordingPusher{}
	ts := startTestServer(t, testServerConfig{pusher: pusher})

	stream := newEventStream("inv-replay").started(t).
		pushTarget(t, "//:a", "bes").
		pushTarget(t, "//:b", "bes")
	firstHalf := stream.events

	// Bazel's first stream breaks after these events; it retries with a new stream that
	// starts again at an event the server had already acknowledged.
	if _, err := ts.send(t, firstHalf); err != nil {
		t.Fatal(err)
	}
	stream.pushTarget(t, "//:c", "bes").finish()
	acks, err := ts.send(t, stream.events[3:])
	if err != nil {
		t.Fatal(err)
	}
	if len(acks) != len(stream.events)-3 {
		t.Errorf("replayed stream got %d acknowledgements; expected %d", len(acks), len(stream.events)-3)
	}

	jobs := ts.waitDone(t, "inv-replay")
	if len(jobs) != 3 {
		t.Errorf("got %d jobs; expected 3", len(jobs))
	}
	if labels := pusher.sortedLabels(); !slices.Equal(labels, []string{"//:a", "//:b", "//:c"}) {
		t.Errorf("pushed %v; expected each of //:a, //:b, //:c once", labels)
	}
}

func TestReplayAfterStateLossCreatesNoSecondJob(t *testing.T) {
	pusher := &recordingPusher{}
	ts := startTestServer(t, testServerConfig{pusher: pusher})

	events := newEventStream("inv-forgotten").pushTarget(t, "//:a", "bes").finish().events
	if _, err := ts.send(t, events); err != nil {
		t.Fatal(err)
	}
	ts.waitDone(t, "inv-forgotten")

	// The finished stream dropped the event state, so only the job ID keeps a second
	// delivery of the same events from pushing again.
	if _, err := ts.send(t, events); err != nil {
		t.Fatal(err)
	}
	ts.waitDone(t, "inv-forgotten")
	if got := pusher.labels(); len(got) != 1 {
		t.Errorf("pushed %v; expected //:a once", got)
	}
}

func TestStreamToleratesMalformedEvents(t *testing.T) {
	pusher := &recordingPusher{}
	ts := startTestServer(t, testServerConfig{pusher: pusher})

	stream := newEventStream("inv-malformed")
	stream.add(&buildpb.BuildEvent{Event: &buildpb.BuildEvent_BazelEvent{BazelEvent: &anypb.Any{
		TypeUrl: "type.googleapis.com/build_event_stream.BuildEvent", Value: []byte{0xff, 0xff, 0xff},
	}}})
	stream.add(&buildpb.BuildEvent{Event: &buildpb.BuildEvent_BazelEvent{BazelEvent: &anypb.Any{
		TypeUrl: "type.googleapis.com/some.Other", Value: []byte{0x08, 0x01},
	}}})
	stream.add(&buildpb.BuildEvent{Event: &buildpb.BuildEvent_ConsoleOutput_{ConsoleOutput: &buildpb.BuildEvent_ConsoleOutput{}}})

	// Events of a newer Bazel carry fields this server does not declare.
	configured := &bep.BuildEvent{
		Id:      &bep.BuildEventId{Id: &bep.BuildEventId_TargetConfigured{TargetConfigured: &bep.BuildEventId_TargetConfiguredId{Label: "//:push"}}},
		Payload: &bep.BuildEvent_Configured{Configured: &bep.TargetConfigured{TargetKind: DefaultPushKind}},
	}
	stream.add(withUnknownFields(t, configured))
	stream.namedSet(t, "s", []*bep.File{inlineFile("push.push_request.json", pushRequestJSON("bes", "push"))})
	stream.completed(t, "//:push", true, map[string][]string{PushRequestOutputGroup: {"s"}})
	stream.finish()

	acks, err := ts.send(t, stream.events)
	if err != nil {
		t.Fatalf("stream ended with %v", err)
	}
	if len(acks) != len(stream.events) {
		t.Errorf("got %d acknowledgements for %d events", len(acks), len(stream.events))
	}
	jobs := jobsByLabel(ts.waitDone(t, "inv-malformed"))
	if jobs["//:push"].State != StateSucceeded {
		t.Errorf("//:push is %q; expected succeeded", jobs["//:push"].State)
	}
}

// withUnknownFields packs event with fields 900 (varint) and 901 (bytes) added, as a
// newer Bazel would send fields this proto subset leaves out.
func withUnknownFields(t *testing.T, event *bep.BuildEvent) *buildpb.BuildEvent {
	t.Helper()
	data, err := proto.Marshal(event)
	if err != nil {
		t.Fatal(err)
	}
	data = protowire.AppendTag(data, 900, protowire.VarintType)
	data = protowire.AppendVarint(data, 42)
	data = protowire.AppendTag(data, 901, protowire.BytesType)
	data = protowire.AppendBytes(data, []byte("from the future"))
	return &buildpb.BuildEvent{Event: &buildpb.BuildEvent_BazelEvent{BazelEvent: &anypb.Any{
		TypeUrl: "type.googleapis.com/build_event_stream.BuildEvent", Value: data,
	}}}
}

func TestStreamWithoutInvocationIDRejected(t *testing.T) {
	ts := startTestServer(t, testServerConfig{pusher: &recordingPusher{}})

	_, err := ts.send(t, []*buildpb.OrderedBuildEvent{{SequenceNumber: 1, Event: &buildpb.BuildEvent{}}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("stream ended with %v; expected InvalidArgument", err)
	}
}

func TestNestedNamedSetsResolved(t *testing.T) {
	pusher := &recordingPusher{}
	ts := startTestServer(t, testServerConfig{pusher: pusher})

	stream := newEventStream("inv-nested").
		configured(t, "//:multi", DefaultPushKind).
		namedSet(t, "leaf", []*bep.File{inlineFile("multi.push_request.json", pushRequestJSON("bes", "multi"))}).
		namedSet(t, "middle", nil, "leaf").
		namedSet(t, "top", nil, "middle", "leaf").
		completed(t, "//:multi", true, map[string][]string{PushRequestOutputGroup: {"top"}}).
		finish()
	if _, err := ts.send(t, stream.events); err != nil {
		t.Fatal(err)
	}

	jobs := ts.waitDone(t, "inv-nested")
	if len(jobs) != 1 {
		t.Fatalf("got %d jobs; expected one for the file reached twice", len(jobs))
	}
	if jobs[0].State != StateSucceeded {
		t.Errorf("job is %s (%s); expected succeeded", jobs[0].State, jobs[0].Error)
	}
	if want := "bazel-out/k8-fastbuild/bin/multi.push_request.json"; jobs[0].RequestName != want {
		t.Errorf("request name is %q; expected %q", jobs[0].RequestName, want)
	}
}

func TestMissingNamedSetRecordedAsFailure(t *testing.T) {
	ts := startTestServer(t, testServerConfig{pusher: &recordingPusher{}})

	stream := newEventStream("inv-missing").
		configured(t, "//:push", DefaultPushKind).
		completed(t, "//:push", true, map[string][]string{PushRequestOutputGroup: {"never-sent"}}).
		finish()
	if _, err := ts.send(t, stream.events); err != nil {
		t.Fatal(err)
	}

	jobs := ts.waitDone(t, "inv-missing")
	if len(jobs) != 1 || jobs[0].State != StateFailed {
		t.Fatalf("jobs are %+v; expected one failed job", jobs)
	}
	if !strings.Contains(jobs[0].Error, "never-sent") {
		t.Errorf("error %q does not name the missing file set", jobs[0].Error)
	}
}

func TestOneFailingPushAmongSeveral(t *testing.T) {
	pusher := &recordingPusher{fail: func(job PushJob, _ int) error {
		if job.Label == "//:broken" {
			return Permanent(errors.New("registry rejected the manifest"))
		}
		return nil
	}}
	ts := startTestServer(t, testServerConfig{pusher: pusher, commitMode: CommitPerStream})

	stream := newEventStream("inv-one-fails").started(t).
		pushTarget(t, "//:one", "bes").
		pushTarget(t, "//:broken", "bes").
		pushTarget(t, "//:two", "bes").
		finish()
	acks, err := ts.send(t, stream.events)

	if len(acks) != len(stream.events) {
		t.Errorf("got %d acknowledgements for %d events", len(acks), len(stream.events))
	}
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("per-stream commit ended the stream with %v; expected FailedPrecondition", err)
	}
	if !strings.Contains(err.Error(), "//:broken: registry rejected the manifest") {
		t.Errorf("stream error %q does not name the failed target and its error", err)
	}
	if !strings.Contains(err.Error(), "http://results/invocation/inv-one-fails") {
		t.Errorf("stream error %q does not link the results page", err)
	}

	jobs := jobsByLabel(ts.waitDone(t, "inv-one-fails"))
	for label, want := range map[string]State{"//:one": StateSucceeded, "//:broken": StateFailed, "//:two": StateSucceeded} {
		if jobs[label].State != want {
			t.Errorf("%s is %s; expected %s", label, jobs[label].State, want)
		}
	}
	if attempts := jobs["//:broken"].Attempts; attempts != 1 {
		t.Errorf("permanent failure made %d attempts; expected 1", attempts)
	}
}

func TestPerStreamCommitWaitsForPushes(t *testing.T) {
	release := make(chan struct{})
	pusher := &recordingPusher{fail: func(PushJob, int) error {
		<-release
		return nil
	}}
	ts := startTestServer(t, testServerConfig{pusher: pusher, commitMode: CommitPerStream})

	stream := newEventStream("inv-wait").pushTarget(t, "//:slow", "bes").finish()
	done := make(chan error, 1)
	go func() {
		_, err := ts.send(t, stream.events)
		done <- err
	}()

	select {
	case err := <-done:
		t.Fatalf("stream ended with %v before the push finished", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	if err := <-done; err != nil {
		t.Errorf("stream ended with %v after a successful push; expected OK", err)
	}
}

func TestBackgroundCommitDoesNotWait(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	pusher := &recordingPusher{fail: func(PushJob, int) error {
		<-release
		return nil
	}}
	ts := startTestServer(t, testServerConfig{pusher: pusher})

	stream := newEventStream("inv-background").pushTarget(t, "//:slow", "bes").finish()
	start := time.Now()
	if _, err := ts.send(t, stream.events); err != nil {
		t.Fatal(err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("stream took %v with a push still running; expected it not to wait", elapsed)
	}
}

func TestTransientFailureRetried(t *testing.T) {
	pusher := &recordingPusher{fail: func(_ PushJob, attempt int) error {
		if attempt < 3 {
			return errors.New("registry returned 503")
		}
		return nil
	}}
	ts := startTestServer(t, testServerConfig{pusher: pusher})

	stream := newEventStream("inv-retry").pushTarget(t, "//:flaky", "bes").finish()
	if _, err := ts.send(t, stream.events); err != nil {
		t.Fatal(err)
	}

	jobs := ts.waitDone(t, "inv-retry")
	if jobs[0].State != StateSucceeded {
		t.Errorf("job is %s (%s); expected succeeded on the third attempt", jobs[0].State, jobs[0].Error)
	}
	if jobs[0].Attempts != 3 {
		t.Errorf("job made %d attempts; expected 3", jobs[0].Attempts)
	}
}

func TestTransientFailureGivesUpAfterMaxAttempts(t *testing.T) {
	pusher := &recordingPusher{fail: func(PushJob, int) error { return errors.New("connection refused") }}
	ts := startTestServer(t, testServerConfig{pusher: pusher})

	stream := newEventStream("inv-give-up").pushTarget(t, "//:down", "bes").finish()
	if _, err := ts.send(t, stream.events); err != nil {
		t.Fatal(err)
	}

	jobs := ts.waitDone(t, "inv-give-up")
	if jobs[0].State != StateFailed {
		t.Errorf("job is %s; expected failed", jobs[0].State)
	}
	if jobs[0].Attempts != 3 {
		t.Errorf("job made %d attempts; expected the maximum of 3", jobs[0].Attempts)
	}
	if !strings.Contains(jobs[0].Error, "connection refused") {
		t.Errorf("error %q does not keep the push error", jobs[0].Error)
	}
}

func TestInvalidPushRequestFails(t *testing.T) {
	pusher := &recordingPusher{}
	ts := startTestServer(t, testServerConfig{pusher: pusher})

	stream := newEventStream("inv-invalid").
		configured(t, "//:bad", DefaultPushKind).
		namedSet(t, "s", []*bep.File{inlineFile("bad.push_request.json", []byte(`{"version": 1, "strategy": "bes"}`))}).
		completed(t, "//:bad", true, map[string][]string{PushRequestOutputGroup: {"s"}}).
		finish()
	if _, err := ts.send(t, stream.events); err != nil {
		t.Fatal(err)
	}

	jobs := ts.waitDone(t, "inv-invalid")
	if jobs[0].State != StateFailed {
		t.Errorf("job is %s; expected failed", jobs[0].State)
	}
	if !strings.Contains(jobs[0].Error, `missing required field "root"`) {
		t.Errorf("error %q does not say what is wrong with the request", jobs[0].Error)
	}
	if len(pusher.labels()) != 0 {
		t.Errorf("pushed %v; expected no push of an invalid request", pusher.labels())
	}
}

func TestResultsAPIListsPushes(t *testing.T) {
	pusher := &recordingPusher{fail: func(job PushJob, _ int) error {
		if job.Label == "//:broken" {
			return Permanent(errors.New("unauthorized"))
		}
		return nil
	}}
	ts := startTestServer(t, testServerConfig{pusher: pusher})

	stream := newEventStream("inv-api").started(t).
		pushTarget(t, "//:ok", "bes").
		pushTarget(t, "//:broken", "bes").
		finish()
	if _, err := ts.send(t, stream.events); err != nil {
		t.Fatal(err)
	}
	ts.waitDone(t, "inv-api")
	handler := ts.server.Handler(ts.registry)

	code, body := ts.httpGet(t, handler, "/api/invocation/inv-api")
	if code != 200 {
		t.Fatalf("GET /api/invocation/inv-api returned %d: %s", code, body)
	}
	var results InvocationResults
	if err := json.Unmarshal([]byte(body), &results); err != nil {
		t.Fatalf("decoding %s: %v", body, err)
	}
	if !results.Done {
		t.Errorf("results are not done: %s", body)
	}
	byTarget := map[string]PushStatus{}
	for _, push := range results.Pushes {
		byTarget[push.Target] = push
	}
	if byTarget["//:ok"].State != StateSucceeded || byTarget["//:ok"].Digest == "" {
		t.Errorf("//:ok is %+v; expected succeeded with a digest", byTarget["//:ok"])
	}
	if byTarget["//:broken"].State != StateFailed || byTarget["//:broken"].Error != "unauthorized" {
		t.Errorf("//:broken is %+v; expected failed with error unauthorized", byTarget["//:broken"])
	}

	if results.Invocation.Command != "build" || results.Invocation.BazelVersion != "4.2.3" {
		t.Errorf("invocation details are %+v after the stream finished; expected command build and Bazel 4.2.3", results.Invocation)
	}

	code, page := ts.httpGet(t, handler, "/invocation/inv-api")
	if code != 200 {
		t.Fatalf("GET /invocation/inv-api returned %d", code)
	}
	for _, want := range []string{"//:ok", "//:broken", "unauthorized", "127.0.0.1:5000/test/ok:latest"} {
		if !strings.Contains(page, want) {
			t.Errorf("results page does not contain %q", want)
		}
	}

	code, metrics := ts.httpGet(t, handler, "/metrics")
	if code != 200 || !strings.Contains(metrics, `img_bes_push_jobs_finished_total{state="failed"} 1`) {
		t.Errorf("/metrics returned %d without the failed push count:\n%s", code, metrics)
	}
}

func TestResultsOfUnknownInvocationEmpty(t *testing.T) {
	ts := startTestServer(t, testServerConfig{pusher: &recordingPusher{}})

	code, body := ts.httpGet(t, ts.server.Handler(ts.registry), "/api/invocation/nobody")
	if code != 200 {
		t.Fatalf("returned %d", code)
	}
	if !strings.Contains(body, `"pushes": []`) {
		t.Errorf("body %s does not have an empty push list", body)
	}
}

func TestPushRequestFoundInDefaultOutputGroup(t *testing.T) {
	pusher := &recordingPusher{}
	ts := startTestServer(t, testServerConfig{pusher: pusher})

	// Without --output_groups=+img_push_request, Bazel reports only the default group.
	stream := newEventStream("inv-default-group").
		configured(t, "//:push", DefaultPushKind).
		namedSet(t, "s", []*bep.File{
			inlineFile("push.tar", []byte("not a request")),
			inlineFile("push.push_request.json", pushRequestJSON("bes", "push")),
		}).
		completed(t, "//:push", true, map[string][]string{"default": {"s"}}).
		configured(t, "//app:image", DefaultPushKind).
		namedSet(t, "r", []*bep.File{
			inlineFile("app/image", []byte("launcher")),
			inlineFile("app/other.request.json", pushRequestJSON("bes", "other")),
			inlineFile("app/image.request.json", pushRequestJSON("bes", "image")),
		}).
		completed(t, "//app:image", true, map[string][]string{"default": {"r"}}).
		configured(t, "//:empty", DefaultPushKind).
		namedSet(t, "e", []*bep.File{inlineFile("empty.tar", []byte("x"))}).
		completed(t, "//:empty", true, map[string][]string{"default": {"e"}}).
		finish()
	if _, err := ts.send(t, stream.events); err != nil {
		t.Fatal(err)
	}

	jobs := jobsByLabel(ts.waitDone(t, "inv-default-group"))
	if jobs["//:push"].State != StateSucceeded {
		t.Errorf("//:push is %s (%s); expected succeeded", jobs["//:push"].State, jobs["//:push"].Error)
	}
	if jobs["//app:image"].State != StateSucceeded {
		t.Errorf("//app:image is %s (%s); expected succeeded", jobs["//app:image"].State, jobs["//app:image"].Error)
	}
	if want := "bazel-out/k8-fastbuild/bin/app/image.request.json"; jobs["//app:image"].RequestName != want {
		t.Errorf("//app:image request is %q; expected %q, the file named for the target", jobs["//app:image"].RequestName, want)
	}
	if jobs["//:empty"].State != StateFailed {
		t.Errorf("//:empty is %s; expected failed", jobs["//:empty"].State)
	}
	if !strings.Contains(jobs["//:empty"].Error, "--output_groups=+img_push_request") {
		t.Errorf("error %q does not say how to report the push request output group", jobs["//:empty"].Error)
	}
}

func TestRestartMidBuildResolvesEarlierEvents(t *testing.T) {
	dataDir := t.TempDir()
	first := startTestServer(t, testServerConfig{pusher: &recordingPusher{}, dataDir: dataDir, eventState: true})

	// The first process acknowledges the events that announce the push target and its
	// file set, then stops before the target completes.
	stream := newEventStream("inv-restart").started(t).
		configured(t, "//:push", DefaultPushKind).
		namedSet(t, "top", nil, "leaf").
		namedSet(t, "leaf", []*bep.File{inlineFile("push.request.json", pushRequestJSON("bes", "push"))})
	acknowledged := len(stream.events)
	if _, err := first.send(t, stream.events); err != nil {
		t.Fatal(err)
	}
	first.stop(t)

	pusher := &recordingPusher{}
	second := startTestServer(t, testServerConfig{pusher: pusher, dataDir: dataDir, eventState: true})
	stream.completed(t, "//:push", true, map[string][]string{"default": {"top"}}).finish()
	if _, err := second.send(t, stream.events[acknowledged:]); err != nil {
		t.Fatal(err)
	}

	jobs := second.waitDone(t, "inv-restart")
	if len(jobs) != 1 || jobs[0].State != StateSucceeded {
		t.Fatalf("jobs after the restart are %+v; expected //:push succeeded", jobs)
	}
	if got := pusher.labels(); !slices.Equal(got, []string{"//:push"}) {
		t.Errorf("pushed %v after the restart; expected //:push", got)
	}

	state, err := second.events.LoadInvocation("inv-restart")
	if err != nil {
		t.Fatal(err)
	}
	if len(state.NamedSets) != 0 || len(state.PushTargets) != 0 {
		t.Errorf("event state of the finished invocation is still stored: %+v", state)
	}
}

func TestRestartWithoutEventStateRecordsFailure(t *testing.T) {
	dataDir := t.TempDir()
	first := startTestServer(t, testServerConfig{pusher: &recordingPusher{}, dataDir: dataDir})

	stream := newEventStream("inv-lost").
		configured(t, "//:push", DefaultPushKind).
		namedSet(t, "s", []*bep.File{inlineFile("push.request.json", pushRequestJSON("bes", "push"))})
	acknowledged := len(stream.events)
	if _, err := first.send(t, stream.events); err != nil {
		t.Fatal(err)
	}
	first.stop(t)

	second := startTestServer(t, testServerConfig{pusher: &recordingPusher{}, dataDir: dataDir})
	stream.completed(t, "//:push", true, map[string][]string{PushRequestOutputGroup: {"s"}}).finish()
	if _, err := second.send(t, stream.events[acknowledged:]); err != nil {
		t.Fatal(err)
	}

	jobs := second.waitDone(t, "inv-lost")
	if len(jobs) != 1 || jobs[0].State != StateFailed {
		t.Fatalf("jobs are %+v; expected one failed job that says the file set is unknown", jobs)
	}
	if !strings.Contains(jobs[0].Error, "[s]") {
		t.Errorf("error %q does not name the unknown file set", jobs[0].Error)
	}
}
