// Package reapi is a client for the content-addressable storage of a Remote Execution API v2
// cache (bazel-remote, Buildbarn, BuildBuddy, EngFlow and others): capabilities,
// FindMissingBlobs, batch and ByteStream reads and writes with resume, instance names and
// authentication headers. Lazy push, the registry's remote cache blob store and the Build
// Event Service backend all reach the cache through it.
//
// Every error starts with "remote cache <endpoint>:", so users can tell a cache failure from
// a registry failure.
package reapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/rulesimg/img/credhelper"
)

// ErrNotFound matches, with errors.Is, the error for a blob that is not in the cache.
var ErrNotFound = errors.New("not found")

const (
	// DefaultRetries is the number of retries after a failed call, as Bazel's --remote_retries.
	DefaultRetries = 5

	// maxMessageBytes is the largest request this client sends. gRPC servers reject larger
	// messages by default (grpc-go and grpc-java both default to 4 MiB), and REAPI servers
	// rarely raise the limit, so batches are split to stay under it with room for framing.
	maxMessageBytes = 4<<20 - 64<<10

	// maxReceiveMessageBytes bounds one response message. ByteStream chunks and small batch
	// reads are far smaller; the bound keeps a misbehaving server from making the client
	// allocate without limit.
	maxReceiveMessageBytes = 64 << 20

	// smallBlobBytes is the size up to which blobs go through BatchReadBlobs and
	// BatchUpdateBlobs, which hold the whole blob in memory. Larger blobs are streamed.
	smallBlobBytes = 512 << 10

	// streamChunkBytes is the data size of one ByteStream WriteRequest.
	streamChunkBytes = 1 << 20
)

// Options configures a Client.
type Options struct {
	// InstanceName selects the cache's instance, as Bazel's --remote_instance_name.
	InstanceName string
	// Headers are sent on every call, as Bazel's --remote_header. Names are case-insensitive.
	Headers map[string][]string
	// CredentialHelper supplies headers for every call; nil means none.
	CredentialHelper *credhelper.Helper
	// CAFile is a PEM file of root certificates for grpcs:// endpoints; empty means the
	// system roots.
	CAFile string
	// Retries is how often a failed call is retried; 0 means DefaultRetries and a negative
	// value means no retries.
	Retries int
	// Logger receives retries and caught errors; nil means no logs.
	Logger *slog.Logger
}

// Capabilities are the cache limits and features announced in GetCapabilities.
type Capabilities struct {
	// MaxBatchTotalSizeBytes is the cache's limit for the blob bytes in one batch call; 0
	// means the cache sets none beyond the gRPC message size.
	MaxBatchTotalSizeBytes int64
	// MaxCASBlobSizeBytes is the largest blob the cache accepts; 0 means no limit.
	MaxCASBlobSizeBytes int64
	// Zstd reports whether ByteStream reads and writes of compressed-blobs/zstd are supported.
	Zstd bool
}

// Client talks to one remote cache. It is safe for concurrent use.
type Client struct {
	endpoint string // as given to Dial, without any user:password
	instance string
	retries  int
	logger   *slog.Logger
	caps     Capabilities

	conn       *grpc.ClientConn
	cas        repb.ContentAddressableStorageClient
	byteStream bytestream.ByteStreamClient
}

// Dial connects to a remote cache at grpc://host:port, grpcs://host[:port] (TLS, port 443 by
// default) or unix:///path/to/socket, and calls GetCapabilities to check that the cache supports SHA-256.
// A grpc:// or grpcs:// endpoint may carry user:password@, which is sent as HTTP basic auth
// in the authorization header, the form bazel-remote's --htpasswd_file checks.
func Dial(ctx context.Context, endpoint string, opts Options) (*Client, error) {
	target, authority, transport, basicAuth, display, err := parseEndpoint(endpoint, opts.CAFile)
	if err != nil {
		return nil, err
	}

	c := &Client{
		endpoint: display,
		instance: opts.InstanceName,
		retries:  opts.Retries,
		logger:   opts.Logger,
	}
	if c.retries == 0 {
		c.retries = DefaultRetries
	}
	if c.retries < 0 {
		c.retries = 0
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}

	auth := newCallAuth(display, authority, opts.Headers, basicAuth, opts.CredentialHelper)
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(transport),
		grpc.WithUserAgent("img"),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxReceiveMessageBytes)),
		grpc.WithChainUnaryInterceptor(auth.unary),
		grpc.WithChainStreamInterceptor(auth.stream),
	)
	if err != nil {
		return nil, fmt.Errorf("remote cache %s: %w", display, err)
	}
	c.conn = conn
	c.cas = repb.NewContentAddressableStorageClient(conn)
	c.byteStream = bytestream.NewByteStreamClient(conn)

	if err := c.loadCapabilities(ctx, repb.NewCapabilitiesClient(conn)); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// ValidateEndpoint checks the form of a remote cache endpoint without connecting, so that a
// server can reject a malformed flag at start instead of at its first push.
func ValidateEndpoint(endpoint string) error {
	_, _, _, _, _, err := parseEndpoint(endpoint, "")
	return err
}

