package push

import (
	"context"
	"sync"
)

// UploadGroup shares uploads between pushes that run at once in one process, such as
// the BES server's workers. While one push uploads a blob to a repository, another push
// of the same blob to the same repository waits for it instead of sending the bytes a
// second time. A waiter stops waiting when its context ends, and uploads itself when the
// first upload fails.
type UploadGroup struct {
	mu       sync.Mutex
	inFlight map[string]*sharedUpload
}

type sharedUpload struct {
	done chan struct{}
	err  error
}

// NewUploadGroup returns an empty group.
func NewUploadGroup() *UploadGroup {
	return &UploadGroup{inFlight: map[string]*sharedUpload{}}
}

// WithUploadGroup makes pushes share identical uploads through g.
func WithUploadGroup(g *UploadGroup) Option {
	return func(o *options) { o.uploads = g }
}

// do runs upload unless an upload with the same key is in flight, in which case it
// waits for that one. It reports whether this caller did the upload itself.
func (g *UploadGroup) do(ctx context.Context, key string, upload func() error) (uploaded bool, err error) {
	if g == nil {
		return true, upload()
	}
	for {
		g.mu.Lock()
		call, busy := g.inFlight[key]
		if !busy {
			call = &sharedUpload{done: make(chan struct{})}
			g.inFlight[key] = call
			g.mu.Unlock()

			call.err = upload()
			g.mu.Lock()
			delete(g.inFlight, key)
			g.mu.Unlock()
			close(call.done)
			return true, call.err
		}
		g.mu.Unlock()

		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-call.done:
		}
		if call.err == nil {
			return false, nil
		}
		// The other upload failed; try once more as the one who uploads.
	}
}
