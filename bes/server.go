// Package bes is a Build Event Service backend that pushes images as a side effect of
// `bazel build`. Bazel streams its build events to the server (--bes_backend). The
// server finds completed push targets and stores a push job durably before it
// acknowledges the event. A bounded worker pool then pushes in the background.
// Results are visible per invocation on an HTTP page, a JSON API and Prometheus metrics.
package bes

import (
	"context"
	"fmt"
	"log/slog"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	buildpb "google.golang.org/genproto/googleapis/devtools/build/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	bep "github.com/rulesimg/img/proto/buildeventstream"
)

// CommitMode selects when a tool event stream RPC returns.
type CommitMode string

const (
	// CommitBackground returns as soon as Bazel closes the stream; pushes go on after
	// the build.
	CommitBackground CommitMode = "background"
	// CommitPerStream returns only when every push of the invocation is final, and
	// returns an error if one failed, so that `bazel build` fails visibly.
	CommitPerStream CommitMode = "per-stream"
)

// ParseCommitMode checks a --commit-mode value.
func ParseCommitMode(value string) (CommitMode, error) {
	switch mode := CommitMode(value); mode {
	case CommitBackground, CommitPerStream:
		return mode, nil
	}
	return "", fmt.Errorf("invalid commit mode %q; use %q or %q", value, CommitBackground, CommitPerStream)
}

// Defaults for ServerOptions.
const (
	// DefaultPushKind is the target kind that Bazel reports in TargetConfigured for a
	// Starlark rule named image_push (checked with Bazel 4.2.3).
	DefaultPushKind = "image_push rule"
	// PushRequestOutputGroup is the output group that holds a push target's push
	// request file. The file name must end in .json, because the server keeps only
	// JSON files of the file sets that Bazel reports.
	PushRequestOutputGroup = "img_push_request"
)

// pushRequestNames are the file names of the push request of a target named name, as
// rules_img's image_push writes it (<name>.request.json) and as other push rules may.
func pushRequestNames(name string) []string {
	return []string{name + ".request.json", name + ".push_request.json"}
}

// ServerOptions configure a Server. Zero fields take the defaults in parentheses.
type ServerOptions struct {
	// PushKinds are the target kinds of push rules ([DefaultPushKind]).
	PushKinds []string
	// CommitMode is CommitBackground or CommitPerStream (CommitBackground).
	CommitMode CommitMode
	// ResultsURL is the base URL of the results page, for example
	// http://127.0.0.1:8081/invocation/; errors in per-stream mode link to it.
	ResultsURL string
	// IdleInvocationTTL is how long the event state of an invocation whose stream did
	// not finish is kept after its last event (1h).
	IdleInvocationTTL time.Duration
	// EventState, when set, keeps the event state of open invocations on disk, so that a
	// restarted server resolves push targets announced before the restart.
	EventState EventState

	Logger  *slog.Logger
	Metrics *Metrics
}

// Server implements google.devtools.build.v1.PublishBuildEvent.
type Server struct {
	buildpb.UnimplementedPublishBuildEventServer

	queue   *Queue
	opts    ServerOptions
	log     *slog.Logger
	metrics *Metrics

	mu          sync.Mutex
	invocations map[string]*invocation
	// finished keeps the InvocationInfo of the last maxFinishedInfos finished
	// invocations for the results page, oldest first in finishedOrder.
	finished      map[string]InvocationInfo
	finishedOrder []string
}

// maxFinishedInfos bounds the invocations whose command and exit code the results page
// still shows after their stream finished. The pushes themselves stay listed for
// --retention.
const maxFinishedInfos = 1000

// NewServer creates a server that puts push jobs on queue. Register it on a gRPC server
// with buildpb.RegisterPublishBuildEventServer.
func NewServer(queue *Queue, opts ServerOptions) *Server {
	if len(opts.PushKinds) == 0 {
		opts.PushKinds = []string{DefaultPushKind}
	}
	if opts.CommitMode == "" {
		opts.CommitMode = CommitBackground
	}
	if opts.IdleInvocationTTL <= 0 {
		opts.IdleInvocationTTL = time.Hour
	}
	if opts.Logger == nil {
		opts.Logger = queue.log
	}
	if opts.Metrics == nil {
		opts.Metrics = queue.metrics
	}
	s := &Server{
		queue:       queue,
		opts:        opts,
		log:         opts.Logger,
		metrics:     opts.Metrics,
		invocations: map[string]*invocation{},
		finished:    map[string]InvocationInfo{},
	}
	s.deleteIdleEventState()
	return s
}

