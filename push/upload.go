package push

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/rulesimg/img/blobsource"
)

// uploadBlobs sends every missing blob, up to jobs at a time. Per registry, a blob is
// uploaded once and mounted into the other destination repositories. Across
// registries, a blob that is not a local file is read once and streamed to all of
// them together.
func (p *pusher) uploadBlobs(ctx context.Context, blobs []ocispec.Descriptor) {
	group, ctx := errgroup.WithContext(ctx)
	group.SetLimit(p.opts.jobs)
	for _, desc := range blobs {
		group.Go(func() error {
			p.uploadBlob(ctx, desc)
			return nil
		})
	}
	group.Wait()
}

// registryPlan is the work one registry needs for one blob: the destination to upload to
// (nil when some repository there has it already), the repository to mount from, and
// the destinations that get the mount.
type registryPlan struct {
	upload *destination
	from   string
	mounts []*destination
}

func (p *pusher) planBlob(desc ocispec.Descriptor) []*registryPlan {
	plans := map[string]*registryPlan{}
	var order []string
	for _, dest := range p.dests {
		plan, ok := plans[dest.Registry]
		if !ok {
			plan = &registryPlan{}
			plans[dest.Registry] = plan
			order = append(order, dest.Registry)
		}
		dest.mu.Lock()
		missing := dest.missing[desc.Digest]
		dest.mu.Unlock()
		if !missing {
			if plan.from == "" {
				plan.from = dest.Repository
			}
			continue
		}
		plan.mounts = append(plan.mounts, dest)
	}

	var out []*registryPlan
	for _, registry := range order {
		plan := plans[registry]
		if len(plan.mounts) == 0 {
			continue
		}
		if plan.from == "" {
			plan.upload, plan.mounts = plan.mounts[0], plan.mounts[1:]
			plan.from = plan.upload.Repository
		}
		out = append(out, plan)
	}
	return out
}

func (p *pusher) uploadBlob(ctx context.Context, desc ocispec.Descriptor) {
	plans := p.planBlob(desc)
	var targets []*destination
	for _, plan := range plans {
		if plan.upload != nil && plan.upload.err() == nil {
			targets = append(targets, plan.upload)
		}
	}

	if len(targets) > 1 && !p.isLocal(desc) {
		p.uploadShared(ctx, desc, targets)
	} else {
		var wg sync.WaitGroup
		for _, dest := range targets {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.uploadTo(ctx, desc, dest, nil)
			}()
		}
		wg.Wait()
	}

	for _, plan := range plans {
		if plan.upload != nil && plan.upload.err() != nil {
			continue
		}
		for _, dest := range plan.mounts {
			p.mountTo(ctx, desc, dest, plan.from)
		}
	}
}

func (p *pusher) isLocal(desc ocispec.Descriptor) bool {
	return blobsource.Files(p.req.Files).Has(desc)
}

// mountTo links desc from another repository of the same registry, falling back to
// an upload when the registry refuses.
func (p *pusher) mountTo(ctx context.Context, desc ocispec.Descriptor, dest *destination, from string) {
	if dest.err() != nil {
		return
	}
	mounted, session, err := dest.client.mountBlob(ctx, desc, from)
	if err == nil && mounted {
		dest.count(func(r *DestinationResult) { r.BlobsMounted++ })
		p.opts.logger.Info("mounted blob", "registry", dest.Registry, "repository", dest.Repository, "from", from, "digest", desc.Digest)
		return
	}
	if err != nil {
		p.opts.logger.Warn("mount rejected; uploading instead", "registry", dest.Registry, "repository", dest.Repository, "from", from, "digest", desc.Digest, "error", err)
		session = nil
	}
	p.uploadTo(ctx, desc, dest, session)
}

// uploadTo uploads desc to one destination, recording failure on it. When another
// push in this process is uploading the same blob there, it waits for that upload.
func (p *pusher) uploadTo(ctx context.Context, desc ocispec.Descriptor, dest *destination, session *uploadSession) {
	tracker := p.opts.progress.Start(dest.String(), desc)
	key := dest.String() + "@" + desc.Digest.String()
	uploaded, err := p.opts.uploads.do(ctx, key, func() error {
		return p.upload(ctx, desc, dest, session, tracker)
	})
	if !uploaded && session != nil {
		// The session opened by a refused mount is not needed; the registry expires it.
		p.opts.logger.Debug("blob uploaded by another push", "registry", dest.Registry, "repository", dest.Repository, "digest", desc.Digest)
	}
	outcome := "pushed"
	if !uploaded {
		outcome = "shared"
	}
	tracker.Done(outcome, err)
	if err != nil {
		dest.fail(err)
		return
	}
	if uploaded {
		dest.countUploaded(desc)
	} else {
		dest.count(func(r *DestinationResult) { r.BlobsExisting++ })
	}
}

