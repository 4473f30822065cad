package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/rulesimg/img/image"
	"github.com/rulesimg/img/push"
)

type pushFlags struct {
	request          string
	strategy         string
	tags             []string
	registry         string
	repository       string
	jobs             int
	retries          int
	chunkSize        int64
	verify           bool
	insecure         []string
	refsFile         string
	quiet            bool
	remoteCache      string
	instanceName     string
	remoteHeaders    []string
	credentialHelper string
	blobCache        string
}

func init() {
	rootCmd.AddCommand(newPushCommand())
}

func newPushCommand() *cobra.Command {
	var f pushFlags
	cmd := &cobra.Command{
		Use:   "push [LAYOUT_DIR | REQUEST_FILE] [REGISTRY/REPOSITORY[:TAG]...]",
		Short: "Push an image from an OCI layout or a push request to one or more registries",
		Long: `Push an image to one or more registries.

The image comes from an OCI image layout directory, or from a push request file (the
JSON document the Bazel rules write; see docs/push-request.md), given as the first
argument or with --request. Destinations come from the arguments after it, or from the
push request. Each blob a destination lacks is uploaded once per registry and mounted
into other repositories there; manifests follow, children before their index, and tags
last. On success img prints the digest reference and one line per tag.

Strategies (--strategy, default from the push request, else eager):
  eager         every blob is a local file
  lazy          blobs without a local file stream from the remote cache (--remote-cache)
  cas_registry  the registry serves blobs from the remote cache; only manifests are sent
                after a Commit to its blob cache (--blob-cache)`,
		Example: `  img push ./layout localhost:5000/app:latest
  img push ./layout localhost:5000/app --tag v1 --tag latest
  img push --request bazel-bin/app/push.request.json --strategy lazy --remote-cache grpc://localhost:9092`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPush(cmd, &f, args)
		},
	}
	flags := cmd.Flags()
	flags.StringVar(&f.request, "request", "", "push request JSON file to read (instead of a first argument)")
	flags.StringVar(&f.strategy, "strategy", "", "push strategy: eager, lazy, cas_registry, or bes, which pushes like lazy (default: the push request's, else eager)")
	flags.StringArrayVarP(&f.tags, "tag", "t", nil, "tag to set at every destination, replacing the push request's tags (repeatable)")
	flags.StringVar(&f.registry, "registry", "", "registry host[:port] that replaces the push request's registry at every destination")
	flags.StringVar(&f.repository, "repository", "", "repository that replaces the push request's repository at every destination")
	flags.IntVarP(&f.jobs, "jobs", "j", 4, "number of blobs uploaded at once")
	flags.IntVar(&f.retries, "retries", 5, "retries of a failed request (408, 429, 5xx, resets, refused connections, timeouts) with exponential backoff")
	flags.Int64Var(&f.chunkSize, "chunk-size", 0, "upload blobs in PATCH chunks of this many bytes (0 = one PATCH per blob, or 64 MiB chunks when the registry sets OCI-Chunk-Min-Length; never below that minimum)")
	flags.BoolVar(&f.verify, "verify", false, "hash local blobs before sending them (the registry verifies digests anyway)")
	flags.StringArrayVar(&f.insecure, "insecure-registry", nil, "registry host[:port] to reach over plain HTTP or unverified TLS (repeatable; loopback hosts always use plain HTTP)")
	flags.StringVar(&f.refsFile, "refs-file", "", "write the pushed references and per-destination results to this file as JSON")
	flags.BoolVarP(&f.quiet, "quiet", "q", false, "print only the pushed references, no progress")
	flags.StringVar(&f.remoteCache, "remote-cache", os.Getenv("IMG_REAPI_ENDPOINT"), "remote cache (REAPI) endpoint for lazy pushes: grpc://, grpcs:// or unix:// (env IMG_REAPI_ENDPOINT)")
	flags.StringVar(&f.instanceName, "remote-instance-name", "", "REAPI instance name of the remote cache")
	flags.StringArrayVar(&f.remoteHeaders, "remote-header", nil, "extra header NAME=VALUE on every remote cache call (repeatable)")
	flags.StringVar(&f.credentialHelper, "credential-helper", os.Getenv("IMG_CREDENTIAL_HELPER"), "Bazel credential helper that supplies headers for the remote cache and registries (env IMG_CREDENTIAL_HELPER)")
	flags.StringVar(&f.blobCache, "blob-cache", os.Getenv("IMG_BLOB_CACHE_ENDPOINT"), "blob-cache gRPC endpoint of a cas_registry registry, grpc://host:port (env IMG_BLOB_CACHE_ENDPOINT)")
	return cmd
}

// pushMemoryLimit is the soft heap limit of img push unless GOMEMLIMIT sets another.
// Streams from the remote cache allocate a buffer per gRPC message, and with Go's default
// GC pacing a 4-job lazy push of a 1 GiB image reached about 100 MiB of resident memory,
// mostly garbage. With this limit it stayed near 85 MiB at a few percent more CPU.
const pushMemoryLimit = 64 << 20

