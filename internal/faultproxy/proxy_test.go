package faultproxy

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/internal/testpeer"
)

// newClient returns a client with its own connection pool, so a reset connection of one test
// step is never reused by the next.
func newClient() *http.Client {
	return &http.Client{Transport: &http.Transport{Proxy: nil}}
}

func TestResetAfterPATCH(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a registry")
	}
	reg := testpeer.StartRegistry(t)
	proxy := New(t, reg.URL)
	blob := make([]byte, 4<<20)
	rand.Read(blob)
	const cutAt = 1 << 20

	location := startUpload(t, proxy.URL, "fault/app")
	if parsed, err := url.Parse(location); err != nil || parsed.Host != proxy.Addr {
		t.Fatalf("upload Location = %q, want it rewritten to the proxy %s", location, proxy.Addr)
	}

	proxy.ResetAfter(http.MethodPatch, "/blobs/uploads/", 1, cutAt)
	req, err := http.NewRequest(http.MethodPatch, location, bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := newClient().Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("PATCH through the proxy returned status %d, want a dropped connection", resp.StatusCode)
	}
	t.Logf("client error after the reset: %v", err)

	received, resumeLocation := uploadStatus(t, location)
	if received != cutAt {
		t.Errorf("upload session holds %d bytes after the reset, want the %d forwarded", received, cutAt)
	}

	// The registry keeps the offset in the Location's _state token, so the token from before
	// the reset no longer matches the session and only the one from the status GET works.
	if status := patchStatus(t, location, blob[received:received+1]); status != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("PATCH with the Location from before the reset status = %d, want 416", status)
	}
	finishUpload(t, resumeLocation, blob[received:], digest.FromBytes(blob))

	registryLog, err := os.ReadFile(reg.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(registryLog, []byte("client disconnected during blob PATCH")) {
		t.Errorf("registry log lacks \"client disconnected during blob PATCH\"; the cut no longer reaches it as a disconnect")
	}

	if got := proxy.Count(http.MethodPatch, "/blobs/uploads/"); got != 3 {
		t.Errorf("Count(PATCH) = %d, want 3 (reset, stale, resumed)", got)
	}
	var log []string
	for _, request := range proxy.Requests() {
		log = append(log, fmt.Sprintf("%s:%d:%s", request.Method, request.Status, request.Fault))
	}
	if want := "POST:202:,PATCH:0:reset,GET:204:,PATCH:416:,PATCH:202:,PUT:201:"; strings.Join(log, ",") != want {
		t.Errorf("request log = %v, want %s", log, want)
	}
}

func TestResetAfterShortBodyDropsResponse(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a registry")
	}
	reg := testpeer.StartRegistry(t)
	proxy := New(t, reg.URL)
	blob := []byte("short body that fits in the reset budget")
	location := startUpload(t, proxy.URL, "fault/short")

	proxy.ResetAfter(http.MethodPatch, "/blobs/uploads/", 1, 1<<20)
	req, err := http.NewRequest(http.MethodPatch, location, bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := newClient().Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("PATCH through the proxy returned status %d, want a dropped connection", resp.StatusCode)
	}

	received, _ := uploadStatus(t, location)
	if received != int64(len(blob)) {
		t.Errorf("upload session holds %d bytes, want the whole body of %d", received, len(blob))
	}
}

func TestResetAfterChunkedBody(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a registry")
	}
	reg := testpeer.StartRegistry(t)
	proxy := New(t, reg.URL)
	location := startUpload(t, proxy.URL, "fault/chunked")
	const cutAt = 100000

	proxy.ResetAfter(http.MethodPatch, "/blobs/uploads/", 1, cutAt)
	// A body of unknown length makes the client send it chunked.
	body := io.LimitReader(rand.Reader, 1<<20)
	req, err := http.NewRequest(http.MethodPatch, location, io.NopCloser(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := newClient().Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("PATCH through the proxy returned status %d, want a dropped connection", resp.StatusCode)
	}

	received, _ := uploadStatus(t, location)
	if received != cutAt {
		t.Errorf("upload session holds %d bytes after the reset, want the %d forwarded", received, cutAt)
	}
}

