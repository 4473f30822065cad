package push

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"
)

// backoff computes the delays between attempts: exponential growth from base with full
// jitter, capped at max, so many clients retrying at once spread out.
type backoff struct {
	base time.Duration
	max  time.Duration
}

func (b backoff) delay(attempt int) time.Duration {
	ceiling := b.base << min(attempt, 20)
	if ceiling > b.max || ceiling <= 0 {
		ceiling = b.max
	}
	return time.Duration(rand.Int64N(int64(ceiling)) + 1)
}

// maxRetryAfter caps how long a Retry-After header can make img wait, so a registry
// that sends an hour does not stall a push silently.
const maxRetryAfter = 2 * time.Minute

// retryAfter reads a Retry-After header in seconds or as an HTTP date.
func retryAfter(res *http.Response) (time.Duration, bool) {
	if res == nil {
		return 0, false
	}
	value := res.Header.Get("Retry-After")
	if value == "" {
		return 0, false
	}
	var wait time.Duration
	if seconds, err := strconv.Atoi(value); err == nil {
		wait = time.Duration(seconds) * time.Second
	} else if when, err := http.ParseTime(value); err == nil {
		wait = time.Until(when)
	} else {
		return 0, false
	}
	return max(0, min(wait, maxRetryAfter)), true
}

// retryableStatus reports whether a registry response is worth another attempt: request
// timeouts, rate limits and server errors. Other 4xx responses will not change.
func retryableStatus(code int) bool {
	return code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500
}

// retryableError reports whether a transport error is transient: resets, timeouts,
// refused or dropped connections.
func retryableError(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var statusErr *RegistryError
	if errors.As(err, &statusErr) {
		return retryableStatus(statusErr.StatusCode)
	}
	// net/http wraps every failure of a request in *url.Error, which implements
	// net.Error. What matters is the cause inside, because it may be the blob source's
	// own error (a corrupt cache entry) that no retry will fix.
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		err = urlErr.Err
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return true
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return true
	}
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, context.DeadlineExceeded)
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}
