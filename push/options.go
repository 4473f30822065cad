package push

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

// Option configures a push.
type Option func(*options)

type options struct {
	jobs      int
	checkJobs int
	retries   int
	backoff   backoff
	chunkSize int64
	smallBlob int64
	verify    bool
	insecure  map[string]bool
	keychain  authn.Keychain
	helper    HeaderSource
	transport http.RoundTripper
	progress  Progress
	logger    *slog.Logger
	uploads   *UploadGroup
}

// The defaults. Four concurrent uploads keep a gigabit link busy without opening more
// connections than registries rate-limit per client. Existence checks are cheap HEADs,
// so more of them run at once.
func defaultOptions() *options {
	return &options{
		jobs:      4,
		checkJobs: 16,
		retries:   5,
		backoff:   backoff{base: 250 * time.Millisecond, max: 10 * time.Second},
		smallBlob: 1 << 20,
		insecure:  map[string]bool{},
		keychain:  authn.DefaultKeychain,
		transport: defaultTransport(),
		progress:  nopProgress{},
		logger:    slog.Default(),
	}
}

// defaultTransport is net/http's default transport with enough idle connections per
// host for the concurrent existence checks and uploads. The default keeps 2, so a push
// of many blobs would open and close a connection for most requests.
func defaultTransport() http.RoundTripper {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 32
	return transport
}

// WithJobs sets how many blobs upload at once (default 4).
func WithJobs(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.jobs = n
		}
	}
}

// WithRetries sets how many times a failed request is retried (default 5).
func WithRetries(n int) Option {
	return func(o *options) {
		if n >= 0 {
			o.retries = n
		}
	}
}

// WithBackoff sets the first delay between retries and the cap on any delay.
func WithBackoff(base, max time.Duration) Option {
	return func(o *options) { o.backoff = backoff{base: base, max: max} }
}

// WithChunkSize makes uploads send PATCHes of at most n bytes (0 = one PATCH per blob,
// unless the registry announces a minimum chunk length).
func WithChunkSize(n int64) Option {
	return func(o *options) { o.chunkSize = n }
}

// WithVerify hashes local blobs before sending them, so a corrupt file is reported
// before any upload rather than by the registry's DIGEST_INVALID response.
func WithVerify(verify bool) Option {
	return func(o *options) { o.verify = verify }
}

// WithInsecureRegistries allows plain HTTP to these hosts (host or host:port). Loopback
// hosts always use plain HTTP.
func WithInsecureRegistries(hosts []string) Option {
	return func(o *options) {
		for _, h := range hosts {
			o.insecure[h] = true
		}
	}
}

// WithKeychain sets where registry credentials come from (default: the docker config
// with its credHelpers and credsStore).
func WithKeychain(k authn.Keychain) Option {
	return func(o *options) { o.keychain = k }
}

// WithCredentialHelper makes a Bazel credential helper supply the headers for every
// registry request, in place of the docker config.
func WithCredentialHelper(h HeaderSource) Option {
	return func(o *options) { o.helper = h }
}

// WithTransport sets the HTTP transport under authentication and retries.
func WithTransport(t http.RoundTripper) Option {
	return func(o *options) { o.transport = t }
}

// WithProgress receives per-blob progress.
func WithProgress(p Progress) Option {
	return func(o *options) {
		if p == nil {
			p = nopProgress{}
		}
		o.progress = p
	}
}

// WithLogger sets the logger for retries and per-blob events.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}
