package bes

import (
	"strings"
	"time"
)

// State is the stage of a push job. Queued and Running jobs are unfinished and resume
// after a restart. The other states are final.
type State string

const (
	StateQueued    State = "queued"
	StateRunning   State = "running"
	StateSucceeded State = "succeeded"
	StateFailed    State = "failed"
	// StateSkipped marks a push target whose push request names another strategy, so
	// another tool (img push) pushes it.
	StateSkipped State = "skipped"
)

// Final reports whether a job in state s is done and will not run again.
func (s State) Final() bool {
	return s == StateSucceeded || s == StateFailed || s == StateSkipped
}

// Job is one push that a build event asked for, as the queue stores it.
type Job struct {
	// ID is unique per invocation, target, configuration and push request file, so a
	// replayed build event maps to the job that its first delivery created.
	ID           string `json:"id"`
	InvocationID string `json:"invocation_id"`
	BuildID      string `json:"build_id,omitempty"`
	Label        string `json:"label"`
	Kind         string `json:"kind,omitempty"`

	// RequestURI is the location of the push request file, a bytestream:// URI in the
	// remote cache. RequestContents holds the file instead when Bazel sent it inline.
	RequestURI      string `json:"request_uri,omitempty"`
	RequestContents []byte `json:"request_contents,omitempty"`
	RequestName     string `json:"request_name,omitempty"`

	State    State  `json:"state"`
	Strategy string `json:"strategy,omitempty"`
	Attempts int    `json:"attempts"`
	Error    string `json:"error,omitempty"`

	// References lists the registry/repository:tag names the push request names, and
	// Digest is the pushed root manifest's digest once known.
	References []string `json:"references,omitempty"`
	Digest     string   `json:"digest,omitempty"`

	CreatedAt   time.Time `json:"created_at"`
	StartedAt   time.Time `json:"started_at,omitzero"`
	FinishedAt  time.Time `json:"finished_at,omitzero"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
}

// jobID joins the parts that identify a push. The invocation id comes first so that
// one invocation's jobs sort together in the store.
func jobID(invocationID, label, configuration, requestName string) string {
	return strings.Join([]string{invocationID, label, configuration, requestName}, "\x00")
}

// invocationPrefix is the key prefix that all jobs of one invocation share.
func invocationPrefix(invocationID string) string {
	return invocationID + "\x00"
}
