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
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	buildpb "google.golang.org/genproto/googleapis/devtools/build/v1"
	"google.golang.org/grpc"

	"github.com/rulesimg/img/bes"
	"github.com/rulesimg/img/blobsource"
	"github.com/rulesimg/img/push"
	"github.com/rulesimg/img/reapi"
)

// besFlags are the flags of `img bes`; --address, --port, --cas-endpoint and
// --credential-helper are named as rules_img names them.
type besFlags struct {
	address          string
	port             int
	httpPort         int
	casEndpoint      string
	instanceName     string
	remoteHeaders    []string
	credentialHelper string
	dataDir          string
	jobSyncInterval  time.Duration
	jobs             int
	maxAttempts      int
	retention        time.Duration
	commitMode       string
	pushKinds        []string
	insecure         []string
	shutdownTimeout  time.Duration
	logLevel         string
}

func init() {
	flags := &besFlags{}
	cmd := &cobra.Command{
		Use:   "bes",
		Short: "Run a Build Event Service backend that pushes bes-strategy images during bazel build",
		Long: `Run a Build Event Service (BES) backend for Bazel's --bes_backend.

The server acknowledges Bazel's build events as they arrive. When a push target
(a target of kind --push-kind) completes, it stores a push job under --data-dir before
acknowledging the event, then reads the target's push request from the remote cache.
Requests with strategy "bes" are pushed like img push --strategy lazy; requests with
other strategies are left alone. Unfinished jobs resume after a restart.

Point Bazel at it with:
  bazel build --bes_backend=grpc://localhost:8080 --bes_results_url=http://localhost:8081/invocation/ \
    --remote_cache=grpc://... //...

Bazel reports a push target's img_push_request output group only when the build asks
for it (--output_groups=+img_push_request); without that flag the server finds the
push request, <name>.request.json, among the target's default outputs. The server
reads push requests and blobs from the remote cache, never from the build machine's
disk: from --cas-endpoint, or else from the cache that each build event's bytestream://
URIs name.

Each invocation's pushes are listed at /invocation/<id> and /api/invocation/<id> on
--http-port, with Prometheus metrics on /metrics. With --commit-mode per-stream, the
build event upload ends only when the invocation's pushes are done, and a failed push
fails the bazel command.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBES(cmd.Context(), flags)
		},
	}

	f := cmd.Flags()
	f.StringVar(&flags.address, "address", "localhost", "address every port binds to")
	f.IntVar(&flags.port, "port", 8080, "TCP port of the gRPC Build Event Service (Bazel's --bes_backend); 0 picks a free port")
	f.IntVar(&flags.httpPort, "http-port", 8081, "TCP port of the results pages (/invocation/<id>, Bazel's --bes_results_url), /api/invocation/<id>, /metrics and /healthz; 0 picks a free port")
	f.StringVar(&flags.casEndpoint, "cas-endpoint", os.Getenv("IMG_REAPI_ENDPOINT"), "remote cache to read push requests and blobs from, as grpc://host:port, grpcs://host:port or unix:///path; replaces the host of the bytestream URIs in build events (default: those hosts, or $IMG_REAPI_ENDPOINT)")
	f.StringVar(&flags.instanceName, "remote-instance-name", "", "REAPI instance name for push requests that Bazel sent inline; requests in the cache use the instance name in their URI")
	f.StringArrayVar(&flags.remoteHeaders, "remote-header", nil, "extra header NAME=VALUE on every remote cache call (repeatable)")
	f.StringVar(&flags.credentialHelper, "credential-helper", os.Getenv("IMG_CREDENTIAL_HELPER"), "Bazel credential helper that supplies headers for the remote cache and registries (default $IMG_CREDENTIAL_HELPER)")
	f.StringVar(&flags.dataDir, "data-dir", "", "folder of the push job database (default $XDG_DATA_HOME/img/bes or ~/.local/share/img/bes)")
	f.DurationVar(&flags.jobSyncInterval, "job-sync-interval", 0, "0, the default, writes every new push job to disk (fdatasync) before acknowledging the build event that created it; a positive value such as 100ms acknowledges once the job is written to the operating system and syncs every interval, so a crash of img bes loses no push but a crash of the machine can lose those of the last interval, in exchange for acknowledgements that never wait for the disk")
	f.IntVar(&flags.jobs, "jobs", 4, "number of images pushed at once")
	f.IntVar(&flags.maxAttempts, "max-attempts", 5, "attempts of a push that fails with a transient error, with exponential backoff from 1s to 1m, before it is marked failed")
	f.DurationVar(&flags.retention, "retention", 7*24*time.Hour, "how long finished pushes stay on the results pages and in --data-dir; 0 keeps them forever")
	f.StringVar(&flags.commitMode, "commit-mode", string(bes.CommitBackground), "when a build's event upload ends: background (at once; pushes go on after the build) or per-stream (after the build's pushes, failing the build if one failed)")
	f.StringArrayVar(&flags.pushKinds, "push-kind", []string{bes.DefaultPushKind}, "target kind of push rules, as Bazel reports it in TargetConfigured events (repeatable)")
	f.StringArrayVar(&flags.insecure, "insecure-registry", nil, "registry host[:port] to reach over plain HTTP or unverified TLS (repeatable; loopback hosts always use plain HTTP)")
	f.DurationVar(&flags.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long SIGTERM or SIGINT waits for open event streams and running pushes; pushes still running then resume on the next start")
	f.StringVar(&flags.logLevel, "log-level", "info", "log level: debug, info, warn or error")

	rootCmd.AddCommand(cmd)
}

func runBES(ctx context.Context, flags *besFlags) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var level slog.Level
	if err := level.UnmarshalText([]byte(flags.logLevel)); err != nil {
		return fmt.Errorf("invalid --log-level %q; use debug, info, warn or error", flags.logLevel)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	mode, err := bes.ParseCommitMode(flags.commitMode)
	if err != nil {
		return fmt.Errorf("--commit-mode: %w", err)
	}
	if flags.dataDir == "" {
		if flags.dataDir, err = defaultDataDir("bes"); err != nil {
			return err
		}
	}

	if flags.jobs < 1 {
		return fmt.Errorf("invalid --jobs %d; use 1 or more images pushed at once", flags.jobs)
	}
	if flags.maxAttempts < 1 {
		return fmt.Errorf("invalid --max-attempts %d; use 1 to try each push once, or more to retry transient failures", flags.maxAttempts)
	}
	if flags.casEndpoint != "" {
		if err := reapi.ValidateEndpoint(flags.casEndpoint); err != nil {
			return fmt.Errorf("--cas-endpoint: %w", err)
		}
	}

	caches, pushOptions, err := besRemotes(flags, logger)
	if err != nil {
		return err
	}
	defer caches.Close()

	if flags.jobSyncInterval < 0 {
		return fmt.Errorf("invalid --job-sync-interval %s; use 0 to sync every new job before its event is acknowledged, or a positive duration such as 100ms", flags.jobSyncInterval)
	}
	metrics := prometheus.NewRegistry()
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	besMetrics := bes.NewMetrics(metrics)
	store, err := bes.OpenBoltStore(flags.dataDir, bes.BoltStoreOptions{
		SyncInterval: flags.jobSyncInterval,
		SyncSeconds:  besMetrics.JobLogSync(),
		Logger:       logger,
	})
	if err != nil {
		return err
	}
	defer store.Close()
	events, err := bes.OpenBoltEventState(flags.dataDir)
	if err != nil {
		return err
	}
	defer events.Close()

	queue := bes.NewQueue(store, caches, newLazyPusher(caches, pushOptions), bes.QueueOptions{
		Workers:     flags.jobs,
		MaxAttempts: flags.maxAttempts,
		Retention:   flags.retention,
		Logger:      logger,
		Metrics:     besMetrics,
	})

	grpcListener, err := net.Listen("tcp", net.JoinHostPort(flags.address, strconv.Itoa(flags.port)))
	if err != nil {
		return fmt.Errorf("listen on --address %s --port %d: %w", flags.address, flags.port, err)
	}
	defer grpcListener.Close()
	httpListener, err := net.Listen("tcp", net.JoinHostPort(flags.address, strconv.Itoa(flags.httpPort)))
	if err != nil {
		return fmt.Errorf("listen on --address %s --http-port %d: %w", flags.address, flags.httpPort, err)
	}
	defer httpListener.Close()

	resultsURL := "http://" + httpListener.Addr().String() + "/invocation/"
	server := bes.NewServer(queue, bes.ServerOptions{
		PushKinds:  flags.pushKinds,
		CommitMode: mode,
		ResultsURL: resultsURL,
		EventState: events,
		Logger:     logger,
	})
	if err := queue.Start(); err != nil {
		return err
	}

	grpcServer := grpc.NewServer()
	buildpb.RegisterPublishBuildEventServer(grpcServer, server)
	httpServer := &http.Server{Handler: server.Handler(metrics), ReadHeaderTimeout: 30 * time.Second}

	errs := make(chan error, 2)
	go func() { errs <- grpcServer.Serve(grpcListener) }()
	go func() { errs <- httpServer.Serve(httpListener) }()
	logger.Info("bes server started",
		"bes_backend", "grpc://"+grpcListener.Addr().String(),
		"bes_results_url", resultsURL,
		"data_dir", flags.dataDir, "jobs", flags.jobs, "commit_mode", mode, "push_kinds", flags.pushKinds,
		"job_sync_interval", flags.jobSyncInterval)

	var serveErr error
	select {
	case <-ctx.Done():
		logger.Info("bes server stopping; waiting for event streams and pushes in flight", "timeout", flags.shutdownTimeout)
	case err := <-errs:
		serveErr = fmt.Errorf("serving build events or results stopped: %w", err)
		logger.Error("bes server failed; stopping", "error", err)
	}

	shutdownCtx, cancel := context.WithTimeout(context.Background(), flags.shutdownTimeout)
	defer cancel()
	stopGRPC(shutdownCtx, grpcServer, logger)
	if err := queue.Close(shutdownCtx); err != nil {
		logger.Warn("pushes still running at the shutdown timeout were cancelled; they resume on the next start", "error", err)
	}
	if err := httpServer.Shutdown(shutdownCtx); err != nil {
		httpServer.Close()
	}
	logger.Info("bes server stopped")
	return serveErr
}

// stopGRPC stops accepting event streams and waits for open ones until ctx ends, then
// closes them. Bazel resends the events it did not get acknowledged to the next server.
func stopGRPC(ctx context.Context, server *grpc.Server, logger *slog.Logger) {
	done := make(chan struct{})
	go func() {
		server.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		logger.Warn("closing build event streams still open at the shutdown timeout")
		server.Stop()
		<-done
	}
}

// besRemotes builds the remote cache pool and the push options that the flags set.
func besRemotes(flags *besFlags, logger *slog.Logger) (*bes.CachePool, []push.Option, error) {
	headers, err := parseHeaders(flags.remoteHeaders)
	if err != nil {
		return nil, nil, err
	}
	cacheOptions := reapi.Options{InstanceName: flags.instanceName, Headers: headers, Logger: logger}
	pushOptions := []push.Option{
		push.WithInsecureRegistries(flags.insecure),
		push.WithLogger(logger),
	}
	if flags.credentialHelper != "" {
		helper, err := newCredentialHelper(flags.credentialHelper)
		if err != nil {
			return nil, nil, err
		}
		cacheOptions.CredentialHelper = helper
		pushOptions = append(pushOptions, push.WithCredentialHelper(helper))
	}
	return &bes.CachePool{Endpoint: flags.casEndpoint, Options: cacheOptions}, pushOptions, nil
}

// newLazyPusher returns a Pusher that pushes each bes job with the lazy strategy of img
// push, streaming blobs from the cache that holds the job's push request. Concurrent
// jobs that upload the same blob to the same repository share one upload.
func newLazyPusher(caches *bes.CachePool, options []push.Option) bes.Pusher {
	options = append(options, push.WithUploadGroup(push.NewUploadGroup()))
	return bes.PusherFunc(func(ctx context.Context, job bes.PushJob) (bes.PushResult, error) {
		var client *reapi.Client
		var err error
		if job.RequestURI != "" {
			client, _, err = caches.Client(ctx, job.RequestURI)
		} else {
			client, err = caches.ClientForEndpoint(ctx)
		}
		if err != nil {
			return bes.PushResult{}, err
		}

		// Local paths in a request read from the cache name files on the build machine,
		// not on this server, so every blob comes from the cache.
		req := *job.Decoded
		req.Files = nil
		strategy := push.Lazy(&req, blobsource.CAS{Client: client})
		result, err := push.Push(ctx, &req, strategy, options...)
		if err != nil {
			if isPermanentPushError(err) {
				err = bes.Permanent(err)
			}
			return bes.PushResult{}, err
		}
		return pushResult(result), nil
	})
}

func pushResult(result *push.Result) bes.PushResult {
	out := bes.PushResult{Digest: result.Digest.String()}
	for _, destination := range result.Destinations {
		if len(destination.Tags) == 0 {
			out.References = append(out.References, destination.Reference)
			continue
		}
		out.References = append(out.References, destination.Tags...)
	}
	return out
}

// isPermanentPushError reports whether a retry of the whole push cannot help: the
// registry rejected a request with a 4xx status other than timeouts and rate limits.
// The push engine has already retried transient failures of single requests.
func isPermanentPushError(err error) bool {
	var registryErr *push.RegistryError
	if !errors.As(err, &registryErr) {
		return false
	}
	status := registryErr.StatusCode
	return status >= 400 && status < 500 && status != http.StatusRequestTimeout && status != http.StatusTooManyRequests
}