func runPush(cmd *cobra.Command, f *pushFlags, args []string) error {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(pushMemoryLimit)
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if err := validatePushFlags(f); err != nil {
		return err
	}
	req, destinationArgs, err := readPushInput(f, args)
	if err != nil {
		return err
	}
	if err := applyDestinationFlags(req, f, destinationArgs); err != nil {
		return err
	}
	if f.strategy != "" {
		req.Strategy = f.strategy
	}
	if req.Strategy == "" {
		req.Strategy = image.StrategyEager
	}

	logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	opts := []push.Option{
		push.WithJobs(f.jobs),
		push.WithRetries(f.retries),
		push.WithChunkSize(f.chunkSize),
		push.WithVerify(f.verify),
		push.WithInsecureRegistries(f.insecure),
		push.WithLogger(logger),
	}
	if f.credentialHelper != "" {
		helper, err := newCredentialHelper(f.credentialHelper)
		if err != nil {
			return err
		}
		opts = append(opts, push.WithCredentialHelper(helper))
	}
	progress, closeProgress := newProgress(cmd.ErrOrStderr(), f.quiet)
	defer closeProgress()
	opts = append(opts, push.WithProgress(progress))

	strategy, cleanup, err := newStrategy(ctx, req, f, logger)
	if err != nil {
		return err
	}
	defer cleanup()

	result, pushErr := push.Push(ctx, req, strategy, opts...)
	closeProgress()
	if result != nil {
		printReferences(cmd.OutOrStdout(), result)
		if f.refsFile != "" {
			if err := writeRefsFile(f.refsFile, result); err != nil {
				return errors.Join(pushErr, err)
			}
		}
	}
	return pushErr
}

func validatePushFlags(f *pushFlags) error {
	switch {
	case f.jobs < 1:
		return fmt.Errorf("--jobs %d: give at least 1", f.jobs)
	case f.retries < 0:
		return fmt.Errorf("--retries %d: give 0 or more", f.retries)
	case f.chunkSize < 0:
		return fmt.Errorf("--chunk-size %d: give a size in bytes, or 0 for one PATCH per blob", f.chunkSize)
	}
	return nil
}

// readPushInput reads the image from --request or the first argument, which may be an
// OCI layout directory or a push request file. The remaining arguments are destinations.
func readPushInput(f *pushFlags, args []string) (*image.Request, []string, error) {
	source := f.request
	if source == "" {
		if len(args) == 0 {
			return nil, nil, errors.New("nothing to push: give an OCI layout directory or a push request file, e.g. img push ./layout localhost:5000/app:latest")
		}
		source, args = args[0], args[1:]
	}
	info, err := os.Stat(source)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("the image to push, %s, does not exist: give an OCI layout directory, the --metadata file of img manifest or img index, or a push request file (bazel-bin/.../NAME.request.json after bazel build)", source)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading the image to push: %w", err)
	}
	if info.IsDir() {
		req, err := image.ReadLayout(source)
		return req, args, err
	}
	req, err := image.ReadRequestFile(source)
	return req, args, err
}

// applyDestinationFlags replaces the request's destinations with the arguments, then
// applies --registry, --repository and --tag to every destination.
func applyDestinationFlags(req *image.Request, f *pushFlags, args []string) error {
	if len(args) > 0 {
		req.Destinations = nil
		for _, arg := range args {
			dest, err := image.ParseDestination(arg)
			if err != nil {
				return err
			}
			req.Destinations = append(req.Destinations, dest)
		}
	}
	if len(req.Destinations) == 0 && f.registry != "" && f.repository != "" {
		req.Destinations = []image.Destination{{}}
	}
	for i := range req.Destinations {
		dest := &req.Destinations[i]
		if f.registry != "" {
			dest.Registry = f.registry
		}
		if f.repository != "" {
			if err := image.ValidateRepository(f.repository); err != nil {
				return fmt.Errorf("--repository: %w", err)
			}
			dest.Repository = f.repository
		}
		if len(f.tags) > 0 {
			for _, tag := range f.tags {
				if err := image.ValidateTag(tag); err != nil {
					return fmt.Errorf("--tag: %w", err)
				}
			}
			if len(args) > 0 {
				dest.Tags = append(dest.Tags, f.tags...)
			} else {
				dest.Tags = append([]string(nil), f.tags...)
			}
		}
	}
	if len(req.Destinations) == 0 {
		return errors.New("no destination: add registry/repository[:tag] after the image, or --registry and --repository")
	}
	return nil
}

func newProgress(w io.Writer, quiet bool) (push.Progress, func()) {
	if quiet {
		return nil, func() {}
	}
	if file, ok := w.(*os.File); ok && term.IsTerminal(int(file.Fd())) {
		p := &push.TerminalProgress{W: w}
		return p, p.Close
	}
	return &push.LineProgress{W: w}, func() {}
}

func printReferences(w io.Writer, result *push.Result) {
	for _, dest := range result.Destinations {
		if dest.Error != "" {
			continue
		}
		fmt.Fprintln(w, dest.Reference)
		for _, tag := range dest.Tags {
			fmt.Fprintln(w, tag)
		}
	}
}

func writeRefsFile(path string, result *push.Result) error {
	body, err := json.MarshalIndent(result, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(body, '\n'), 0o644); err != nil {
		return fmt.Errorf("--refs-file: %w", err)
	}
	return nil
}

func newStrategy(ctx context.Context, req *image.Request, f *pushFlags, logger *slog.Logger) (push.Strategy, func(), error) {
	switch req.Strategy {
	case image.StrategyEager:
		return push.Eager(req), func() {}, nil
	case image.StrategyLazy, image.StrategyBES:
		return newLazyStrategy(ctx, req, f, logger)
	case image.StrategyCASRegistry:
		return newCASRegistryStrategy(ctx, req, f)
	}
	return push.Strategy{}, nil, fmt.Errorf("--strategy: %w", image.ValidateStrategy(req.Strategy))
}
