package bes

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	buildpb "google.golang.org/genproto/googleapis/devtools/build/v1"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"

	bep "github.com/rulesimg/img/proto/buildeventstream"
)

// capturedStream is the tool event stream of `bazel build //:all` of the e2e/bes
// testdata workspace with Bazel 4.2.3, recorded by `go test ./e2e/bes -capture FILE`.
const capturedStream = "testdata/bazel-4.2.3-build.binpb"

func readCapturedStream(b *testing.B) []*buildpb.OrderedBuildEvent {
	b.Helper()
	file, err := os.Open(capturedStream)
	if err != nil {
		b.Fatal(err)
	}
	defer file.Close()

	reader := bufio.NewReader(file)
	var events []*buildpb.OrderedBuildEvent
	for {
		var req buildpb.PublishBuildToolEventStreamRequest
		if err := protodelim.UnmarshalFrom(reader, &req); err != nil {
			break
		}
		events = append(events, req.GetOrderedBuildEvent())
	}
	if len(events) == 0 {
		b.Fatalf("no events in %s", capturedStream)
	}
	return events
}

// lazyRequestFetcher returns a push request with strategy lazy for every URI, so that
// the jobs of the benchmark end as skipped without a registry.
type lazyRequestFetcher struct{}

func (lazyRequestFetcher) Fetch(context.Context, string) ([]byte, error) {
	return pushRequestJSON("lazy", "bench"), nil
}

// BenchmarkReplayStream replays the captured Bazel event stream over loopback gRPC, each
// round as a new invocation so that every push target stores a new job, and reports
// the acknowledgement latency (p50, p99) and the events acknowledged per second.
func BenchmarkReplayStream(b *testing.B) {
	events := readCapturedStream(b)
	for _, streams := range []int{1, 8} {
		b.Run(fmt.Sprintf("streams=%d", streams), func(b *testing.B) {
			benchmarkReplay(b, events, streams)
		})
	}
}

func benchmarkReplay(b *testing.B, events []*buildpb.OrderedBuildEvent, streams int) {
	ts := startTestServer(b, testServerConfig{pusher: &recordingPusher{}, fetcher: lazyRequestFetcher{}, quiet: true, eventState: true})

	var mu sync.Mutex
	var latencies []time.Duration
	start := time.Now()
	b.ResetTimer()

	var wg sync.WaitGroup
	rounds := make(chan int)
	for range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range rounds {
				measured := replayOnce(b, ts, events, fmt.Sprintf("bench-%d-%d", streams, round))
				mu.Lock()
				latencies = append(latencies, measured...)
				mu.Unlock()
			}
		}()
	}
	for round := range b.N {
		rounds <- round
	}
	close(rounds)
	wg.Wait()

	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(latencies)
	b.ReportMetric(float64(len(latencies))/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(latencies[len(latencies)/2].Microseconds()), "p50-ack-µs")
	b.ReportMetric(float64(latencies[len(latencies)*99/100].Microseconds()), "p99-ack-µs")
}

// replayOnce sends events on one stream under invocationID and returns the time from
// sending each event to receiving its acknowledgement.
func replayOnce(b *testing.B, ts *testServer, events []*buildpb.OrderedBuildEvent, invocationID string) []time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := ts.client.PublishBuildToolEventStream(ctx)
	if err != nil {
		b.Error(err)
		return nil
	}

	sent := make([]time.Time, len(events)+1)
	var sentMu sync.Mutex
	done := make(chan []time.Duration, 1)
	go func() {
		var measured []time.Duration
		for {
			ack, err := stream.Recv()
			if err != nil {
				done <- measured
				return
			}
			sentMu.Lock()
			at := sent[ack.GetSequenceNumber()]
			sentMu.Unlock()
			measured = append(measured, time.Since(at))
		}
	}()

	for i, event := range events {
		event = proto.Clone(event).(*buildpb.OrderedBuildEvent)
		event.StreamId.InvocationId = invocationID
		event.SequenceNumber = int64(i + 1)
		sentMu.Lock()
		sent[i+1] = time.Now()
		sentMu.Unlock()
		if err := stream.Send(&buildpb.PublishBuildToolEventStreamRequest{OrderedBuildEvent: event}); err != nil {
			b.Error(err)
			break
		}
	}
	stream.CloseSend()
	return <-done
}

// syntheticBuild returns the events of a build of targets targets, every tenth of them
// a push target, each target with a TargetConfigured, a NamedSetOfFiles of files
// files and a TargetCompleted event, as Bazel sends them.
func syntheticBuild(b *testing.B, targets, files int) []*buildpb.OrderedBuildEvent {
	stream := newEventStream("synthetic").started(b)
	for i := range targets {
		label := fmt.Sprintf("//pkg%d:target", i)
		setID := fmt.Sprintf("set-%d", i)
		kind := "genrule rule"
		if i%10 == 0 {
			kind = DefaultPushKind
		}

		var outputs []*bep.File
		for j := range files {
			outputs = append(outputs, &bep.File{
				Name:       fmt.Sprintf("pkg%d/out%d.o", i, j),
				PathPrefix: []string{"bazel-out", "k8-fastbuild", "bin"},
				File:       &bep.File_Uri{Uri: fmt.Sprintf("bytestream://127.0.0.1:1/blobs/%064d/%d", i*files+j, 1000)},
			})
		}
		if kind == DefaultPushKind {
			outputs = append(outputs, inlineFile(fmt.Sprintf("pkg%d/target.request.json", i), pushRequestJSON("lazy", "bench")))
		}

		stream.configured(b, label, kind).
			namedSet(b, setID, outputs).
			completed(b, label, true, map[string][]string{"default": {setID}})
	}
	return stream.finish().events
}

// BenchmarkSyntheticBuild replays a build of 1000 targets with 20 output files each,
// 100 of them push targets, and reports the acknowledgement latency and events/s.
func BenchmarkSyntheticBuild(b *testing.B) {
	benchmarkReplay(b, syntheticBuild(b, 1000, 20), 1)
}
