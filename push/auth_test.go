package push_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/rulesimg/img/credhelper"
	"github.com/rulesimg/img/internal/faultproxy"
	"github.com/rulesimg/img/internal/testpeer"
	"github.com/rulesimg/img/push"
)

func TestPushCredentialHelper(t *testing.T) {
	skipShort(t)
	reg := testpeer.StartRegistry(t, testpeer.WithHtpasswd("carol", "secret-3"))
	t.Setenv("DOCKER_CONFIG", t.TempDir()) // no docker credentials: the helper must supply them
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	helper := filepath.Join(dir, "helper")
	script := fmt.Sprintf(`#!/bin/sh
cat > /dev/null
echo call >> %s
echo '{"headers": {"Authorization": ["Basic %s"]}}'
`, calls, "Y2Fyb2w6c2VjcmV0LTM=") // base64 of carol:secret-3
	if err := os.WriteFile(helper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}

	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{1 << 10, 2 << 10}})
	ref := reg.Ref("helper/app", ":v1")
	if _, err := pushLayout(t, info.Dir, []string{ref}, push.WithCredentialHelper(credhelper.New(helper))); err != nil {
		t.Fatalf("push with a credential helper: %v", err)
	}
	checkPushed(t, []string{"DOCKER_CONFIG=" + reg.DockerConfig(t)}, ref, info)
	body, _ := os.ReadFile(calls)
	if n := strings.Count(string(body), "call"); n != 1 {
		t.Errorf("the helper ran %d times, want 1 (its answer is cached)", n)
	}
}

func TestPushHeadRefusedFallsBackToRangedGet(t *testing.T) {
	skipShort(t)
	reg := testpeer.StartRegistry(t)
	proxy := faultproxy.New(t, reg.URL)
	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{1 << 10, 2 << 10}})
	ref := proxy.Addr + "/nohead:v1"
	if _, err := pushLayout(t, info.Dir, []string{ref}); err != nil {
		t.Fatal(err)
	}
	uploads := proxy.Count("POST", "/blobs/uploads/")
	// Without the manifest, the next push checks every blob again.
	del, _ := http.NewRequest(http.MethodDelete, reg.URL+"/v2/nohead/manifests/"+info.RootDigest().String(), nil)
	res, err := http.DefaultClient.Do(del)
	if err != nil || res.StatusCode != http.StatusAccepted {
		t.Fatalf("deleting the manifest: %v %v", err, res)
	}
	res.Body.Close()

	proxy.FailNext("HEAD", "/blobs/", 100, http.StatusMethodNotAllowed, "")
	if _, err := pushLayout(t, info.Dir, []string{ref}); err != nil {
		t.Fatalf("push with HEAD refused: %v", err)
	}
	blobs := len(info.Configs) + len(info.Layers)
	if got := proxy.Count("GET", "/blobs/sha256:"); got != blobs {
		t.Errorf("sent %d ranged GETs, want %d (one per blob)", got, blobs)
	}
	if got := proxy.Count("POST", "/blobs/uploads/") - uploads; got != 0 {
		t.Errorf("uploaded %d blobs that the ranged GET found present", got)
	}
}

// TestAuthorizationNotForwardedOnRedirect serves a registry on one loopback listener
// that redirects blob checks to a second one, which records any Authorization header.
func TestAuthorizationNotForwardedOnRedirect(t *testing.T) {
	var leaked atomic.Int32
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			leaked.Add(1)
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer storage.Close()
	registry := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Basic "+"dTpw" {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		switch {
		case r.URL.Path == "/v2/":
			w.WriteHeader(http.StatusOK)
		case strings.Contains(r.URL.Path, "/blobs/sha256:"):
			http.Redirect(w, r, storage.URL+"/data", http.StatusTemporaryRedirect)
		case strings.Contains(r.URL.Path, "/manifests/") && r.Method == http.MethodPut:
			w.WriteHeader(http.StatusCreated)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer registry.Close()

	dir := t.TempDir()
	config := fmt.Sprintf(`{"auths": {%q: {"auth": "dTpw"}}}`, strings.TrimPrefix(registry.URL, "http://"))
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{64}})
	ref := strings.TrimPrefix(registry.URL, "http://") + "/app:v1"
	if _, err := pushLayout(t, info.Dir, []string{ref}); err != nil {
		t.Fatalf("push: %v", err)
	}
	if leaked.Load() != 0 {
		t.Errorf("%d requests to the redirect target carried the registry's Authorization header", leaked.Load())
	}
}

func TestPushRetriesUploadAfter401(t *testing.T) {
	skipShort(t)
	reg := testpeer.StartRegistry(t, testpeer.WithTokenAuth("dave", "secret-4"))
	proxy := faultproxy.New(t, reg.URL)
	dir := t.TempDir()
	config := fmt.Sprintf(`{"auths": {%q: {"username": "dave", "password": "secret-4"}}}`, proxy.Addr)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{3 << 20}, RawLayers: true})
	proxy.FailNext("PATCH", "/blobs/uploads/", 1, http.StatusUnauthorized, "")
	if _, err := pushLayout(t, info.Dir, []string{proxy.Addr + "/reauth:v1"}); err != nil {
		t.Fatalf("push after a 401 mid-upload: %v", err)
	}
	if got := proxy.Count("PATCH", "/blobs/uploads/"); got < 2 {
		t.Errorf("sent %d PATCHes, want the rejected one and a retry", got)
	}
}
