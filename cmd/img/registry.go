package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/rulesimg/img/credhelper"
	blobcachepb "github.com/rulesimg/img/proto/blobcache"
	"github.com/rulesimg/img/reapi"
	"github.com/rulesimg/img/registry"
	"github.com/rulesimg/img/registry/blobcache"
	"github.com/rulesimg/img/registry/blobstore"
	"github.com/rulesimg/img/registry/blobstore/filesystem"
	reapistore "github.com/rulesimg/img/registry/blobstore/reapi"
	s3store "github.com/rulesimg/img/registry/blobstore/s3"
	"github.com/rulesimg/img/registry/blobstore/upstream"
	"github.com/rulesimg/img/registry/metadata"
)

// registryFlags are the flags of `img registry`, named as rules_img names them.
type registryFlags struct {
	address          string
	port             int
	grpcPort         int
	enableBlobcache  bool
	blobStores       []string
	reapiEndpoint    string
	instanceName     string
	credentialHelper string
	dataDir          string
	chunkMinLength   int64
	shutdownTimeout  time.Duration
	uploadMaxAge     time.Duration
	existsCacheTTL   time.Duration
	uploadIdle       time.Duration
	upstream         upstreamFlags
	s3               s3Flags

	// cache is the remote cache connection, dialed on first use.
	cache *reapi.Client

	// manifestSources are the stores that also supply manifests (the upstream store), filled in
	// while the blob stores open.
	manifestSources []registry.ManifestSource
}

// upstreamFlags configure the upstream store, which reads through from another registry.
type upstreamFlags struct {
	url       string
	redirect  bool
	plainHTTP bool
}

// s3Flags configure the s3 store.
type s3Flags struct {
	bucket    string
	prefix    string
	endpoint  string
	region    string
	profile   string
	pathStyle bool
	redirect  bool
}