// parseEndpoint returns the gRPC dial target, the :authority the channel uses, the transport
// credentials, an authorization header from user:password@ (or ""), and the endpoint to show
// in messages.
func parseEndpoint(endpoint, caFile string) (target, authority string, transport credentials.TransportCredentials, basicAuth, display string, err error) {
	if !strings.Contains(endpoint, "://") {
		// Bazel reads host:port without a scheme as grpcs, so the message offers both schemes.
		return "", "", nil, "", "", fmt.Errorf("remote cache %q: invalid endpoint: missing scheme; use grpcs://%s for TLS, as Bazel assumes without a scheme, or grpc://%s for plain gRPC", endpoint, endpoint, endpoint)
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", "", nil, "", "", fmt.Errorf("remote cache %q: invalid endpoint: %w; use grpc://host:port, grpcs://host:port or unix:///path", endpoint, err)
	}

	switch u.Scheme {
	case "grpc", "grpcs":
		if u.Host == "" || u.Port() == "" && u.Scheme == "grpc" {
			return "", "", nil, "", "", fmt.Errorf("remote cache %q: invalid endpoint: missing host:port; use %s://host:port", endpoint, u.Scheme)
		}
		if u.Path != "" && u.Path != "/" || u.RawQuery != "" {
			return "", "", nil, "", "", fmt.Errorf("remote cache %q: invalid endpoint: unexpected path or query; set the instance name separately", endpoint)
		}
		if u.User != nil {
			password, _ := u.User.Password()
			basicAuth = "Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+password))
		}
		display = u.Scheme + "://" + u.Host
		target = u.Host
		if u.Port() == "" {
			// grpc-go's DNS resolver, like grpc-java's, uses 443 for a target without a port.
			target = u.Host + ":443"
		}
		authority = target
		transport = insecure.NewCredentials()
		if u.Scheme == "grpcs" {
			transport, err = tlsCredentials(display, caFile)
			if err != nil {
				return "", "", nil, "", "", err
			}
		}
		return target, authority, transport, basicAuth, display, nil

	case "unix":
		if u.Path == "" || u.Host != "" {
			return "", "", nil, "", "", fmt.Errorf("remote cache %q: invalid endpoint: use unix:///absolute/path/to/socket", endpoint)
		}
		// grpc-go sets the :authority of unix socket channels to "localhost", so the credential
		// helper is asked about https://localhost/<service>.
		// NOTE: the authority Bazel's netty channel uses for unix sockets was not checked, so a
		// helper may see another host for the same socket under Bazel.
		return "unix://" + u.Path, "localhost", insecure.NewCredentials(), "", "unix://" + u.Path, nil

	default:
		return "", "", nil, "", "", fmt.Errorf("remote cache %q: unsupported scheme %q; use grpc://host:port, grpcs://host:port or unix:///path", endpoint, u.Scheme)
	}
}

func tlsCredentials(display, caFile string) (credentials.TransportCredentials, error) {
	config := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("remote cache %s: read CA file: %w", display, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("remote cache %s: CA file %s contains no PEM certificate", display, caFile)
		}
		config.RootCAs = pool
	}
	return credentials.NewTLS(config), nil
}

// loadCapabilities calls GetCapabilities and checks that the cache can serve this client.
func (c *Client) loadCapabilities(ctx context.Context, client repb.CapabilitiesClient) error {
	var caps *repb.ServerCapabilities
	err := c.retry(ctx, "GetCapabilities", nil, func(ctx context.Context) error {
		var err error
		caps, err = client.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{InstanceName: c.instance})
		return err
	})
	if err != nil {
		return c.rpcError("GetCapabilities", err)
	}

	cache := caps.GetCacheCapabilities()
	if cache == nil {
		return fmt.Errorf("remote cache %s: the server announced no cache capabilities, so it is not a remote cache; check the endpoint", c.endpoint)
	}

	sha256 := false
	var functions []string
	for _, f := range cache.GetDigestFunctions() {
		functions = append(functions, f.String())
		if f == repb.DigestFunction_SHA256 {
			sha256 = true
		}
	}
	if !sha256 {
		return fmt.Errorf("remote cache %s: the cache does not support SHA-256 digests (it announced %s); container images need a SHA-256 cache, so configure the cache for SHA-256 or use another one",
			c.endpoint, describeList(functions))
	}

	c.caps = Capabilities{
		MaxBatchTotalSizeBytes: cache.GetMaxBatchTotalSizeBytes(),
		MaxCASBlobSizeBytes:    cache.GetMaxCasBlobSizeBytes(),
	}
	for _, compressor := range cache.GetSupportedCompressors() {
		if compressor == repb.Compressor_ZSTD {
			c.caps.Zstd = true
		}
	}
	c.logger.Debug("remote cache capabilities", "endpoint", c.endpoint, "instance", c.instance,
		"max_batch_total_size_bytes", c.caps.MaxBatchTotalSizeBytes, "zstd", c.caps.Zstd)
	return nil
}

func describeList(items []string) string {
	if len(items) == 0 {
		return "no digest functions"
	}
	return strings.Join(items, ", ")
}

// Endpoint returns the endpoint as given to Dial, without any user:password.
func (c *Client) Endpoint() string {
	return c.endpoint
}

// InstanceName returns the instance name that every call uses.
func (c *Client) InstanceName() string {
	return c.instance
}

// Capabilities returns what the cache announced when the client connected.
func (c *Client) Capabilities() Capabilities {
	return c.caps
}

// Close closes the connection. Readers from Open fail after Close.
func (c *Client) Close() error {
	return c.conn.Close()
}

// batchBytesLimit returns the max blob bytes for one batch call.
func (c *Client) batchBytesLimit() int64 {
	limit := int64(maxMessageBytes)
	if c.caps.MaxBatchTotalSizeBytes > 0 && c.caps.MaxBatchTotalSizeBytes < limit {
		limit = c.caps.MaxBatchTotalSizeBytes
	}
	return limit
}

// isSmall reports whether d goes through the batch calls rather than ByteStream.
func (c *Client) isSmall(d Digest) bool {
	// A batch request also carries the digest and framing, so leave 1 KiB for them.
	return d.Size <= smallBlobBytes && d.Size <= c.batchBytesLimit()-1024
}