// deleteIdleEventState deletes the stored event state of invocations that have been
// idle longer than IdleInvocationTTL, such as builds that were killed.
func (s *Server) deleteIdleEventState() {
	if s.opts.EventState == nil {
		return
	}
	deleted, err := s.opts.EventState.DeleteIdleBefore(time.Now().Add(-s.opts.IdleInvocationTTL))
	if err != nil {
		s.log.Warn("deleting idle event state failed", "error", err)
		return
	}
	if deleted > 0 {
		s.log.Info("deleted the event state of idle invocations", "count", deleted)
	}
}

// PublishLifecycleEvent acknowledges a lifecycle event. The server needs nothing from
// them: the tool event stream carries everything it reads.
func (s *Server) PublishLifecycleEvent(ctx context.Context, req *buildpb.PublishLifecycleEventRequest) (*emptypb.Empty, error) {
	streamID := req.GetBuildEvent().GetStreamId()
	s.log.Debug("lifecycle event", "invocation_id", streamID.GetInvocationId(), "build_id", streamID.GetBuildId(),
		"sequence_number", req.GetBuildEvent().GetSequenceNumber(), "type", lifecycleType(req.GetBuildEvent().GetEvent()))
	return &emptypb.Empty{}, nil
}

func lifecycleType(event *buildpb.BuildEvent) string {
	switch event.GetEvent().(type) {
	case *buildpb.BuildEvent_BuildEnqueued_:
		return "build_enqueued"
	case *buildpb.BuildEvent_BuildFinished_:
		return "build_finished"
	case *buildpb.BuildEvent_InvocationAttemptStarted_:
		return "invocation_attempt_started"
	case *buildpb.BuildEvent_InvocationAttemptFinished_:
		return "invocation_attempt_finished"
	}
	return "other"
}

// PublishBuildToolEventStream acknowledges every event in order, after storing any push
// job the event creates. In per-stream commit mode it returns only once the
// invocation's pushes are final.
func (s *Server) PublishBuildToolEventStream(stream buildpb.PublishBuildEvent_PublishBuildToolEventStreamServer) error {
	s.metrics.streams.Inc()
	defer s.metrics.streams.Dec()

	err := s.serveStream(stream)
	if err != nil {
		s.metrics.streamErrors.WithLabelValues(status.Code(err).String()).Inc()
	}
	return err
}

// finishStream runs when Bazel closes the stream. It drops the event state of a
// finished invocation and, in per-stream mode, waits for its pushes.
func (s *Server) finishStream(ctx context.Context, inv *invocation) error {
	inv.mu.Lock()
	done := inv.streamDone
	inv.mu.Unlock()
	if done {
		s.forget(inv.id)
	}

	if s.opts.CommitMode != CommitPerStream {
		return nil
	}

	jobs, err := s.queue.Wait(ctx, inv.id)
	if err != nil {
		return status.Errorf(codes.Canceled, "waiting for the pushes of invocation %s: %v", inv.id, err)
	}

	var failed []string
	for _, job := range jobs {
		if job.State == StateFailed {
			failed = append(failed, fmt.Sprintf("%s: %s", job.Label, job.Error))
		}
	}
	if len(failed) == 0 {
		return nil
	}

	message := fmt.Sprintf("img bes: %d of %d pushes failed: %s", len(failed), len(jobs), strings.Join(failed, "; "))
	if s.opts.ResultsURL != "" {
		message += "; details at " + s.opts.ResultsURL + inv.id
	}
	return status.Error(codes.FailedPrecondition, message)
}

// invocation returns the state of invocation id, creating it, and drops the state of
// invocations that have been idle longer than IdleInvocationTTL.
func (s *Server) invocation(id string) *invocation {
	s.mu.Lock()
	defer s.mu.Unlock()

	if inv, ok := s.invocations[id]; ok {
		return inv
	}

	now := time.Now()
	for otherID, other := range s.invocations {
		other.mu.Lock()
		idle := now.Sub(other.lastEvent)
		other.mu.Unlock()
		if idle > s.opts.IdleInvocationTTL {
			s.log.Info("dropping event state of an idle invocation", "invocation_id", otherID, "idle", idle)
			delete(s.invocations, otherID)
			if s.opts.EventState != nil {
				if err := s.opts.EventState.DeleteInvocation(otherID); err != nil {
					s.log.Warn("deleting the event state of an idle invocation failed", "invocation_id", otherID, "error", err)
				}
			}
		}
	}

	inv := newInvocation(id)
	s.loadEventState(inv)
	s.invocations[id] = inv
	return inv
}

