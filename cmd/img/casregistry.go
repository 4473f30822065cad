package main

import (
	"context"
	"errors"

	"github.com/rulesimg/img/blobcache"
	"github.com/rulesimg/img/image"
	"github.com/rulesimg/img/push"
)

func newCASRegistryStrategy(_ context.Context, req *image.Request, f *pushFlags) (push.Strategy, func(), error) {
	if f.blobCache == "" {
		return push.Strategy{}, nil, errors.New("cas_registry push needs the registry's blob-cache service: set --blob-cache or IMG_BLOB_CACHE_ENDPOINT to grpc://host:port (img registry --enable-blobcache --grpc-port)")
	}
	client, err := blobcache.Dial(f.blobCache)
	if err != nil {
		return push.Strategy{}, nil, err
	}
	return push.CASRegistry(req, client), func() { client.Close() }, nil
}
