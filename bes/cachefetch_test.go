package bes

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rulesimg/img/internal/testpeer"
	bep "github.com/rulesimg/img/proto/buildeventstream"
)

func TestCachePoolReadsFromBazelRemote(t *testing.T) {
	if testing.Short() {
		t.Skip("starts bazel-remote")
	}
	cache := testpeer.StartBazelRemote(t)
	data := pushRequestJSON("bes", "fetched")
	hash := uploadCAS(t, cache, data)

	tests := []struct {
		name     string
		uri      string
		endpoint string
	}{
		{"uri host", fmt.Sprintf("bytestream://%s/blobs/%s/%d", cache.GRPCAddr, hash, len(data)), ""},
		{"instance name", fmt.Sprintf("bytestream://%s/main/ci/blobs/%s/%d", cache.GRPCAddr, hash, len(data)), ""},
		{"endpoint override", fmt.Sprintf("bytestream://cache.invalid:1/blobs/%s/%d", hash, len(data)), cache.Endpoint()},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			fetcher := &CachePool{Endpoint: test.endpoint}
			defer fetcher.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			got, err := fetcher.Fetch(ctx, test.uri)
			if err != nil {
				t.Fatalf("Fetch(%s): %v", test.uri, err)
			}
			if !bytes.Equal(got, data) {
				t.Errorf("Fetch(%s) returned %d bytes that differ from the %d uploaded", test.uri, len(got), len(data))
			}
		})
	}
}

func TestCachePoolMissingBlob(t *testing.T) {
	if testing.Short() {
		t.Skip("starts bazel-remote")
	}
	cache := testpeer.StartBazelRemote(t)
	fetcher := &CachePool{}
	defer fetcher.Close()

	uri := fmt.Sprintf("bytestream://%s/blobs/%s/10", cache.GRPCAddr, strings.Repeat("0", 64))
	_, err := fetcher.Fetch(context.Background(), uri)
	if err == nil {
		t.Fatalf("Fetch(%s) of a blob not in the cache succeeded", uri)
	}
	if IsPermanent(err) {
		t.Errorf("missing blob error %v is permanent; expected a retry", err)
	}
}

// uploadCAS stores data in the cache's CAS over its HTTP API and returns its SHA-256 hex.
func uploadCAS(t *testing.T, cache *testpeer.BazelRemote, data []byte) string {
	t.Helper()
	sum := sha256.Sum256(data)
	hash := hex.EncodeToString(sum[:])

	request, err := http.NewRequest(http.MethodPut, cache.HTTPURL()+"/cas/"+hash, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		t.Fatal(err)
	}
	response.Body.Close()
	if response.StatusCode/100 != 2 {
		t.Fatalf("PUT /cas/%s returned %s", hash, response.Status)
	}
	return hash
}

func TestServerReadsPushRequestFromCache(t *testing.T) {
	if testing.Short() {
		t.Skip("starts bazel-remote")
	}
	cache := testpeer.StartBazelRemote(t)
	data := pushRequestJSON("bes", "cached")
	hash := uploadCAS(t, cache, data)

	pusher := &recordingPusher{}
	fetcher := &CachePool{}
	defer fetcher.Close()
	ts := startTestServer(t, testServerConfig{pusher: pusher, fetcher: fetcher})

	file := &bep.File{Name: "cached.push_request.json", File: &bep.File_Uri{Uri: fmt.Sprintf("bytestream://%s/blobs/%s/%d", cache.GRPCAddr, hash, len(data))}}
	stream := newEventStream("inv-cache").
		configured(t, "//:cached", DefaultPushKind).
		namedSet(t, "0", []*bep.File{file}).
		completed(t, "//:cached", true, map[string][]string{PushRequestOutputGroup: {"0"}}).
		finish()
	if _, err := ts.send(t, stream.events); err != nil {
		t.Fatal(err)
	}

	jobs := ts.waitDone(t, "inv-cache")
	if jobs[0].State != StateSucceeded {
		t.Fatalf("job is %s (%s); expected succeeded", jobs[0].State, jobs[0].Error)
	}
	calls := pusher.calls
	if len(calls) != 1 || !bytes.Equal(calls[0].Request, data) {
		t.Errorf("pusher got %d calls; expected one with the request bytes from the cache", len(calls))
	}
}
