package push

import (
	"context"
	"errors"
	"io"
	"sync"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// uploadShared streams one read of desc to several registries at once, so a blob from
// the remote cache crosses the network from the cache only once. A destination whose
// upload fails drops out of the shared stream and finishes on its own, resuming from
// what its registry received. The others continue.
func (p *pusher) uploadShared(ctx context.Context, desc ocispec.Descriptor, targets []*destination) {
	body, err := p.strategy.Source.Open(ctx, desc, 0)
	if err != nil {
		// Each destination retries the read on its own and reports its own error.
		for _, dest := range targets {
			p.uploadTo(ctx, desc, dest, nil)
		}
		return
	}
	defer body.Close()

	readers := make([]*io.PipeReader, len(targets))
	tee := &teeWriter{}
	for i := range targets {
		r, w := io.Pipe()
		readers[i] = r
		tee.writers = append(tee.writers, w)
	}

	var wg sync.WaitGroup
	for i, dest := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.uploadSharedTo(ctx, desc, dest, readers[i])
		}()
	}
	_, copyErr := io.Copy(tee, body)
	tee.closeAll(copyErr)
	wg.Wait()
}

// uploadSharedTo sends the shared stream r to one destination, falling back to a
// resumable upload of its own when the shared stream or this registry fails.
func (p *pusher) uploadSharedTo(ctx context.Context, desc ocispec.Descriptor, dest *destination, r *io.PipeReader) {
	tracker := p.opts.progress.Start(dest.String(), desc)
	session, err := dest.client.startUpload(ctx)
	if err == nil {
		err = dest.client.sendChunk(ctx, session, &countingReader{r: r, tracker: tracker}, desc.Size)
		if err == nil {
			err = dest.client.commitUpload(ctx, session, desc, nil, 0)
		}
	}
	// Stop the tee from writing to this destination before anything else happens,
	// so a failure here never stalls the others.
	r.CloseWithError(errDroppedOut)
	if err == nil {
		tracker.Done("pushed", nil)
		dest.countUploaded(desc)
		return
	}

	p.opts.logger.Warn("shared upload failed; continuing alone", "registry", dest.Registry, "repository", dest.Repository, "digest", desc.Digest, "error", err)
	if session != nil && dest.client.uploadStatus(ctx, session) != nil {
		session = nil
	}
	err = p.upload(ctx, desc, dest, session, tracker)
	tracker.Done("pushed", err)
	if err != nil {
		dest.fail(err)
		return
	}
	dest.countUploaded(desc)
}

var errDroppedOut = errors.New("destination left the shared stream")

// teeWriter writes to every pipe that is still being read. A pipe whose reader left is
// skipped from then on. It fails only when no reader is left.
type teeWriter struct {
	writers []*io.PipeWriter
	dead    []bool
}

func (t *teeWriter) Write(p []byte) (int, error) {
	if t.dead == nil {
		t.dead = make([]bool, len(t.writers))
	}
	alive := 0
	for i, w := range t.writers {
		if t.dead[i] {
			continue
		}
		if _, err := w.Write(p); err != nil {
			t.dead[i] = true
			continue
		}
		alive++
	}
	if alive == 0 {
		return 0, errDroppedOut
	}
	return len(p), nil
}

func (t *teeWriter) closeAll(err error) {
	for _, w := range t.writers {
		w.CloseWithError(err)
	}
}
