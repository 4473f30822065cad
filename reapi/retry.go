package reapi

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	// The backoff follows Bazel's remote retrier: 100ms doubling up to 5s, with jitter so
	// that many clients failing together do not retry together.
	initialBackoff = 100 * time.Millisecond
	maxBackoff     = 5 * time.Second
)

// retryable reports whether a failed call may succeed when repeated.
//
// UNAVAILABLE covers dropped connections and streams and restarting servers.
// RESOURCE_EXHAUSTED is a busy server, and DEADLINE_EXCEEDED a server-side timeout (the
// caller's own deadline is checked first and never retried). ABORTED is a conflict, such as
// concurrent writes of one blob, that REAPI servers expect the client to retry. Other codes (NOT_FOUND,
// INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED, INTERNAL, UNKNOWN) repeat the same way.
// A ByteStream Read that ends early counts as a dropped stream.
func retryable(err error) bool {
	var credErr *credentialError
	if errors.As(err, &credErr) {
		return false
	}
	var endedErr *streamEndedError
	if errors.As(err, &endedErr) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.ResourceExhausted, codes.DeadlineExceeded, codes.Aborted:
		return true
	}
	return false
}

// backoff returns the wait before retry number attempt (1 for the first retry).
func backoff(attempt int) time.Duration {
	d := initialBackoff << (attempt - 1)
	if d > maxBackoff || d <= 0 {
		d = maxBackoff
	}
	// Wait between 80% and 120% of d.
	jitter := time.Duration(rand.Int64N(int64(d)*2/5+1)) - d/5
	return d + jitter
}

// retry runs call until it succeeds, fails with an error that is not retryable, or has been
// retried c.retries times. attrs are logged with each retry.
func (c *Client) retry(ctx context.Context, op string, attrs []any, call func(ctx context.Context) error) error {
	for attempt := 0; ; attempt++ {
		err := call(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || !retryable(err) || attempt >= c.retries {
			return err
		}
		if err := c.sleepBeforeRetry(ctx, op, attempt+1, err, attrs); err != nil {
			return err
		}
	}
}

// sleepBeforeRetry logs a retry and waits for its backoff, or returns the ctx error.
func (c *Client) sleepBeforeRetry(ctx context.Context, op string, attempt int, cause error, attrs []any) error {
	delay := backoff(attempt)
	args := append([]any{"endpoint", c.endpoint, "op", op, "retry", attempt, "of", c.retries, "delay", delay, "error", cause}, attrs...)
	c.logger.Warn("remote cache call failed, retrying", args...)

	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// rpcError wraps a failed call's error with the endpoint and a hint for the codes users can
// act on. The gRPC status stays reachable with status.FromError and errors.As.
func (c *Client) rpcError(op string, err error) error {
	hint := ""
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied:
		hint = "; check the headers or credential helper configured for this cache"
	case codes.Unavailable:
		hint = "; check that the cache is running and reachable"
	}
	var credErr *credentialError
	if errors.As(err, &credErr) {
		hint = "; the call was not sent"
	}
	return fmt.Errorf("remote cache %s: %s: %w%s", c.endpoint, op, err, hint)
}

func statusError(code codes.Code, message string) error {
	return status.Error(code, message)
}

// blobError wraps a failed call on blob d. A NOT_FOUND status becomes ErrNotFound.
func (c *Client) blobError(op string, d Digest, err error) error {
	if status.Code(err) == codes.NotFound {
		return fmt.Errorf("remote cache %s: blob %s %w", c.endpoint, d, ErrNotFound)
	}
	return c.rpcError(fmt.Sprintf("%s of blob %s", op, d), err)
}