func patchStatus(t *testing.T, location string, data []byte) int {
	t.Helper()

	req, err := http.NewRequest(http.MethodPatch, location, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := newClient().Do(req)
	if err != nil {
		t.Fatalf("PATCH %s: %v", location, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// startUpload opens an upload session and returns its Location.
func startUpload(t *testing.T, baseURL, repository string) string {
	t.Helper()

	resp, err := newClient().Post(baseURL+"/v2/"+repository+"/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatalf("POST upload: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST upload status = %d, want 202", resp.StatusCode)
	}
	return resp.Header.Get("Location")
}

// uploadStatus returns how many bytes the upload session holds, from its Range header, and
// the Location to continue the upload at.
func uploadStatus(t *testing.T, location string) (int64, string) {
	t.Helper()

	resp, err := newClient().Get(location)
	if err != nil {
		t.Fatalf("GET upload status: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("GET upload status = %d, want 204", resp.StatusCode)
	}

	rangeHeader := resp.Header.Get("Range")
	if rangeHeader == "" || rangeHeader == "0-0" {
		// distribution sends "0-0" for an empty session as well as for one byte.
		return 0, resp.Header.Get("Location")
	}
	var first, last int64
	if _, err := fmt.Sscanf(rangeHeader, "%d-%d", &first, &last); err != nil {
		t.Fatalf("parse Range %q: %v", rangeHeader, err)
	}
	return last + 1, resp.Header.Get("Location")
}

// finishUpload sends rest as a PATCH and commits the blob with PUT.
func finishUpload(t *testing.T, location string, rest []byte, blobDigest digest.Digest) {
	t.Helper()
	client := newClient()

	req, err := http.NewRequest(http.MethodPatch, location, bytes.NewReader(rest))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("resume PATCH: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("resume PATCH status = %d, want 202", resp.StatusCode)
	}

	commit, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	query := commit.Query()
	query.Set("digest", blobDigest.String())
	commit.RawQuery = query.Encode()
	req, err = http.NewRequest(http.MethodPut, commit.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err = client.Do(req)
	if err != nil {
		t.Fatalf("commit PUT: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("commit PUT status = %d, want 201: %s", resp.StatusCode, body)
	}
}

func TestFailNextRetryAfter(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a registry")
	}
	reg := testpeer.StartRegistry(t)
	proxy := New(t, reg.URL)

	proxy.FailNext(http.MethodGet, "^/v2/$", 1, http.StatusTooManyRequests, "2")

	first, err := newClient().Get(proxy.URL + "/v2/")
	if err != nil {
		t.Fatalf("first GET /v2/: %v", err)
	}
	body, _ := io.ReadAll(first.Body)
	first.Body.Close()
	if !bytes.Contains(body, []byte(`"code":"TOOMANYREQUESTS"`)) {
		t.Errorf("first GET /v2/ body = %s, want an OCI error with code TOOMANYREQUESTS", body)
	}
	if first.StatusCode != http.StatusTooManyRequests {
		t.Errorf("first GET /v2/ status = %d, want 429", first.StatusCode)
	}
	if got := first.Header.Get("Retry-After"); got != "2" {
		t.Errorf("first GET /v2/ Retry-After = %q, want 2", got)
	}

	second, err := newClient().Get(proxy.URL + "/v2/")
	if err != nil {
		t.Fatalf("second GET /v2/: %v", err)
	}
	second.Body.Close()
	if second.StatusCode != http.StatusOK {
		t.Errorf("second GET /v2/ status = %d, want 200 from the registry", second.StatusCode)
	}

	if got := proxy.Count(http.MethodGet, "^/v2/$"); got != 2 {
		t.Errorf("Count(GET /v2/) = %d, want 2", got)
	}
	requests := proxy.Requests()
	if len(requests) != 2 || requests[0].Status != 429 || requests[1].Status != 200 {
		t.Errorf("request log = %+v, want statuses 429 then 200", requests)
	}
}

func TestCranePushThroughFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a registry")
	}
	reg := testpeer.StartRegistry(t)
	proxy := New(t, reg.URL)
	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{1 << 20, 1000}, Gzip: true})
	ref := proxy.Addr + "/crane/app:v1"

	proxy.FailNext(http.MethodPost, "/blobs/uploads/", 1, http.StatusTooManyRequests, "1")
	testpeer.Crane(t, "push", info.Dir, ref)

	if got := testpeer.Crane(t, "digest", reg.Ref("crane/app", ":v1")); got != info.RootDigest().String() {
		t.Errorf("registry has digest %s, want %s", got, info.RootDigest())
	}
	// Three blobs (two layers, one config) plus one retried after the 429.
	if got := proxy.Count(http.MethodPost, "/blobs/uploads/"); got != 4 {
		t.Errorf("Count(POST uploads) = %d, want 4", got)
	}

	uploadsBefore := proxy.Count("", "/blobs/uploads/")
	testpeer.Crane(t, "push", info.Dir, ref)
	if got := proxy.Count("", "/blobs/uploads/") - uploadsBefore; got != 0 {
		t.Errorf("second push made %d upload requests, want 0", got)
	}
}

func TestDelayNextTimesOutClient(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a registry")
	}
	reg := testpeer.StartRegistry(t)
	proxy := New(t, reg.URL)

	proxy.DelayNext(http.MethodGet, "^/v2/$", 1, 5*time.Second)
	impatient := newClient()
	impatient.Timeout = 200 * time.Millisecond
	if resp, err := impatient.Get(proxy.URL + "/v2/"); err == nil {
		resp.Body.Close()
		t.Errorf("GET /v2/ with a 200 ms timeout behind a 5 s delay returned status %d, want a timeout", resp.StatusCode)
	}

	proxy.DelayNext(http.MethodGet, "^/v2/$", 1, 100*time.Millisecond)
	start := time.Now()
	resp, err := newClient().Get(proxy.URL + "/v2/")
	if err != nil {
		t.Fatalf("GET /v2/ behind a 100 ms delay: %v", err)
	}
	resp.Body.Close()
	if elapsed := time.Since(start); elapsed < 100*time.Millisecond {
		t.Errorf("GET /v2/ behind a 100 ms delay took %s", elapsed)
	}

	var log []string
	for _, request := range proxy.Requests() {
		log = append(log, fmt.Sprintf("%d:%s", request.Status, request.Fault))
	}
	if want := "0:delay,200:delay"; strings.Join(log, ",") != want {
		t.Errorf("request log = %v, want %s", log, want)
	}
}
