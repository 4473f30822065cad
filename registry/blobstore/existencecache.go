package blobstore

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// existenceCache remembers blob sizes that Stat found, for a while, so repeated HEAD requests
// (every push checks each layer) do not each reach a remote store.
type existenceCache struct {
	Store
	ttl        time.Duration
	maxEntries int
	now        func() time.Time

	mu      sync.Mutex
	entries map[digest.Digest]cachedSize
}

type cachedSize struct {
	size    int64
	expires time.Time
}

// WithExistenceCache returns store with positive Stat results cached for ttl, up to maxEntries
// digests. Absence is never cached, so a blob is visible as soon as it is committed. A cached
// blob that the backend evicted meanwhile is still reported by Stat until ttl passes, but Open
// returns ErrNotFound and drops the entry.
//
// NOTE: entries are keyed by digest alone. Behind a store that looks blobs up per repository
// (upstream), a blob found in one repository reads as present in every repository for ttl.
func WithExistenceCache(store Store, ttl time.Duration, maxEntries int) Store {
	return &existenceCache{Store: store, ttl: ttl, maxEntries: maxEntries, now: time.Now, entries: map[digest.Digest]cachedSize{}}
}

func (c *existenceCache) Stat(ctx context.Context, dgst digest.Digest) (int64, error) {
	c.mu.Lock()
	entry, ok := c.entries[dgst]
	c.mu.Unlock()
	if ok && c.now().Before(entry.expires) {
		return entry.size, nil
	}

	size, err := c.Store.Stat(ctx, dgst)
	if err != nil {
		c.forget(dgst)
		return 0, err
	}
	c.remember(dgst, size)
	return size, nil
}

func (c *existenceCache) remember(dgst digest.Digest, size int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.maxEntries {
		c.evictLocked()
	}
	c.entries[dgst] = cachedSize{size: size, expires: c.now().Add(c.ttl)}
}

// evictLocked drops expired entries, or every entry when none has expired. Dropping all is
// crude but bounded, and costs only extra Stat calls to the backend.
func (c *existenceCache) evictLocked() {
	now := c.now()
	for dgst, entry := range c.entries {
		if !now.Before(entry.expires) {
			delete(c.entries, dgst)
		}
	}
	if len(c.entries) >= c.maxEntries {
		clear(c.entries)
	}
}

func (c *existenceCache) forget(dgst digest.Digest) {
	c.mu.Lock()
	delete(c.entries, dgst)
	c.mu.Unlock()
}

func (c *existenceCache) Open(ctx context.Context, dgst digest.Digest, offset int64) (io.ReadCloser, error) {
	reader, err := c.Store.Open(ctx, dgst, offset)
	if errors.Is(err, ErrNotFound) {
		c.forget(dgst)
	}
	return reader, err
}

func (c *existenceCache) Delete(ctx context.Context, dgst digest.Digest) error {
	c.forget(dgst)
	return c.Store.Delete(ctx, dgst)
}

func (c *existenceCache) RedirectURL(ctx context.Context, dgst digest.Digest) (string, bool, error) {
	if redirector, ok := c.Store.(Redirector); ok {
		return redirector.RedirectURL(ctx, dgst)
	}
	return "", false, nil
}
