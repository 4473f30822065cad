package testpeer

import (
	"net/http"
	"strings"
	"testing"
)

func TestRegistryPushLayoutPlain(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a registry")
	}
	reg := StartRegistry(t)
	info := WriteLayout(t, t.TempDir(), LayoutSpec{Layers: []int64{2048, 0}, Gzip: true})

	pushed := Crane(t, "push", info.Dir, reg.Ref("plain/app", ":v1"))

	if want := reg.Ref("plain/app", "@"+info.RootDigest().String()); pushed != want {
		t.Errorf("crane push printed %q, want %q", pushed, want)
	}
	if got := Crane(t, "digest", reg.Ref("plain/app", ":v1")); got != info.RootDigest().String() {
		t.Errorf("crane digest = %s, want %s", got, info.RootDigest())
	}
	Crane(t, "validate", "--remote", reg.Ref("plain/app", ":v1"))
}

func TestRegistryPushEmptyLayer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a registry")
	}
	reg := StartRegistry(t)
	info := WriteLayout(t, t.TempDir(), LayoutSpec{EmptyLayer: true})

	Crane(t, "push", info.Dir, reg.Ref("empty/app", ":v1"))

	if got := Crane(t, "digest", reg.Ref("empty/app", ":v1")); got != info.RootDigest().String() {
		t.Errorf("crane digest = %s, want %s", got, info.RootDigest())
	}
	if status := getStatus(t, reg.URL+"/v2/empty/app/blobs/"+info.Layers[0].Digest.String()); status != http.StatusOK {
		t.Errorf("GET empty layer blob status = %d, want 200", status)
	}
}

func TestRegistryPushNestedDockerIndex(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a registry")
	}
	reg := StartRegistry(t)
	info := WriteLayout(t, t.TempDir(), LayoutSpec{Layers: []int64{100}, Gzip: true, Docker: true, MultiPlatform: true, Nested: true})

	Crane(t, "push", info.Dir, reg.Ref("nested/app", ":v1"))

	if got := Crane(t, "digest", reg.Ref("nested/app", ":v1")); got != info.RootDigest().String() {
		t.Errorf("crane digest = %s, want %s", got, info.RootDigest())
	}
	for _, manifest := range info.Manifests {
		Crane(t, "validate", "--remote", reg.Ref("nested/app", "@"+manifest.Digest.String()))
	}
}

func TestRegistryPushHtpasswd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a registry")
	}
	reg := StartRegistry(t, WithHtpasswd("alice", "secret-1"))
	info := WriteLayout(t, t.TempDir(), LayoutSpec{Layers: []int64{1000}, Gzip: true})

	if status := getStatus(t, reg.URL+"/v2/"); status != http.StatusUnauthorized {
		t.Errorf("GET /v2/ without credentials status = %d, want 401", status)
	}

	reg.Crane(t, "push", info.Dir, reg.Ref("auth/app", ":v1"))

	if got := reg.Crane(t, "digest", reg.Ref("auth/app", ":v1")); got != info.RootDigest().String() {
		t.Errorf("crane digest = %s, want %s", got, info.RootDigest())
	}
}

func TestRegistryPushTokenAuth(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a registry")
	}
	reg := StartRegistry(t, WithTokenAuth("bob", "secret-2"))
	info := WriteLayout(t, t.TempDir(), LayoutSpec{Layers: []int64{1000}, Gzip: true})

	resp, err := http.Get(reg.URL + "/v2/")
	if err != nil {
		t.Fatalf("GET /v2/: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /v2/ without token status = %d, want 401", resp.StatusCode)
	}
	if challenge := resp.Header.Get("WWW-Authenticate"); !strings.Contains(challenge, reg.Token.Realm()) {
		t.Errorf("WWW-Authenticate = %q, want realm %s", challenge, reg.Token.Realm())
	}

	reg.Crane(t, "push", info.Dir, reg.Ref("token/app", ":v1"))

	if got := reg.Crane(t, "digest", reg.Ref("token/app", ":v1")); got != info.RootDigest().String() {
		t.Errorf("crane digest = %s, want %s", got, info.RootDigest())
	}
	if reg.Token.Issued() == 0 {
		t.Errorf("token server issued no tokens")
	}
}

