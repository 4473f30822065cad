package bes

import (
	"context"
	"errors"

	"github.com/rulesimg/img/image"
)

// PushJob is the input of one push: a decoded push request and its origin.
type PushJob struct {
	InvocationID string
	BuildID      string
	Label        string
	// RequestURI is the bytestream:// URI of the push request file in the remote cache
	// that Bazel used, or empty when Bazel sent the file inline.
	RequestURI string
	// Request is the push request file as Bazel wrote it, and Decoded is the same
	// request decoded by image.DecodeRequest.
	Request []byte
	Decoded *image.Request
}

// PushResult is the outcome of a push: the root manifest digest and the references set.
type PushResult struct {
	Digest     string
	References []string
}

// Pusher pushes one image. The queue calls Push from up to --jobs workers at once, so
// jobs of one build that share layers reach the push engine concurrently. The engine
// is the place that shares identical blob uploads between them. A worker that waits on
// an upload another worker started must still return when ctx ends.
//
// An error is retried with backoff unless it wraps a PermanentError.
type Pusher interface {
	Push(ctx context.Context, job PushJob) (PushResult, error)
}

// PusherFunc adapts a function to Pusher.
type PusherFunc func(ctx context.Context, job PushJob) (PushResult, error)

func (f PusherFunc) Push(ctx context.Context, job PushJob) (PushResult, error) {
	return f(ctx, job)
}

// RequestFetcher reads a push request file from the location in a build event, for
// example a bytestream:// URI in the remote cache.
type RequestFetcher interface {
	Fetch(ctx context.Context, uri string) ([]byte, error)
}

// PermanentError marks a failure that a retry cannot fix, such as an invalid push
// request or a registry that rejects the credentials.
type PermanentError struct {
	Err error
}

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err so that the queue fails the job at once instead of retrying it.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// IsPermanent reports whether err or an error it wraps is a PermanentError.
func IsPermanent(err error) bool {
	var permanent *PermanentError
	return errors.As(err, &permanent)
}
