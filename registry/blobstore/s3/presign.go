package s3

import (
	"context"
	"sync"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
)

const (
	defaultPresignExpiry = 15 * time.Minute
	defaultPresignMargin = 5 * time.Minute

	// maxCachedURLs bounds the presigned URL cache. Signing is cheap (no request is sent), so
	// the cache only saves CPU on hot blobs and may be dropped whole when full.
	maxCachedURLs = 10_000
)

// presigner makes presigned GET URLs and reuses each while it has at least margin of validity
// left, so a client that follows the redirect at once still has margin to read the blob.
type presigner struct {
	client *awss3.PresignClient
	bucket string
	expiry time.Duration
	margin time.Duration
	now    func() time.Time

	mu   sync.Mutex
	urls map[string]presignedURL
}

type presignedURL struct {
	url     string
	expires time.Time
}

func newPresigner(client *awss3.Client, bucket string, expiry, margin time.Duration) *presigner {
	if expiry <= 0 {
		expiry = defaultPresignExpiry
	}
	if margin <= 0 {
		margin = defaultPresignMargin
	}
	// A margin as long as the expiry would never reuse a URL; half the expiry still does.
	margin = min(margin, expiry/2)
	return &presigner{
		client: awss3.NewPresignClient(client),
		bucket: bucket,
		expiry: expiry,
		margin: margin,
		now:    time.Now,
		urls:   map[string]presignedURL{},
	}
}

// url returns a presigned GET URL of key, from the cache when it is valid for at least margin.
func (p *presigner) url(ctx context.Context, key string) (string, error) {
	now := p.now()
	p.mu.Lock()
	cached, ok := p.urls[key]
	p.mu.Unlock()
	if ok && now.Add(p.margin).Before(cached.expires) {
		return cached.url, nil
	}

	request, err := p.client.PresignGetObject(ctx, &awss3.GetObjectInput{Bucket: &p.bucket, Key: &key},
		awss3.WithPresignExpires(p.expiry))
	if err != nil {
		return "", err
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.urls) >= maxCachedURLs {
		clear(p.urls)
	}
	p.urls[key] = presignedURL{url: request.URL, expires: now.Add(p.expiry)}
	return request.URL, nil
}

func (p *presigner) forget(key string) {
	p.mu.Lock()
	delete(p.urls, key)
	p.mu.Unlock()
}
