package bes

import (
	"context"
	"fmt"
	"sync"

	"github.com/rulesimg/img/reapi"
)

// maxPushRequestSize bounds a push request read from the cache. A request lists
// descriptors only, so even an index of many platforms stays far below it. The image
// package's decoder reads at most the same 64 MiB.
const maxPushRequestSize = 64 << 20

// CachePool reads push request files from the remote caches that build events name in
// bytestream:// URIs, with one reapi client per cache endpoint and instance name. It
// implements RequestFetcher, and its clients serve the lazy push of the same request.
type CachePool struct {
	// Endpoint, when set (grpc://host:port or grpcs://host:port), replaces the host of
	// every bytestream URI, for a server that reaches the cache under another name than
	// Bazel does or over TLS, which the URI does not record.
	Endpoint string
	// Options apply to every client. The instance name comes from each URI instead.
	Options reapi.Options

	mu      sync.Mutex
	clients map[cacheKey]*reapi.Client
}

type cacheKey struct {
	endpoint string
	instance string
}

// Client returns the client of the cache that uri names, and the digest of uri's blob.
func (p *CachePool) Client(ctx context.Context, uri string) (*reapi.Client, reapi.Digest, error) {
	endpoint, instance, d, err := reapi.ParseBytestreamURI(uri)
	if err != nil {
		return nil, reapi.Digest{}, Permanent(fmt.Errorf("%w; Bazel sends bytestream URIs for files in a remote cache, so build with --remote_cache", err))
	}
	if p.Endpoint != "" {
		endpoint = p.Endpoint
	}

	client, err := p.dial(ctx, cacheKey{endpoint: endpoint, instance: instance})
	if err != nil {
		return nil, reapi.Digest{}, err
	}
	return client, d, nil
}

// ClientForEndpoint returns the client of the cache at Endpoint with the instance name
// in Options, for push requests that Bazel sent inline instead of as a URI.
func (p *CachePool) ClientForEndpoint(ctx context.Context) (*reapi.Client, error) {
	if p.Endpoint == "" {
		return nil, Permanent(fmt.Errorf("the push request came inline in the build event, so no remote cache is known; set --cas-endpoint"))
	}
	return p.dial(ctx, cacheKey{endpoint: p.Endpoint, instance: p.Options.InstanceName})
}

// Fetch reads the blob at uri, a bytestream://host:port[/instance]/blobs/<hash>/<size> URI.
func (p *CachePool) Fetch(ctx context.Context, uri string) ([]byte, error) {
	client, d, err := p.Client(ctx, uri)
	if err != nil {
		return nil, err
	}
	if d.Size > maxPushRequestSize {
		return nil, Permanent(fmt.Errorf("blob %s is %d bytes; a push request is at most %d bytes", uri, d.Size, maxPushRequestSize))
	}
	return client.ReadAll(ctx, d)
}

// Close closes every client.
func (p *CachePool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, client := range p.clients {
		client.Close()
		delete(p.clients, key)
	}
	return nil
}

// dial returns the pooled client for key, dialing it on first use. A failed dial is not
// kept, so the next attempt dials again.
func (p *CachePool) dial(ctx context.Context, key cacheKey) (*reapi.Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()

	if client, ok := p.clients[key]; ok {
		return client, nil
	}
	opts := p.Options
	opts.InstanceName = key.instance
	client, err := reapi.Dial(ctx, key.endpoint, opts)
	if err != nil {
		return nil, fmt.Errorf("connect to the remote cache %s: %w", key.endpoint, err)
	}
	if p.clients == nil {
		p.clients = map[cacheKey]*reapi.Client{}
	}
	p.clients[key] = client
	return client, nil
}