// loadEventState fills inv from the event state that an earlier process stored.
func (s *Server) loadEventState(inv *invocation) {
	if s.opts.EventState == nil {
		return
	}
	state, err := s.opts.EventState.LoadInvocation(inv.id)
	if err != nil {
		s.log.Error("loading stored event state failed; pushes announced before a restart may fail", "invocation_id", inv.id, "error", err)
		return
	}
	if len(state.NamedSets) == 0 && len(state.PushTargets) == 0 {
		return
	}

	for setID, set := range state.NamedSets {
		inv.namedSets[setID] = set
	}
	for label, kind := range state.PushTargets {
		inv.kinds[label] = kind
	}
	s.log.Info("resumed event state of an invocation from before a restart", "invocation_id", inv.id,
		"file_sets", len(state.NamedSets), "push_targets", len(state.PushTargets))
}

func (s *Server) forget(id string) {
	info, _ := s.invocationInfo(id)

	s.mu.Lock()
	delete(s.invocations, id)
	if _, ok := s.finished[id]; !ok {
		s.finishedOrder = append(s.finishedOrder, id)
	}
	s.finished[id] = info
	if len(s.finishedOrder) > maxFinishedInfos {
		delete(s.finished, s.finishedOrder[0])
		s.finishedOrder = s.finishedOrder[1:]
	}
	s.mu.Unlock()

	if s.opts.EventState == nil {
		return
	}
	if err := s.opts.EventState.DeleteInvocation(id); err != nil {
		s.log.Warn("deleting the event state of a finished invocation failed", "invocation_id", id, "error", err)
	}
}

// InvocationInfo is the invocation's details read from its build events, for the
// results page. It is kept for the last 1000 finished invocations of this process.
type InvocationInfo struct {
	Command      string    `json:"command,omitempty"`
	BazelVersion string    `json:"bazel_version,omitempty"`
	Started      time.Time `json:"started,omitzero"`
	Finished     bool      `json:"finished"`
	ExitCode     string    `json:"exit_code,omitempty"`
}

// invocationInfo returns the details of invocation id and whether its stream is open.
func (s *Server) invocationInfo(id string) (InvocationInfo, bool) {
	s.mu.Lock()
	inv, ok := s.invocations[id]
	finished := s.finished[id]
	s.mu.Unlock()
	if !ok {
		return finished, false
	}

	inv.mu.Lock()
	defer inv.mu.Unlock()
	return InvocationInfo{
		Command:      inv.command,
		BazelVersion: inv.bazelVersion,
		Started:      inv.started,
		Finished:     inv.finished,
		ExitCode:     inv.exitCode,
	}, true
}

// handle processes one ordered event of inv that arrived on the stream of state. The
// push jobs that the event creates are stored through writes, in the background. It
// returns an error only when the stream may handle no more events.
func (s *Server) handle(inv *invocation, state *streamState, ordered *buildpb.OrderedBuildEvent, writes *jobWrites) error {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if state.failed {
		return status.Error(codes.Unavailable, "img bes: storing a push job of this stream failed; resend the events from the first one not acknowledged")
	}

	inv.lastEvent = time.Now()
	key := keyOf(ordered)
	if last, ok := inv.lastSequence[key.component]; ok && key.sequence <= last {
		s.metrics.replayedEvent.Inc()
		s.log.Debug("build event replayed; acknowledging it again", "invocation_id", inv.id, "sequence_number", key.sequence)
		// A retried stream can resend an event whose jobs the dying stream is still
		// storing. Its acknowledgement waits for them and fails with them.
		if original, ok := inv.unstored[key]; ok {
			writes.start(original.wait)
		}
		return nil
	}

	event := ordered.GetEvent()
	switch payload := event.GetEvent().(type) {
	case *buildpb.BuildEvent_ComponentStreamFinished:
		s.metrics.events.WithLabelValues("component_stream_finished").Inc()
		inv.streamDone = true

	case *buildpb.BuildEvent_BazelEvent:
		var bazelEvent bep.BuildEvent
		if err := payload.BazelEvent.UnmarshalTo(&bazelEvent); err != nil {
			// A build event that cannot be read must not fail the build: the server
			// logs it and goes on.
			s.metrics.events.WithLabelValues("malformed").Inc()
			s.log.Warn("skipping a build event that cannot be decoded", "invocation_id", inv.id,
				"sequence_number", key.sequence, "type_url", payload.BazelEvent.GetTypeUrl(), "error", err)
			break
		}
		s.handleBazelEvent(inv, ordered.GetStreamId(), &bazelEvent, writes)

	default:
		s.metrics.events.WithLabelValues("other").Inc()
	}

	inv.lastSequence[key.component] = key.sequence
	if writes.started > 0 {
		inv.unstored[key] = writes
	}
	return nil
}