// upload runs the upload protocol for one blob: a single POST+PUT for small blobs,
// otherwise PATCHes (one, or chunks of the negotiated size) and a closing PUT. When a
// PATCH fails on a transient error, it requests the session's committed range and
// continues from there. When the session is gone, it starts a new one.
func (p *pusher) upload(ctx context.Context, desc ocispec.Descriptor, dest *destination, session *uploadSession, tracker Tracker) error {
	client := dest.client
	step := func(name string, err error) error {
		err = p.explainDigestInvalid(desc, err)
		return &StepError{Destination: dest.String(), Object: p.roles[desc.Digest], Step: name, Err: err}
	}

	var err error
	if session == nil {
		if session, err = client.startUpload(ctx); err != nil {
			return step("starting the upload", err)
		}
	}
	chunk := chunkSize(p.opts.chunkSize, session.minChunk)

	reauthenticated := false
	for attempt := 0; ; attempt++ {
		err = p.sendBlob(ctx, desc, client, session, chunk, tracker)
		if err == nil {
			return nil
		}
		var regErr *RegistryError
		if errors.As(err, &regErr) && regErr.HasCode("DIGEST_INVALID") {
			return step("committing the upload", err)
		}
		// A 401 here means the token expired during the upload. The auth transport has
		// dropped it, so one more attempt fetches a new one; a file body cannot be
		// replayed inside the transport.
		reauthenticate := errors.As(err, &regErr) && regErr.StatusCode == 401 && !reauthenticated
		if reauthenticate {
			reauthenticated = true
		} else if !retryableError(err) || attempt >= p.opts.retries || ctx.Err() != nil {
			return step("uploading", err)
		}
		wait := p.opts.backoff.delay(attempt)
		if errors.As(err, &regErr) {
			if d, ok := retryAfter(regErr.retryAfter); ok {
				wait = d
			}
		}
		client.log.Warn("retrying blob upload", "digest", desc.Digest, "offset", session.offset, "attempt", attempt+1, "wait", wait, "error", err)
		if err := sleep(ctx, wait); err != nil {
			return step("uploading", err)
		}
		if err := client.uploadStatus(ctx, session); err != nil {
			client.log.Warn("upload session lost; starting over", "digest", desc.Digest, "error", err)
			if session, err = client.startUpload(ctx); err != nil {
				return step("restarting the upload", err)
			}
		}
	}
}

// sendBlob sends desc's bytes from the session's offset and commits.
func (p *pusher) sendBlob(ctx context.Context, desc ocispec.Descriptor, client *repoClient, session *uploadSession, chunk int64, tracker Tracker) error {
	if session.offset > desc.Size {
		return fmt.Errorf("invalid upload session: it contains %d bytes, more than the blob's %d", session.offset, desc.Size)
	}
	body, err := p.strategy.Source.Open(ctx, desc, session.offset)
	if err != nil {
		return fmt.Errorf("reading from %s: %w", p.strategy.Source.Describe(desc), err)
	}
	defer body.Close()
	reader := trackBody(body, session.offset, tracker)

	remaining := desc.Size - session.offset
	if session.offset == 0 && p.opts.chunkSize == 0 && desc.Size <= p.opts.smallBlob {
		return client.commitUpload(ctx, session, desc, reader, desc.Size)
	}
	if chunk == 0 {
		chunk = remaining
	}
	for session.offset < desc.Size {
		n := min(chunk, desc.Size-session.offset)
		part := reader
		if n < desc.Size-session.offset {
			part = io.LimitReader(reader, n)
		}
		if err := client.sendChunk(ctx, session, part, n); err != nil {
			return err
		}
	}
	return client.commitUpload(ctx, session, desc, nil, 0)
}

// trackBody reports progress for body. A *os.File is returned as it is, so net/http
// can send it with sendfile(2). Its file position is then the progress.
func trackBody(body io.Reader, offset int64, tracker Tracker) io.Reader {
	if f, ok := body.(*os.File); ok {
		tracker.Poll(filePosition(f))
		return f
	}
	tracker.Add(offset)
	return &countingReader{r: body, tracker: tracker}
}

// explainDigestInvalid turns the registry's DIGEST_INVALID into an error that names
// where the bytes came from, because that is what the user must fix.
func (p *pusher) explainDigestInvalid(desc ocispec.Descriptor, err error) error {
	var regErr *RegistryError
	if !errors.As(err, &regErr) || !regErr.HasCode("DIGEST_INVALID") {
		return err
	}
	return fmt.Errorf("the registry computed another digest than %s for the bytes of %s; the file is corrupt or stale, so rebuild the image (img push --verify checks local files before sending): %w", desc.Digest, p.strategy.Source.Describe(desc), err)
}

// announcedChunkFloor is the smallest chunk img sends to a registry that announces
// OCI-Chunk-Min-Length when the user set no --chunk-size. The header sets a minimum, and
// chunks of exactly that size (often 5 MiB) would cost a round trip per few megabytes.
const announcedChunkFloor = 64 << 20

// chunkSize returns the PATCH size for an upload: 0 (one PATCH for the whole blob) unless
// the user asked for chunks or the registry announced a minimum chunk length, and never
// below that minimum.
func chunkSize(requested, announced int64) int64 {
	switch {
	case requested > 0:
		return max(requested, announced)
	case announced > 0:
		return max(announced, announcedChunkFloor)
	}
	return 0
}
