package s3

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
)

// ClientOptions selects the S3 service and credentials.
type ClientOptions struct {
	// Endpoint is the S3 endpoint URL, for example http://127.0.0.1:9000 for a local minio;
	// empty means AWS's endpoint for Region.
	Endpoint string

	// Region is the signing region; empty means the AWS default chain's region, or us-east-1
	// when that has none (S3-compatible servers usually accept any).
	Region string

	// Profile is the shared config profile; empty means the AWS default chain's choice.
	Profile string

	// PathStyle addresses the bucket in the path (http://host/bucket/key) rather than the host
	// name, as minio and most S3-compatible servers need.
	PathStyle bool
}

// NewClient returns an S3 client with credentials from the AWS default chain (environment,
// shared config and credentials files, web identity, container and instance metadata).
//
// Checksums are computed and validated only where S3 requires them. By default the SDK adds a
// CRC32 to every upload, sent as an aws-chunked trailer when it cannot seek the body, and some
// S3-compatible servers (gofakes3 v1.2.0) store such frames as object data. The store also
// sends only seekable bodies, so the payload is signed by its SHA-256 and sent unframed.
func NewClient(ctx context.Context, opts ClientOptions) (*awss3.Client, error) {
	var loadOpts []func(*config.LoadOptions) error
	if opts.Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(opts.Region))
	}
	if opts.Profile != "" {
		loadOpts = append(loadOpts, config.WithSharedConfigProfile(opts.Profile))
	}
	cfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration (profile %q): %w", opts.Profile, err)
	}
	if cfg.Region == "" {
		if opts.Endpoint == "" {
			return nil, errors.New("no AWS region configured; pass --s3-region or set AWS_REGION")
		}
		cfg.Region = "us-east-1"
	}
	cfg.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
	cfg.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired

	client := awss3.NewFromConfig(cfg, func(o *awss3.Options) {
		if opts.Endpoint != "" {
			o.BaseEndpoint = aws.String(opts.Endpoint)
		}
		o.UsePathStyle = opts.PathStyle
	})
	return client, nil
}

// CheckBucket checks with S3 whether the bucket exists and the credentials may use it, so a wrong
// --s3-bucket or missing credentials fail at startup rather than at the first push.
func (s *Store) CheckBucket(ctx context.Context) error {
	if _, err := s.client.HeadBucket(ctx, &awss3.HeadBucketInput{Bucket: &s.bucket}); err != nil {
		return fmt.Errorf("check S3 bucket %s: %w; check --s3-bucket, --s3-endpoint and the AWS credentials", s.bucket, err)
	}
	return nil
}
