package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/rulesimg/img/reapi"
)

// copyBufferBytes is the read size of both fetch clients, so neither gains from a larger
// buffer.
const copyBufferBytes = 1 << 20

// fetchHTTP downloads url, checks that the body hashes to sha256:hash and returns its
// length. It hashes because the ByteStream client it is compared with (reapi.Client.Open)
// hashes every byte too.
func fetchHTTP(url, hash string) (int64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
	}

	hasher := sha256.New()
	n, err := io.CopyBuffer(hasher, resp.Body, make([]byte, copyBufferBytes))
	if err != nil {
		return n, fmt.Errorf("GET %s: %w", url, err)
	}
	if got := hex.EncodeToString(hasher.Sum(nil)); got != hash {
		return n, fmt.Errorf("GET %s: body hashes to sha256:%s, expected sha256:%s", url, got, hash)
	}
	return n, nil
}

// fetchCAS reads the blob hash/size from the remote cache at endpoint through ByteStream,
// with the reapi package as img uses it, and returns its length. reapi checks the digest.
func fetchCAS(endpoint, hash, size string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	length, err := strconv.ParseInt(size, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid blob size %q: %w", size, err)
	}
	client, err := reapi.Dial(ctx, endpoint, reapi.Options{})
	if err != nil {
		return 0, err
	}
	defer client.Close()

	reader, err := client.Open(ctx, reapi.Digest{Hash: hash, Size: length}, 0)
	if err != nil {
		return 0, err
	}
	defer reader.Close()
	return io.CopyBuffer(io.Discard, reader, make([]byte, copyBufferBytes))
}
