package bes

import (
	"cmp"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	buildpb "google.golang.org/genproto/googleapis/devtools/build/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// maxUnacknowledged bounds the events of one stream that the server has handled and not
// yet acknowledged. When the job store stalls, the stream stops reading there, and the
// events wait in Bazel's buffer instead of the server's memory.
const maxUnacknowledged = 1024

// jobWrites are the writes of the push jobs that one build event creates. They run in the
// background while the stream goes on with later events, so that the jobs of events in
// a row share one sync of the job log. Only the acknowledgements wait for them.
type jobWrites struct {
	started int
	done    sync.WaitGroup
	mu      sync.Mutex
	err     error
}

// start runs write in a goroutine of its own.
func (w *jobWrites) start(write func() error) {
	w.started++
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		if err := write(); err != nil {
			w.mu.Lock()
			w.err = cmp.Or(w.err, err)
			w.mu.Unlock()
		}
	}()
}

// wait waits for every write and returns the first error. Several goroutines may wait.
func (w *jobWrites) wait() error {
	w.done.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// eventKey names one event of an invocation.
type eventKey struct {
	component int32
	sequence  int64
}

func keyOf(ordered *buildpb.OrderedBuildEvent) eventKey {
	return eventKey{int32(ordered.GetStreamId().GetComponent()), ordered.GetSequenceNumber()}
}

// streamState is the state that the handling and the acknowledging of one stream's
// events share. The invocation's mu guards it.
type streamState struct {
	// failed is set once a push job of the stream could not be stored. The stream then
	// handles no more events, so Bazel resends every event from the failed one on.
	failed bool
}

// pendingAck is a handled event that waits for its acknowledgement.
type pendingAck struct {
	ordered  *buildpb.OrderedBuildEvent
	received time.Time
	inv      *invocation
	state    *streamState
	writes   *jobWrites
}

// serveStream handles the events of one stream in order as they arrive. An event with
// nothing to wait for, and no acknowledgement queued before it, is acknowledged right
// away. Other acknowledgements go out in the same order from a second goroutine, each
// once the push jobs of its event are stored.
func (s *Server) serveStream(stream buildpb.PublishBuildEvent_PublishBuildToolEventStreamServer) error {
	acks := make(chan pendingAck, maxUnacknowledged)
	// queued counts the acknowledgements handed to the sender and not yet sent. While it
	// is zero the sender is not sending, so this goroutine may.
	var queued atomic.Int64
	sendErr := make(chan error, 1)
	go func() { sendErr <- s.sendAcks(stream, acks, &queued) }()

	state := &streamState{}
	var inv *invocation
	var streamErr error
	senderDone := false
read:
	for {
		request, err := stream.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				if inv != nil {
					s.log.Info("build event stream ended early; Bazel retries it with the events not yet acknowledged", "invocation_id", inv.id, "error", err)
				}
				streamErr = err
			}
			break
		}
		// The sender returns early only when it failed. Its error is noticed here, at
		// the next event or at the end of the stream.
		select {
		case streamErr = <-sendErr:
			senderDone = true
			break read
		default:
		}

		ordered := request.GetOrderedBuildEvent()
		received := time.Now()
		streamID := ordered.GetStreamId()
		if streamID.GetInvocationId() == "" {
			streamErr = status.Error(codes.InvalidArgument, "build event has no stream id with an invocation id; the client must set ordered_build_event.stream_id")
			break
		}
		if inv == nil || inv.id != streamID.GetInvocationId() {
			inv = s.invocation(streamID.GetInvocationId())
		}
		ack := pendingAck{ordered: ordered, received: received, inv: inv, state: state, writes: &jobWrites{}}
		if err := s.handle(inv, state, ordered, ack.writes); err != nil {
			streamErr = err
			break
		}

		if ack.writes.started == 0 && queued.Load() == 0 {
			if err := s.sendAck(stream, ack); err != nil {
				streamErr = err
				break
			}
			continue
		}
		queued.Add(1)
		select {
		case acks <- ack:
		case streamErr = <-sendErr:
			senderDone = true
			break read
		}
	}

	close(acks)
	if !senderDone {
		if err := <-sendErr; streamErr == nil {
			streamErr = err
		}
	}
	if streamErr != nil || inv == nil {
		return streamErr
	}
	return s.finishStream(stream.Context(), inv)
}

// sendAcks acknowledges the events from acks in order, each once its push jobs are
// stored, and decrements queued after each. It returns when acks is closed and drained,
// or at the first failure.
func (s *Server) sendAcks(stream buildpb.PublishBuildEvent_PublishBuildToolEventStreamServer, acks <-chan pendingAck, queued *atomic.Int64) error {
	for ack := range acks {
		err := ack.writes.wait()
		if ack.writes.started > 0 {
			s.stored(ack)
		}
		if err != nil {
			s.rewind(ack)
			return err
		}
		if err := s.sendAck(stream, ack); err != nil {
			return err
		}
		queued.Add(-1)
	}
	return nil
}

// sendAck sends the acknowledgement of ack's event.
func (s *Server) sendAck(stream buildpb.PublishBuildEvent_PublishBuildToolEventStreamServer, ack pendingAck) error {
	err := stream.Send(&buildpb.PublishBuildToolEventStreamResponse{
		StreamId:       ack.ordered.GetStreamId(),
		SequenceNumber: ack.ordered.GetSequenceNumber(),
	})
	if err != nil {
		return err
	}
	s.metrics.ackSeconds.Observe(time.Since(ack.received).Seconds())
	return nil
}

// stored removes the job writes of ack's event from its invocation once they ended.
func (s *Server) stored(ack pendingAck) {
	ack.inv.mu.Lock()
	defer ack.inv.mu.Unlock()
	key := keyOf(ack.ordered)
	if ack.inv.unstored[key] == ack.writes {
		delete(ack.inv.unstored, key)
	}
}

// rewind runs when a push job of ack's event could not be stored. It marks that event
// and every later one of the stream as not handled, so that Bazel's resent copies are
// handled again instead of being taken for replays, and stops the stream.
func (s *Server) rewind(ack pendingAck) {
	inv := ack.inv
	inv.mu.Lock()
	defer inv.mu.Unlock()
	ack.state.failed = true
	key := keyOf(ack.ordered)
	if inv.lastSequence[key.component] >= key.sequence {
		inv.lastSequence[key.component] = key.sequence - 1
	}
}