func init() {
	flags := &registryFlags{}
	cmd := &cobra.Command{
		Use:   "registry",
		Short: "Run an OCI registry whose blobs live on disk, in a Bazel remote cache, in S3 or in another registry",
		Long: `Run an OCI distribution-spec v1.1 registry.

Blobs live in the stores named by --blob-store, looked up in order; uploads go to the first
store that accepts writes. The upstream store reads blobs and manifests through from another
registry. Manifests, tags and the blob size index live in a database under
--data-dir. With --enable-blobcache, a gRPC blob-cache service on --grpc-port lets
cas_registry pushes register blobs that already sit in the remote cache.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRegistry(cmd.Context(), flags)
		},
	}

	f := cmd.Flags()
	f.StringVar(&flags.address, "address", "localhost", "address every port binds to")
	f.IntVar(&flags.port, "port", 5000, "TCP port of the registry HTTP API, /metrics and /healthz; 0 picks a free port")
	f.IntVar(&flags.grpcPort, "grpc-port", 4444, "TCP port of the gRPC blob-cache service, used with --enable-blobcache; 0 picks a free port")
	f.BoolVar(&flags.enableBlobcache, "enable-blobcache", false, "serve the gRPC blob-cache service (needs --reapi-endpoint)")
	f.StringArrayVar(&flags.blobStores, "blob-store", nil, "blob store to use: filesystem, reapi, s3 or upstream; repeat to chain stores, looked up in order (default filesystem)")
	f.StringVar(&flags.reapiEndpoint, "reapi-endpoint", os.Getenv("IMG_REAPI_ENDPOINT"), "remote cache for the reapi store and the blob-cache service, as grpc://host:port or grpcs://host:port (default $IMG_REAPI_ENDPOINT)")
	f.StringVar(&flags.instanceName, "remote-instance-name", "", "REAPI instance name of the remote cache")
	f.StringVar(&flags.credentialHelper, "credential-helper", os.Getenv("IMG_CREDENTIAL_HELPER"), "path of a Bazel credential helper that supplies headers for the remote cache and the upstream registry (default $IMG_CREDENTIAL_HELPER)")
	f.StringVar(&flags.dataDir, "data-dir", "", "folder for the metadata database, upload sessions and filesystem blobs (default $XDG_DATA_HOME/img/registry or ~/.local/share/img/registry)")
	f.Int64Var(&flags.chunkMinLength, "chunk-min-length", registry.DefaultChunkMinLength, "chunk size in bytes announced to clients in OCI-Chunk-Min-Length; 0 announces nothing")
	f.DurationVar(&flags.shutdownTimeout, "shutdown-timeout", 5*time.Minute, "how long SIGTERM or SIGINT waits for requests in flight, such as uploads, before closing them")
	f.DurationVar(&flags.uploadMaxAge, "upload-max-age", 24*time.Hour, "upload sessions untouched for this long are removed at startup")
	f.DurationVar(&flags.uploadIdle, "upload-idle-timeout", registry.DefaultUploadIdleTimeout, "an upload request whose client sends no byte for this long fails, so the client can resume the session")
	f.DurationVar(&flags.existsCacheTTL, "blob-exists-cache-ttl", 0, "how long a blob found by HEAD is remembered without asking the stores again; a blob evicted from the remote cache still answers HEAD for up to this long (default 0, off)")

	f.StringVar(&flags.upstream.url, "upstream-url", "", "base URL of the registry the upstream store reads through from, as http(s)://host[:port]; credentials come from the docker config or --credential-helper")
	f.BoolVar(&flags.upstream.redirect, "upstream-redirect", false, "pass the upstream's redirects to its blob storage on to clients instead of streaming the bytes")
	f.BoolVar(&flags.upstream.plainHTTP, "upstream-plain-http", false, "allow an http:// --upstream-url whose host is not loopback")
	f.StringVar(&flags.s3.bucket, "s3-bucket", "", "S3 bucket of the s3 store")
	f.StringVar(&flags.s3.prefix, "s3-prefix", "", "key prefix of the s3 store's objects, for example registry/; keys are <prefix><algorithm>/<hex>")
	f.StringVar(&flags.s3.endpoint, "s3-endpoint", "", "S3 endpoint URL, for example http://127.0.0.1:9000 for minio (default AWS's endpoint for the region)")
	f.StringVar(&flags.s3.region, "s3-region", "", "S3 signing region (default from the AWS configuration, else us-east-1 with --s3-endpoint)")
	f.StringVar(&flags.s3.profile, "s3-profile", "", "AWS shared configuration profile for the s3 store's credentials (default $AWS_PROFILE or default)")
	f.BoolVar(&flags.s3.pathStyle, "s3-path-style", false, "address the bucket in the URL path, as minio and most S3-compatible servers need")
	f.BoolVar(&flags.s3.redirect, "s3-redirect", false, "answer blob GETs with a redirect to a presigned S3 URL (valid 15 minutes) instead of streaming the bytes")

	rootCmd.AddCommand(cmd)
}

// defaultDataDir returns the default --data-dir of a server, img/<server> under the XDG
// data folder.
func defaultDataDir(server string) (string, error) {
	if dir := os.Getenv("XDG_DATA_HOME"); dir != "" {
		return filepath.Join(dir, "img", server), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find a default --data-dir: %w; pass --data-dir", err)
	}
	return filepath.Join(home, ".local", "share", "img", server), nil
}

func runRegistry(ctx context.Context, flags *registryFlags) error {
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if flags.dataDir == "" {
		dir, err := defaultDataDir("registry")
		if err != nil {
			return err
		}
		flags.dataDir = dir
	}
	if err := os.MkdirAll(flags.dataDir, 0o755); err != nil {
		return fmt.Errorf("create --data-dir %s: %w", flags.dataDir, err)
	}

	meta, err := metadata.OpenBolt(filepath.Join(flags.dataDir, "metadata.db"))
	if err != nil {
		return err
	}
	defer meta.Close()

	metrics := prometheus.NewRegistry()
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	defer func() {
		if flags.cache != nil {
			flags.cache.Close()
		}
	}()
	blobs, closeBlobs, err := openBlobStores(ctx, flags, meta, metrics, logger)
	if err != nil {
		return err
	}
	defer closeBlobs()

	chunkMinLength := flags.chunkMinLength
	if chunkMinLength == 0 {
		chunkMinLength = -1
	}
	server, err := registry.New(registry.Options{
		Blobs:             blobs,
		Metadata:          meta,
		Logger:            logger,
		ChunkMinLength:    chunkMinLength,
		Registerer:        metrics,
		UploadIdleTimeout: flags.uploadIdle,
		ManifestSources:   flags.manifestSources,
	})
	if err != nil {
		return err
	}

	mux := http.NewServeMux()
	mux.Handle("/v2/", server)
	mux.Handle("/metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})

	listener, err := net.Listen("tcp", net.JoinHostPort(flags.address, strconv.Itoa(flags.port)))
	if err != nil {
		return fmt.Errorf("listen on --address %s --port %d: %w", flags.address, flags.port, err)
	}
	// No read or write timeout: a multi-GiB blob upload or download may take minutes.
	httpServer := &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute}

	var grpcServe func() error
	var grpcStop func(context.Context)
	if flags.enableBlobcache {
		grpcServe, grpcStop, err = startBlobcache(ctx, flags, meta, logger)
		if err != nil {
			listener.Close()
			return err
		}
	}

	errs := make(chan error, 2)
	go func() { errs <- httpServer.Serve(listener) }()
	if grpcServe != nil {
		go func() { errs <- grpcServe() }()
	}
	blobStores := flags.blobStores
	if len(blobStores) == 0 {
		blobStores = []string{"filesystem"}
	}
	logger.Info("registry started", "address", listener.Addr().String(), "data_dir", flags.dataDir, "blob_stores", blobStores)

	select {
	case <-ctx.Done():
		logger.Info("registry stopping; waiting for requests in flight", "timeout", flags.shutdownTimeout)
	case err := <-errs:
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve registry: %w", err)
		}
	}

	shutdownCtx, cancel := context.WithTimeout(context.Background(), flags.shutdownTimeout)
	defer cancel()
	if grpcStop != nil {
		grpcStop(shutdownCtx)
	}
	if err := httpServer.Shutdown(shutdownCtx); err != nil {
		logger.Error("registry shutdown did not finish; closing connections", "error", err)
		httpServer.Close()
	}
	logger.Info("registry stopped")
	return nil
}

// openBlobStores builds the chain of --blob-store stores.
func openBlobStores(ctx context.Context, flags *registryFlags, meta metadata.Store, metrics prometheus.Registerer, logger *slog.Logger) (blobstore.Store, func(), error) {
	names := flags.blobStores
	if len(names) == 0 {
		names = []string{"filesystem"}
	}

	var stores []blobstore.Store
	var closers []func()
	closeAll := func() {
		for _, closer := range closers {
			closer()
		}
	}
	for _, name := range names {
		store, closer, err := openBlobStore(ctx, name, flags, meta, logger)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		if closer != nil {
			closers = append(closers, closer)
		}
		stores = append(stores, store)
	}

	purgeCtx, stopPurging := context.WithCancel(ctx)
	closers = append(closers, stopPurging)
	go purgeStaleUploads(purgeCtx, stores, flags.uploadMaxAge, logger)

	return registryBlobStack(stores, meta, metrics, flags.existsCacheTTL), closeAll, nil
}

// stagedUploads is implemented by stores that keep upload sessions in local files.
type stagedUploads interface {
	Uploads() *filesystem.Uploads
}

// purgeStaleUploads removes abandoned upload sessions every hour until ctx ends; the stores
// already purged once when they opened.
func purgeStaleUploads(ctx context.Context, stores []blobstore.Store, maxAge time.Duration, logger *slog.Logger) {
	ticker := time.NewTicker(time.Hour)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		for _, store := range stores {
			staged, ok := store.(stagedUploads)
			if !ok {
				continue
			}
			removed, err := staged.Uploads().PurgeStale(maxAge)
			if err != nil {
				logger.Warn("purging stale upload sessions failed", "folder", staged.Uploads().Dir(), "error", err)
			} else if removed > 0 {
				logger.Info("removed stale upload sessions", "folder", staged.Uploads().Dir(), "count", removed)
			}
		}
	}
}

func openBlobStore(ctx context.Context, name string, flags *registryFlags, meta metadata.Store, logger *slog.Logger) (blobstore.Store, func(), error) {
	switch name {
	case "filesystem":
		store, err := filesystem.New(flags.dataDir)
		if err != nil {
			return nil, nil, err
		}
		if removed, err := store.Uploads().PurgeStale(flags.uploadMaxAge); err != nil {
			logger.Warn("purging stale upload sessions failed", "error", err)
		} else if removed > 0 {
			logger.Info("removed stale upload sessions", "count", removed)
		}
		return store, nil, nil
	case "reapi":
		return openREAPIStore(ctx, flags, meta, logger)
	case "s3":
		return openS3Store(ctx, flags, logger)
	case "upstream":
		return openUpstreamStore(flags, logger)
	default:
		return nil, nil, fmt.Errorf("unknown --blob-store %q; use filesystem, reapi, s3 or upstream", name)
	}
}

// registryBlobStack wraps the chained stores with the size index (so the reapi store can
// address blobs uploaded through any store), an existence cache and metrics.
func registryBlobStack(stores []blobstore.Store, meta metadata.Store, metrics prometheus.Registerer, existsCacheTTL time.Duration) blobstore.Store {
	storeMetrics, err := blobstore.NewMetrics(metrics)
	if err == nil {
		for i, store := range stores {
			stores[i] = storeMetrics.Wrap(store, storeLabel(i, store))
		}
	}
	chained := blobstore.WithSizeIndex(blobstore.Chain(stores...), meta)
	if existsCacheTTL <= 0 {
		return chained
	}
	return blobstore.WithExistenceCache(chained, existsCacheTTL, 100_000)
}

func storeLabel(index int, store blobstore.Store) string {
	switch store.(type) {
	case *filesystem.Store:
		return "filesystem"
	case *reapistore.Store:
		return "reapi"
	case *s3store.Store:
		return "s3"
	case *upstream.Store:
		return "upstream"
	default:
		return fmt.Sprintf("store%d", index)
	}
}

func openS3Store(ctx context.Context, flags *registryFlags, logger *slog.Logger) (blobstore.Store, func(), error) {
	if flags.s3.bucket == "" {
		return nil, nil, errors.New("--blob-store s3 needs --s3-bucket")
	}
	client, err := s3store.NewClient(ctx, s3store.ClientOptions{
		Endpoint:  flags.s3.endpoint,
		Region:    flags.s3.region,
		Profile:   flags.s3.profile,
		PathStyle: flags.s3.pathStyle,
	})
	if err != nil {
		return nil, nil, err
	}
	store, err := s3store.New(client, s3store.Options{
		Bucket:     flags.s3.bucket,
		Prefix:     flags.s3.prefix,
		StagingDir: filepath.Join(flags.dataDir, "s3-uploads"),
		Redirect:   flags.s3.redirect,
		Logger:     logger,
	})
	if err != nil {
		return nil, nil, err
	}
	if err := store.CheckBucket(ctx); err != nil {
		return nil, nil, err
	}
	if removed, err := store.Uploads().PurgeStale(flags.uploadMaxAge); err != nil {
		logger.Warn("purging stale upload sessions failed", "error", err)
	} else if removed > 0 {
		logger.Info("removed stale upload sessions", "count", removed)
	}
	logger.Info("s3 blob store ready", "bucket", flags.s3.bucket, "prefix", flags.s3.prefix, "endpoint", flags.s3.endpoint, "redirect", flags.s3.redirect)
	return store, nil, nil
}

func openUpstreamStore(flags *registryFlags, logger *slog.Logger) (blobstore.Store, func(), error) {
	if flags.upstream.url == "" {
		return nil, nil, errors.New("--blob-store upstream needs --upstream-url, for example https://registry.example.com")
	}
	opts := upstream.Options{
		URL:            flags.upstream.url,
		AllowPlainHTTP: flags.upstream.plainHTTP,
		Redirect:       flags.upstream.redirect,
		Logger:         logger,
	}
	if flags.credentialHelper != "" {
		opts.CredentialHelper = credhelper.New(flags.credentialHelper)
	}
	store, err := upstream.New(opts)
	if err != nil {
		return nil, nil, fmt.Errorf("--upstream-url: %w", err)
	}
	flags.manifestSources = append(flags.manifestSources, store)
	logger.Info("upstream blob store ready", "url", store.URL(), "redirect", flags.upstream.redirect, "credential_helper", flags.credentialHelper != "")
	return store, nil, nil
}

// dialCache connects to --reapi-endpoint once; the reapi store and the blob-cache service share
// the connection.
func (flags *registryFlags) dialCache(ctx context.Context, logger *slog.Logger) (*reapi.Client, error) {
	if flags.cache != nil {
		return flags.cache, nil
	}
	if flags.reapiEndpoint == "" {
		return nil, errors.New("--blob-store reapi and --enable-blobcache need --reapi-endpoint (or $IMG_REAPI_ENDPOINT), for example grpc://localhost:9092")
	}
	opts := reapi.Options{InstanceName: flags.instanceName, Logger: logger}
	if flags.credentialHelper != "" {
		opts.CredentialHelper = credhelper.New(flags.credentialHelper)
	}
	client, err := reapi.Dial(ctx, flags.reapiEndpoint, opts)
	if err != nil {
		return nil, fmt.Errorf("connect to --reapi-endpoint: %w", err)
	}
	flags.cache = client
	return client, nil
}

func openREAPIStore(ctx context.Context, flags *registryFlags, meta metadata.Store, logger *slog.Logger) (blobstore.Store, func(), error) {
	client, err := flags.dialCache(ctx, logger)
	if err != nil {
		return nil, nil, err
	}
	store, err := reapistore.New(client, meta, filepath.Join(flags.dataDir, "reapi-uploads"))
	if err != nil {
		return nil, nil, err
	}
	if removed, err := store.Uploads().PurgeStale(flags.uploadMaxAge); err != nil {
		logger.Warn("purging stale upload sessions failed", "error", err)
	} else if removed > 0 {
		logger.Info("removed stale upload sessions", "count", removed)
	}
	logger.Info("reapi blob store ready", "endpoint", client.Endpoint(), "instance_name", client.InstanceName())
	return store, nil, nil
}

// startBlobcache listens on --grpc-port and returns functions that serve and stop the gRPC
// blob-cache service.
func startBlobcache(ctx context.Context, flags *registryFlags, meta metadata.Store, logger *slog.Logger) (func() error, func(context.Context), error) {
	client, err := flags.dialCache(ctx, logger)
	if err != nil {
		return nil, nil, err
	}
	listener, err := net.Listen("tcp", net.JoinHostPort(flags.address, strconv.Itoa(flags.grpcPort)))
	if err != nil {
		return nil, nil, fmt.Errorf("listen on --address %s --grpc-port %d: %w", flags.address, flags.grpcPort, err)
	}

	if !slices.Contains(flags.blobStores, "reapi") {
		logger.Warn("--enable-blobcache without --blob-store reapi: Commit records blobs of the remote cache that the registry cannot serve, so manifests referencing them are rejected")
	}
	server := grpc.NewServer()
	blobcachepb.RegisterBlobsServer(server, blobcache.NewServer(client, meta, logger))
	logger.Info("blob-cache service started", "address", listener.Addr().String())

	serve := func() error { return server.Serve(listener) }
	stop := func(ctx context.Context) {
		stopped := make(chan struct{})
		go func() {
			server.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-ctx.Done():
			server.Stop()
		}
	}
	return serve, stop, nil
}
