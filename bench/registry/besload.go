package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	buildpb "google.golang.org/genproto/googleapis/devtools/build/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"

	bep "github.com/rulesimg/img/proto/buildeventstream"
	"github.com/rulesimg/img/reapi"
)

// readEventStream reads the length-delimited PublishBuildToolEventStreamRequest messages
// of a captured Bazel event stream, as bes/testdata holds them.
func readEventStream(path string) ([]*buildpb.OrderedBuildEvent, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
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
		return nil, fmt.Errorf("no build events in %s", path)
	}
	return events, nil
}

// loadResult is the outcome of one fixed-rate replay.
type loadResult struct {
	Events   int
	Rounds   int
	Elapsed  time.Duration
	Errors   int
	FirstErr error
	// Ack is the time from sending an event to receiving its acknowledgement.
	Ack []time.Duration
	// Scheduled is the time from the moment an event was due by the fixed rate to its
	// acknowledgement. It includes any delay the client had in sending, so a server that
	// slows the sender down shows here even when Ack stays low.
	Scheduled []time.Duration
}

func (r *loadResult) rate() float64 {
	return float64(r.Events) / r.Elapsed.Seconds()
}

// percentile returns the value below which fraction p of the sorted values lie.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}

// replayAtRate sends the captured events to the Build Event Service at addr at rate
// events per second in total for about duration. Each round replays the whole capture
// on its own stream as a new invocation, so every push target stores a new push job.
// The load is open loop: a new round starts every len(events)/rate seconds whether or
// not earlier rounds are done, and a round sends its events at rate/streams, so about
// streams rounds overlap. A late event is sent at once, and its delay shows in Scheduled.
func replayAtRate(addr string, events []*buildpb.OrderedBuildEvent, rate float64, duration time.Duration, streams int, prefix string) (*loadResult, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	client := buildpb.NewPublishBuildEventClient(conn)

	result := &loadResult{}
	var mu sync.Mutex
	roundInterval := time.Duration(float64(time.Second) * float64(len(events)) / rate)
	eventInterval := time.Duration(float64(time.Second) * float64(streams) / rate)
	start := time.Now()

	var wg sync.WaitGroup
	for round := 0; ; round++ {
		roundStart := start.Add(roundInterval * time.Duration(round))
		if roundStart.Sub(start) >= duration {
			break
		}
		if wait := time.Until(roundStart); wait > 0 {
			time.Sleep(wait)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			invocation := fmt.Sprintf("%s-%d", prefix, round)
			ack, scheduled, err := replayRound(client, events, invocation, roundStart, eventInterval)
			mu.Lock()
			defer mu.Unlock()
			result.Rounds++
			result.Events += len(ack)
			result.Ack = append(result.Ack, ack...)
			result.Scheduled = append(result.Scheduled, scheduled...)
			if err != nil {
				result.Errors++
				if result.FirstErr == nil {
					result.FirstErr = err
				}
			}
		}()
	}
	wg.Wait()
	result.Elapsed = time.Since(start)
	slices.Sort(result.Ack)
	slices.Sort(result.Scheduled)
	return result, nil
}

// replayRound sends events on one stream as invocation, the first one at due and each
// next one interval later, and returns the acknowledgement latencies of the acknowledged
// events, from sending and from the due time.
func replayRound(client buildpb.PublishBuildEventClient, events []*buildpb.OrderedBuildEvent, invocation string, due time.Time, interval time.Duration) (ack, scheduled []time.Duration, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := client.PublishBuildToolEventStream(ctx)
	if err != nil {
		return nil, nil, err
	}

	sent := make([]time.Time, len(events)+1)
	dueAt := make([]time.Time, len(events)+1)
	var sentMu sync.Mutex
	type acks struct {
		ack, scheduled []time.Duration
		err            error
	}
	done := make(chan acks, 1)
	go func() {
		var got acks
		for {
			response, err := stream.Recv()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					got.err = err
				}
				done <- got
				return
			}
			now := time.Now()
			sentMu.Lock()
			sequence := response.GetSequenceNumber()
			sentAt, dueTime := sent[sequence], dueAt[sequence]
			sentMu.Unlock()
			got.ack = append(got.ack, now.Sub(sentAt))
			got.scheduled = append(got.scheduled, now.Sub(dueTime))
		}
	}()

	var sendErr error
	for i, event := range events {
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		event = proto.Clone(event).(*buildpb.OrderedBuildEvent)
		event.StreamId.InvocationId = invocation
		event.SequenceNumber = int64(i + 1)
		sentMu.Lock()
		sent[i+1] = time.Now()
		dueAt[i+1] = due
		sentMu.Unlock()
		due = due.Add(interval)
		if sendErr = stream.Send(&buildpb.PublishBuildToolEventStreamRequest{OrderedBuildEvent: event}); sendErr != nil {
			break
		}
	}
	stream.CloseSend()
	got := <-done
	if sendErr != nil && got.err == nil {
		got.err = sendErr
	}
	return got.ack, got.scheduled, got.err
}

// pointRequestsAt returns a copy of events in which every .json file of a NamedSetOfFiles
// event, the push requests of the captured build, has the bytestream URI of request
// instead. The captured URIs name blobs of the cache the stream was recorded with, so a
// server reading them from another cache would find nothing and retry each job.
func pointRequestsAt(events []*buildpb.OrderedBuildEvent, request reapi.Digest) ([]*buildpb.OrderedBuildEvent, int, error) {
	uri := fmt.Sprintf("bytestream://127.0.0.1/blobs/%s/%d", request.Hash, request.Size)
	var out []*buildpb.OrderedBuildEvent
	var rewritten int
	for _, ordered := range events {
		ordered = proto.Clone(ordered).(*buildpb.OrderedBuildEvent)
		out = append(out, ordered)
		payload := ordered.GetEvent().GetBazelEvent()
		if payload == nil {
			continue
		}
		var event bep.BuildEvent
		if err := payload.UnmarshalTo(&event); err != nil {
			return nil, 0, fmt.Errorf("decode build event %d: %w", ordered.GetSequenceNumber(), err)
		}
		set := event.GetNamedSetOfFiles()
		if set == nil {
			continue
		}
		for _, file := range set.GetFiles() {
			if strings.HasSuffix(file.GetName(), ".json") && file.GetUri() != "" {
				file.File = &bep.File_Uri{Uri: uri}
				rewritten++
			}
		}
		if err := payload.MarshalFrom(&event); err != nil {
			return nil, 0, err
		}
	}
	return out, rewritten, nil
}

// uploadLazyRequest writes a copy of the push request file with strategy "lazy" to the
// cache and returns its digest. img bes reads such a request and leaves the image alone,
// so every push job of the replay ends after one cache read, as in bes/bench_test.go.
func uploadLazyRequest(endpoint, requestPath string) (reapi.Digest, error) {
	data, err := os.ReadFile(requestPath)
	if err != nil {
		return reapi.Digest{}, err
	}
	var request map[string]any
	if err := json.Unmarshal(data, &request); err != nil {
		return reapi.Digest{}, fmt.Errorf("parse push request %s: %w", requestPath, err)
	}
	request["strategy"] = "lazy"
	if data, err = json.Marshal(request); err != nil {
		return reapi.Digest{}, err
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client, err := reapi.Dial(ctx, endpoint, reapi.Options{})
	if err != nil {
		return reapi.Digest{}, err
	}
	defer client.Close()
	d := reapi.DigestOf(data)
	return d, client.Write(ctx, d, bytes.NewReader(data))
}
