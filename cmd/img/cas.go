package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/rulesimg/img/image"
	"github.com/rulesimg/img/reapi"
)

func init() {
	cas := &cobra.Command{
		Use:   "cas",
		Short: "Work with a Bazel remote cache (REAPI CAS)",
	}
	cas.AddCommand(newCASUploadCommand())
	rootCmd.AddCommand(cas)
}

type casUploadFlags struct {
	pushFlags
	output string
}

func newCASUploadCommand() *cobra.Command {
	var f casUploadFlags
	cmd := &cobra.Command{
		Use:   "upload LAYOUT_DIR [REGISTRY/REPOSITORY[:TAG]...]",
		Short: "Upload an OCI layout's blobs to a remote cache and write a push request that refers to them",
		Long: `Upload every blob of an OCI image layout (manifests, indexes, configs and layers) to a
remote cache, skipping those it has, and write a push request whose layers are only in
the cache, while manifests and configs stay local files of the layout: the state a
Bazel build without the bytes leaves. Push it with img push --strategy lazy, or
--strategy cas_registry to an img registry that reads the same cache.`,
		Example: `  img cas upload ./layout localhost:5000/app:latest --remote-cache grpc://localhost:9092 --output push.json
  img push --request push.json --remote-cache grpc://localhost:9092`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCASUpload(cmd, &f, args)
		},
	}
	flags := cmd.Flags()
	flags.StringVarP(&f.output, "output", "o", "", "file to write the push request to (required)")
	flags.StringVar(&f.strategy, "strategy", image.StrategyLazy, "strategy written into the push request: lazy, cas_registry or bes")
	flags.IntVarP(&f.jobs, "jobs", "j", 4, "number of blobs uploaded at once")
	flags.StringVar(&f.remoteCache, "remote-cache", os.Getenv("IMG_REAPI_ENDPOINT"), "remote cache (REAPI) endpoint: grpc://, grpcs:// or unix:// (env IMG_REAPI_ENDPOINT)")
	flags.StringVar(&f.instanceName, "remote-instance-name", "", "REAPI instance name of the remote cache")
	flags.StringArrayVar(&f.remoteHeaders, "remote-header", nil, "extra header NAME=VALUE on every remote cache call (repeatable)")
	flags.StringVar(&f.credentialHelper, "credential-helper", os.Getenv("IMG_CREDENTIAL_HELPER"), "Bazel credential helper that supplies headers for the remote cache (env IMG_CREDENTIAL_HELPER)")
	cmd.MarkFlagRequired("output")
	return cmd
}

func runCASUpload(cmd *cobra.Command, f *casUploadFlags, args []string) error {
	ctx := cmd.Context()
	req, err := image.ReadLayout(args[0])
	if err != nil {
		return err
	}
	if err := applyDestinationArgs(req, args[1:]); err != nil {
		return err
	}
	if err := image.ValidateStrategy(f.strategy); err != nil {
		return fmt.Errorf("--strategy: %w", err)
	}
	req.Strategy = f.strategy

	client, err := dialRemoteCache(ctx, &f.pushFlags, nil)
	if err != nil {
		return err
	}
	defer client.Close()

	blobs, err := layoutBlobs(req)
	if err != nil {
		return err
	}
	uploaded, err := uploadMissing(cmd, client, req, blobs, f.jobs)
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "uploaded %d of %d blobs to %s\n", uploaded, len(blobs), client.Endpoint())

	keepMetadataFiles(req)
	return writeRequest(req, f.output)
}

// keepMetadataFiles drops the layers from the request's local files and keeps the
// manifests, indexes and configs, which is what a Bazel build without the bytes has on
// disk: small metadata outputs, with the layers only in the remote cache.
func keepMetadataFiles(req *image.Request) {
	metadata := map[digest.Digest]string{}
	for d, m := range req.Image.Manifests {
		metadata[d] = req.Files[d]
		if m.Config != nil {
			metadata[m.Config.Digest] = req.Files[m.Config.Digest]
		}
	}
	req.Files = metadata
}

// layoutBlobs lists every blob of the image once: manifests, indexes, configs and layers.
func layoutBlobs(req *image.Request) ([]ocispec.Descriptor, error) {
	blobs, err := req.Image.Blobs()
	if err != nil {
		return nil, err
	}
	order, err := req.Image.PushOrder()
	if err != nil {
		return nil, err
	}
	for _, m := range order {
		blobs = append(blobs, m.Descriptor)
	}
	return blobs, nil
}

func uploadMissing(cmd *cobra.Command, client *reapi.Client, req *image.Request, blobs []ocispec.Descriptor, jobs int) (int, error) {
	ctx := cmd.Context()
	digests := make([]reapi.Digest, 0, len(blobs))
	for _, desc := range blobs {
		if desc.Digest.Algorithm() != digest.SHA256 {
			return 0, fmt.Errorf("blob %s: the remote cache stores SHA-256 blobs only", desc.Digest)
		}
		digests = append(digests, reapi.Digest{Hash: desc.Digest.Encoded(), Size: desc.Size})
	}
	missing, err := client.FindMissing(ctx, digests)
	if err != nil {
		return 0, err
	}

	group, ctx := errgroup.WithContext(ctx)
	group.SetLimit(max(1, jobs))
	for _, d := range missing {
		group.Go(func() error {
			path := req.Files[digest.NewDigestFromEncoded(digest.SHA256, d.Hash)]
			file, err := os.Open(path)
			if err != nil {
				return err
			}
			defer file.Close()
			return client.Write(ctx, d, file)
		})
	}
	return len(missing), group.Wait()
}

func applyDestinationArgs(req *image.Request, args []string) error {
	for _, arg := range args {
		dest, err := image.ParseDestination(arg)
		if err != nil {
			return err
		}
		req.Destinations = append(req.Destinations, dest)
	}
	return nil
}

// writeRequest writes the request next to where it is read from, through a temporary
// file, so a reader never sees half a request.
func writeRequest(req *image.Request, path string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".push-request-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := req.Encode(tmp, filepath.Dir(path)); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
