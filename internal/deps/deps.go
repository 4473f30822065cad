// Package deps keeps the modules that packages in progress will import in go.mod, so
// that `go mod tidy` does not drop them. Remove an import once real code uses it.
package deps

import (
	_ "github.com/aws/aws-sdk-go-v2/service/s3"
	_ "github.com/aws/aws-sdk-go-v2/config"
	_ "github.com/aws/aws-sdk-go-v2/credentials"
	_ "github.com/johannesboyne/gofakes3"
	_ "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	_ "github.com/google/go-containerregistry/pkg/authn"
	_ "github.com/google/go-containerregistry/pkg/v1/remote/transport"
	_ "github.com/spf13/cobra"
	_ "go.etcd.io/bbolt"
	_ "golang.org/x/sync/errgroup"
	_ "golang.org/x/term"
	_ "google.golang.org/genproto/googleapis/bytestream"
	_ "google.golang.org/genproto/googleapis/devtools/build/v1"
	_ "google.golang.org/grpc"
	_ "google.golang.org/protobuf/proto"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/klauspost/compress/zstd"
	_ "github.com/opencontainers/go-digest"
	_ "github.com/opencontainers/image-spec/specs-go/v1"
)

