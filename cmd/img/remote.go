package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/rulesimg/img/blobsource"
	"github.com/rulesimg/img/credhelper"
	"github.com/rulesimg/img/image"
	"github.com/rulesimg/img/push"
	"github.com/rulesimg/img/reapi"
)

func newCredentialHelper(path string) (*credhelper.Helper, error) {
	if strings.TrimSpace(path) == "" {
		return nil, errors.New("--credential-helper is empty; give the path of a Bazel credential helper or unset IMG_CREDENTIAL_HELPER")
	}
	return credhelper.New(path), nil
}

// parseHeaders reads NAME=VALUE pairs as Bazel's --remote_header does.
func parseHeaders(pairs []string) (map[string][]string, error) {
	headers := map[string][]string{}
	for _, pair := range pairs {
		name, value, ok := strings.Cut(pair, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("--remote-header %q: write NAME=VALUE", pair)
		}
		headers[name] = append(headers[name], value)
	}
	return headers, nil
}

func dialRemoteCache(ctx context.Context, f *pushFlags, logger *slog.Logger) (*reapi.Client, error) {
	if f.remoteCache == "" {
		return nil, errors.New("a lazy or bes push reads blobs from the remote cache: set --remote-cache or IMG_REAPI_ENDPOINT to grpc://host:port")
	}
	headers, err := parseHeaders(f.remoteHeaders)
	if err != nil {
		return nil, err
	}
	opts := reapi.Options{InstanceName: f.instanceName, Headers: headers, Logger: logger}
	if f.credentialHelper != "" {
		if opts.CredentialHelper, err = newCredentialHelper(f.credentialHelper); err != nil {
			return nil, err
		}
	}
	return reapi.Dial(ctx, f.remoteCache, opts)
}

func newLazyStrategy(ctx context.Context, req *image.Request, f *pushFlags, logger *slog.Logger) (push.Strategy, func(), error) {
	client, err := dialRemoteCache(ctx, f, logger)
	if err != nil {
		return push.Strategy{}, nil, err
	}
	return push.Lazy(req, blobsource.CAS{Client: client}), func() { client.Close() }, nil
}