func (s *Server) handleBazelEvent(inv *invocation, streamID *buildpb.StreamId, event *bep.BuildEvent, writes *jobWrites) {
	id := event.GetId()
	switch payload := event.GetPayload().(type) {
	case *bep.BuildEvent_Started:
		s.metrics.events.WithLabelValues("started").Inc()
		started := payload.Started
		inv.command = started.GetCommand()
		inv.bazelVersion = started.GetBuildToolVersion()
		inv.started = time.UnixMilli(started.GetStartTimeMillis()).UTC()
		s.log.Info("build started", "invocation_id", inv.id, "command", inv.command, "bazel_version", inv.bazelVersion)

	case *bep.BuildEvent_Configured:
		s.metrics.events.WithLabelValues("target_configured").Inc()
		s.targetConfigured(inv, id.GetTargetConfigured().GetLabel(), payload.Configured.GetTargetKind())

	case *bep.BuildEvent_NamedSetOfFiles:
		s.metrics.events.WithLabelValues("named_set_of_files").Inc()
		s.namedSet(inv, id.GetNamedSet().GetId(), payload.NamedSetOfFiles)

	case *bep.BuildEvent_Completed:
		s.metrics.events.WithLabelValues("target_completed").Inc()
		s.targetCompleted(inv, streamID, id.GetTargetCompleted(), payload.Completed, writes)

	case *bep.BuildEvent_Finished:
		s.metrics.events.WithLabelValues("build_finished").Inc()
		inv.finished = true
		inv.exitCode = payload.Finished.GetExitCode().GetName()
		s.log.Info("build finished", "invocation_id", inv.id, "exit_code", inv.exitCode)

	default:
		s.metrics.events.WithLabelValues("other").Inc()
	}
}

// namedSet keeps the relevant part of a file set in memory and in the event state. A
// failed write to the event state is logged, not returned, because it only matters if
// the server restarts during this build.
func (s *Server) namedSet(inv *invocation, setID string, event *bep.NamedSetOfFiles) {
	set := newNamedSet(event)
	if len(set.Files) == 0 && len(set.Nested) == 0 {
		return
	}
	inv.namedSets[setID] = set

	if s.opts.EventState == nil {
		return
	}
	if err := s.opts.EventState.PutNamedSet(inv.id, setID, set); err != nil {
		s.log.Warn("storing a file set failed; a restart during this build may lose its pushes", "invocation_id", inv.id, "error", err)
	}
}

// targetConfigured records the kind of a target, and stores push targets in the event
// state.
func (s *Server) targetConfigured(inv *invocation, label, kind string) {
	inv.kinds[label] = kind
	if !slices.Contains(s.opts.PushKinds, kind) {
		return
	}
	s.log.Debug("push target configured", "invocation_id", inv.id, "target", label, "kind", kind)
	if s.opts.EventState == nil {
		return
	}
	if err := s.opts.EventState.PutPushTarget(inv.id, label, kind); err != nil {
		s.log.Warn("storing a push target failed; a restart during this build may lose its push", "invocation_id", inv.id, "target", label, "error", err)
	}
}