func TestTokenServerRejectsWrongPassword(t *testing.T) {
	ts := StartTokenServer(t, "bob", "secret-2")

	req, err := http.NewRequest(http.MethodGet, ts.Realm()+"?service="+ts.Service+"&scope=repository:a:pull", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth("bob", "wrong")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", ts.Realm(), err)
	}
	resp.Body.Close()

	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("token request with wrong password status = %d, want 401", resp.StatusCode)
	}
	if ts.Rejected() != 1 {
		t.Errorf("Rejected() = %d, want 1", ts.Rejected())
	}
}

func TestParseScopes(t *testing.T) {
	got := parseScopes([]string{"repository:team/app:pull,push", "registry:catalog:* repository:x:pull"})

	if len(got) != 3 {
		t.Fatalf("parseScopes returned %d entries, want 3: %+v", len(got), got)
	}
	if got[0].Type != "repository" || got[0].Name != "team/app" || strings.Join(got[0].Actions, ",") != "pull,push" {
		t.Errorf("scope 0 = %+v, want repository team/app pull,push", got[0])
	}
	if got[1].Type != "registry" || got[1].Name != "catalog" || got[1].Actions[0] != "*" {
		t.Errorf("scope 1 = %+v, want registry catalog *", got[1])
	}
	if got[2].Name != "x" {
		t.Errorf("scope 2 name = %q, want x", got[2].Name)
	}
}

func getStatus(t *testing.T, url string) int {
	t.Helper()

	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestRegistryRegctlCopyTokenAuth(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a registry")
	}
	reg := StartRegistry(t, WithTokenAuth("dave", "secret-4"))
	info := WriteLayout(t, t.TempDir(), LayoutSpec{Layers: []int64{3 << 20}, Gzip: true, Tags: []string{"v1"}})

	reg.Regctl(t, "image", "copy", "ocidir://"+info.Dir+":v1", reg.Ref("regctl/app", ":v1"))

	if got := reg.Regctl(t, "image", "digest", reg.Ref("regctl/app", ":v1")); got != info.RootDigest().String() {
		t.Errorf("regctl image digest = %s, want %s", got, info.RootDigest())
	}
	if reg.Token.Issued() == 0 {
		t.Errorf("token server issued no tokens to regctl")
	}
}

func TestRegistryRestartKeepsUploadSession(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a registry")
	}
	reg := StartRegistry(t)
	info := WriteLayout(t, t.TempDir(), LayoutSpec{Layers: []int64{100}})
	Crane(t, "push", info.Dir, reg.Ref("restart/app", ":v1"))
	client := &http.Client{Transport: &http.Transport{}}

	resp, err := client.Post(reg.URL+"/v2/restart/app/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatalf("POST upload: %v", err)
	}
	resp.Body.Close()
	req, err := http.NewRequest(http.MethodPatch, resp.Header.Get("Location"), strings.NewReader("first part,"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = client.Do(req)
	if err != nil {
		t.Fatalf("PATCH: %v", err)
	}
	resp.Body.Close()
	location := resp.Header.Get("Location")

	reg.Stop()
	if _, err := client.Get(reg.URL + "/v2/"); err == nil {
		t.Errorf("GET /v2/ on a stopped registry succeeded, want a connection error")
	}
	reg.Restart(t)

	if got := Crane(t, "digest", reg.Ref("restart/app", ":v1")); got != info.RootDigest().String() {
		t.Errorf("crane digest after restart = %s, want %s", got, info.RootDigest())
	}
	resp, err = client.Get(location)
	if err != nil {
		t.Fatalf("GET upload status after restart: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Range") != "0-10" {
		t.Errorf("upload status after restart = %d Range %q, want 204 Range 0-10", resp.StatusCode, resp.Header.Get("Range"))
	}
}
