package registry_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/registry"
)

func TestUploadMonolithicPost(t *testing.T) {
	reg := startRegistry(t, 0)
	content := []byte("monolithic blob")
	dgst := digest.FromBytes(content)

	resp := reg.do(t, http.MethodPost, "/v2/app/blobs/uploads/?digest="+dgst.String(), content)
	expectStatus(t, resp, http.StatusCreated)
	if got := resp.Header.Get("Location"); got != "/v2/app/blobs/"+dgst.String() {
		t.Errorf("Location = %q, want the blob URL", got)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != dgst.String() {
		t.Errorf("Docker-Content-Digest = %q, want %s", got, dgst)
	}

	resp = reg.do(t, http.MethodGet, "/v2/app/blobs/"+dgst.String(), nil)
	expectStatus(t, resp, http.StatusOK)
	if body := readBody(t, resp); string(body) != string(content) {
		t.Errorf("GET body = %q, want %q", body, content)
	}
}

func TestUploadPostAnnouncesChunkMinLength(t *testing.T) {
	reg := startRegistry(t, 1234)
	resp := reg.do(t, http.MethodPost, "/v2/app/blobs/uploads/", nil)
	expectStatus(t, resp, http.StatusAccepted)
	if got := resp.Header.Get("OCI-Chunk-Min-Length"); got != "1234" {
		t.Errorf("OCI-Chunk-Min-Length = %q, want 1234", got)
	}
	if !strings.HasPrefix(resp.Header.Get("Location"), "/v2/app/blobs/uploads/") {
		t.Errorf("Location = %q, want an upload URL", resp.Header.Get("Location"))
	}
}

func TestUploadChunkedWithOutOfOrderChunk(t *testing.T) {
	reg := startRegistry(t, 0)
	content := []byte("0123456789abcdefghij")
	dgst := digest.FromBytes(content)

	resp := reg.do(t, http.MethodPost, "/v2/app/blobs/uploads/", nil)
	expectStatus(t, resp, http.StatusAccepted)
	location := resp.Header.Get("Location")

	resp = reg.do(t, http.MethodPatch, location, content[:10], "Content-Range", "0-9", "Content-Type", "application/octet-stream")
	expectStatus(t, resp, http.StatusAccepted)
	if got := resp.Header.Get("Range"); got != "0-9" {
		t.Errorf("Range after first chunk = %q, want 0-9", got)
	}
	location = resp.Header.Get("Location")

	resp = reg.do(t, http.MethodPatch, location, content[15:], "Content-Range", "15-19")
	expectErrorCode(t, resp, http.StatusRequestedRangeNotSatisfiable, "RANGE_INVALID")

	resp = reg.do(t, http.MethodGet, location, nil)
	expectStatus(t, resp, http.StatusNoContent)
	if got := resp.Header.Get("Range"); got != "0-9" {
		t.Errorf("Range after rejected chunk = %q, want 0-9", got)
	}

	resp = reg.do(t, http.MethodPatch, location, content[10:], "Content-Range", "10-19")
	expectStatus(t, resp, http.StatusAccepted)
	resp = reg.do(t, http.MethodPut, location+"?digest="+dgst.String(), nil)
	expectStatus(t, resp, http.StatusCreated)

	resp = reg.do(t, http.MethodGet, "/v2/app/blobs/"+dgst.String(), nil)
	if body := readBody(t, resp); string(body) != string(content) {
		t.Errorf("blob = %q, want %q", body, content)
	}
}

func TestUploadPutWrongDigest(t *testing.T) {
	reg := startRegistry(t, 0)
	resp := reg.do(t, http.MethodPost, "/v2/app/blobs/uploads/", nil)
	location := resp.Header.Get("Location")

	resp = reg.do(t, http.MethodPut, location+"?digest="+digest.FromString("other").String(), []byte("actual"))
	expectErrorCode(t, resp, http.StatusBadRequest, "DIGEST_INVALID")

	resp = reg.do(t, http.MethodGet, location, nil)
	expectErrorCode(t, resp, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN")
}

func TestUploadSHA512(t *testing.T) {
	reg := startRegistry(t, 0)
	content := []byte("sha512 blob")
	dgst := digest.SHA512.FromBytes(content)

	resp := reg.do(t, http.MethodPost, "/v2/app/blobs/uploads/?digest="+dgst.String(), content)
	expectStatus(t, resp, http.StatusCreated)
	resp = reg.do(t, http.MethodHead, "/v2/app/blobs/"+dgst.String(), nil)
	expectStatus(t, resp, http.StatusOK)
}

func TestUploadCancel(t *testing.T) {
	reg := startRegistry(t, 0)
	resp := reg.do(t, http.MethodPost, "/v2/app/blobs/uploads/", nil)
	location := resp.Header.Get("Location")

	resp = reg.do(t, http.MethodDelete, location, nil)
	expectStatus(t, resp, http.StatusNoContent)
	resp = reg.do(t, http.MethodPatch, location, []byte("late"))
	expectErrorCode(t, resp, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN")
}

func TestUploadMountFromOtherRepository(t *testing.T) {
	reg := startRegistry(t, 0)
	dgst := reg.pushBlob(t, "source", []byte("shared layer"))

	resp := reg.do(t, http.MethodPost, "/v2/target/blobs/uploads/?mount="+dgst.String()+"&from=source", nil)
	expectStatus(t, resp, http.StatusCreated)
	if got := resp.Header.Get("Location"); got != "/v2/target/blobs/"+dgst.String() {
		t.Errorf("Location = %q, want the blob URL in target", got)
	}

	missing := digest.FromString("not pushed")
	resp = reg.do(t, http.MethodPost, "/v2/target/blobs/uploads/?mount="+missing.String()+"&from=source", nil)
	expectStatus(t, resp, http.StatusAccepted)
}

// TestUploadResumeAfterDroppedConnection sends half a chunk over a raw connection and closes it,
// then checks that GET on the session reports the stored bytes and the upload can finish.
func TestUploadResumeAfterDroppedConnection(t *testing.T) {
	reg := startRegistry(t, 0)
	content := []byte(strings.Repeat("resumable-", 1000))
	dgst := digest.FromBytes(content)

	resp := reg.do(t, http.MethodPost, "/v2/app/blobs/uploads/", nil)
	location := resp.Header.Get("Location")

	base, _ := url.Parse(reg.url)
	conn, err := net.Dial("tcp", base.Host)
	if err != nil {
		t.Fatal(err)
	}
	sent := 4000
	fmt.Fprintf(conn, "PATCH %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nContent-Range: 0-%d\r\n\r\n", location, base.Host, len(content), len(content)-1)
	conn.Write(content[:sent])
	time.Sleep(100 * time.Millisecond)
	conn.Close()

	// The server notices the closed connection when its read fails; poll until it released the
	// session and the stored range shows the bytes that arrived.
	var stored string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		resp = reg.do(t, http.MethodGet, location, nil)
		stored = resp.Header.Get("Range")
		if stored == fmt.Sprintf("0-%d", sent-1) {
			break
		}
	}
	if stored != fmt.Sprintf("0-%d", sent-1) {
		t.Fatalf("Range after dropped connection = %q, want 0-%d", stored, sent-1)
	}

	resp = reg.do(t, http.MethodPatch, location, content[sent:], "Content-Range", fmt.Sprintf("%d-%d", sent, len(content)-1))
	expectStatus(t, resp, http.StatusAccepted)
	resp = reg.do(t, http.MethodPut, location+"?digest="+dgst.String(), nil)
	expectStatus(t, resp, http.StatusCreated)
}

func TestUploadStreamedPatchWithoutLength(t *testing.T) {
	reg := startRegistry(t, 0)
	content := strings.Repeat("streamed ", 10000)
	dgst := digest.FromString(content)

	resp := reg.do(t, http.MethodPost, "/v2/app/blobs/uploads/", nil)
	location := resp.Header.Get("Location")

	// A pipe body has no known length, so the client sends it chunked.
	reader, writer := io.Pipe()
	go func() {
		buffered := bufio.NewWriter(writer)
		buffered.WriteString(content)
		buffered.Flush()
		writer.Close()
	}()
	req, _ := http.NewRequest(http.MethodPatch, reg.url+location, reader)
	patched, err := reg.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	patched.Body.Close()
	expectStatus(t, patched, http.StatusAccepted)

	resp = reg.do(t, http.MethodPut, patched.Header.Get("Location")+"?digest="+dgst.String(), nil)
	expectStatus(t, resp, http.StatusCreated)
}

// TestUploadIdleClientReleasesSession starts a PATCH that stalls midway and checks that the
// session is released after the idle timeout, so the client can resume it.
func TestUploadIdleClientReleasesSession(t *testing.T) {
	reg := startRegistryWith(t, func(opts *registry.Options) { opts.UploadIdleTimeout = 200 * time.Millisecond })
	resp := reg.do(t, http.MethodPost, "/v2/app/blobs/uploads/", nil)
	location := resp.Header.Get("Location")

	base, _ := url.Parse(reg.url)
	conn, err := net.Dial("tcp", base.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "PATCH %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 100\r\n\r\n", location, base.Host)
	conn.Write([]byte("0123456789"))

	// A GET that runs before the server reads the PATCH sees an empty session, so poll. Without
	// the idle timeout, a GET after that blocks for as long as the connection stays open.
	client := &http.Client{Timeout: 5 * time.Second}
	var stored string
	for deadline := time.Now().Add(5 * time.Second); stored != "0-9" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		resp, err := client.Get(reg.url + location)
		if err != nil {
			t.Fatalf("GET of the stalled session: %v", err)
		}
		resp.Body.Close()
		stored = resp.Header.Get("Range")
	}
	if stored != "0-9" {
		t.Errorf("Range after the stalled PATCH = %q, want 0-9", stored)
	}
}

func TestUploadFailedMonolithicLeavesNoSession(t *testing.T) {
	dir := t.TempDir()
	reg := startRegistryIn(t, dir)

	resp := reg.do(t, http.MethodPost, "/v2/app/blobs/uploads/?digest="+digest.FromString("other").String(), []byte("actual"))
	expectErrorCode(t, resp, http.StatusBadRequest, "DIGEST_INVALID")
	resp = reg.do(t, http.MethodPost, "/v2/app/blobs/uploads/?digest=sha256:short", []byte("actual"))
	expectErrorCode(t, resp, http.StatusBadRequest, "DIGEST_INVALID")

	entries, err := os.ReadDir(filepath.Join(dir, "uploads"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("upload folder has %d sessions after failed monolithic uploads, want 0", len(entries))
	}
}