// targetCompleted creates the push jobs of a completed push target. A target is a push
// target when its kind is one of PushKinds. Its push request is the file in the
// img_push_request output group, which Bazel reports only when the build requests it
// (--output_groups=+img_push_request). Otherwise the server looks for a file named
// <name>.request.json or <name>.push_request.json in the output groups Bazel did
// report, such as "default". When the
// server never saw the target's TargetConfigured event (it restarted during the build),
// only the img_push_request output group marks a push target.
func (s *Server) targetCompleted(inv *invocation, streamID *buildpb.StreamId, id *bep.BuildEventId_TargetCompletedId, completed *bep.TargetComplete, writes *jobWrites) {
	label := id.GetLabel()
	if !completed.GetSuccess() || id.GetAspect() != "" {
		return
	}

	kind, kindKnown := inv.kinds[label]
	isPushKind := slices.Contains(s.opts.PushKinds, kind)
	if kindKnown && !isPushKind {
		return
	}

	var sets []*bep.BuildEventId_NamedSetOfFilesId
	fromPushGroup := false
	for _, group := range completed.GetOutputGroup() {
		if group.GetName() == PushRequestOutputGroup {
			sets = group.GetFileSets()
			fromPushGroup = true
			break
		}
	}
	if !fromPushGroup {
		if !kindKnown {
			return
		}
		for _, group := range completed.GetOutputGroup() {
			sets = append(sets, group.GetFileSets()...)
		}
	}

	files, missing := inv.resolveFiles(sets)
	if !fromPushGroup {
		names := pushRequestNames(targetName(label))
		files = slices.DeleteFunc(files, func(file FileRecord) bool {
			return !slices.Contains(names, path.Base(file.Name))
		})
	}

	base := Job{
		InvocationID: inv.id,
		BuildID:      streamID.GetBuildId(),
		Label:        label,
		Kind:         kind,
	}
	configuration := id.GetConfiguration().GetId()

	if len(files) > 0 && len(missing) > 0 {
		// A set may have been dropped because it held no JSON file, so a push request
		// found elsewhere is enough.
		s.log.Debug("push target refers to file sets with no JSON files", "invocation_id", inv.id, "target", label, "sets", missing)
	}
	if len(files) == 0 {
		job := base
		job.ID = jobID(inv.id, label, configuration, "")
		job.State = StateFailed
		switch {
		case !fromPushGroup:
			job.Error = fmt.Sprintf("no push request file (%s) among the outputs of %s that Bazel reported; build with --output_groups=+%s", strings.Join(pushRequestNames(targetName(label)), " or "), label, PushRequestOutputGroup)
		case len(missing) > 0:
			job.Error = fmt.Sprintf("push request file of %s unknown: output group %s refers to file sets %v, which this server never received or which held no JSON file; run the build again", label, PushRequestOutputGroup, missing)
		default:
			job.Error = fmt.Sprintf("output group %s of %s has no files; the push rule must put its push request file there", PushRequestOutputGroup, label)
		}
		writes.start(func() error { return s.recordFailure(job) })
		return
	}

	for _, file := range files {
		job := base
		job.ID = jobID(inv.id, label, configuration, file.Name)
		job.RequestName = file.Name
		job.RequestURI = file.URI
		job.RequestContents = file.Contents
		writes.start(func() error {
			if _, err := s.queue.Enqueue(job); err != nil {
				s.log.Error("storing push job failed; not acknowledging the event so Bazel resends it", "invocation_id", job.InvocationID, "target", label, "error", err)
				return status.Errorf(codes.Unavailable, "img bes: storing the push job of %s failed: %v", label, err)
			}
			return nil
		})
	}
}

// targetName returns the name part of a label: "app" for //pkg:app and //pkg/app.
func targetName(label string) string {
	if i := strings.LastIndex(label, ":"); i >= 0 {
		return label[i+1:]
	}
	return path.Base(label)
}

func (s *Server) recordFailure(job Job) error {
	now := time.Now().UTC()
	job.CreatedAt = now
	job.FinishedAt = now

	created, err := s.queue.store.Create(job)
	if err != nil {
		s.log.Error("storing the record of a failed push target failed; not acknowledging the event so Bazel resends it", "invocation_id", job.InvocationID, "target", job.Label, "error", err)
		return status.Errorf(codes.Unavailable, "img bes: storing the push job of %s failed: %v", job.Label, err)
	}
	if created {
		s.metrics.jobsFinished.WithLabelValues(string(StateFailed)).Inc()
		s.log.Error("push failed", "invocation_id", job.InvocationID, "target", job.Label, "error", job.Error)
		s.queue.notify()
	}
	return nil
}
