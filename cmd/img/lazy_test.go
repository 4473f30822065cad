package main

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rulesimg/img/internal/testpeer"
)

// TestLazyPushCommandWithCredentialHelper runs the lazy path as a user would: upload a
// layout to a cache that requires basic auth, then push with only the push request,
// the cache's headers coming from a Bazel credential helper script.
func TestLazyPushCommandWithCredentialHelper(t *testing.T) {
	if testing.Short() {
		t.Skip("starts bazel-remote and a registry")
	}
	cache := testpeer.StartBazelRemote(t, testpeer.WithBazelRemoteHtpasswd("builder", "cache-secret"))
	reg := testpeer.StartRegistry(t)

	helper := filepath.Join(t.TempDir(), "credential-helper")
	token := base64.StdEncoding.EncodeToString([]byte("builder:cache-secret"))
	script := fmt.Sprintf("#!/bin/sh\ncat >/dev/null\necho '{\"headers\": {\"Authorization\": [\"Basic %s\"]}}'\n", token)
	if err := os.WriteFile(helper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	env := []string{"IMG_REAPI_ENDPOINT=" + cache.Endpoint(), "IMG_CREDENTIAL_HELPER=" + helper}

	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{1 << 10, 3 << 20}, Gzip: true})
	request := filepath.Join(t.TempDir(), "push.json")
	if _, stderr, err := runImg(t, env, "cas", "upload", info.Dir, "--output", request); err != nil {
		t.Fatalf("img cas upload: %v\n%s", err, stderr)
	}
	// The layers are gone from disk: only the cache has them now.
	for _, layer := range info.Layers {
		os.Remove(info.BlobPath(layer.Digest))
	}

	// The registry has no auth, so the helper's header goes to the registry too, which
	// ignores it; the cache needs it.
	stdout, stderr, err := runImg(t, env, "push", "--request", request, reg.Ref("lazy/app", ":v1"))
	if err != nil {
		t.Fatalf("lazy push: %v\n%s", err, stderr)
	}
	if !strings.HasPrefix(stdout, reg.Ref("lazy/app", "@"+info.RootDigest().String())) {
		t.Errorf("stdout = %q", stdout)
	}
	if got := testpeer.Crane(t, "digest", reg.Ref("lazy/app", ":v1")); got != info.RootDigest().String() {
		t.Errorf("crane digest = %s, want %s", got, info.RootDigest())
	}

	_, stderr, err = runImg(t, []string{"IMG_REAPI_ENDPOINT=" + cache.Endpoint(), "IMG_CREDENTIAL_HELPER="}, "push", "--request", request, reg.Ref("lazy/noauth", ":v1"))
	if err == nil {
		t.Fatal("lazy push without the cache's credentials succeeded")
	}
	if !strings.Contains(stderr, "remote cache "+cache.Endpoint()) {
		t.Errorf("error does not say it came from the remote cache:\n%s", stderr)
	}
}
