package conformance

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// peakRSS returns the VmHWM (peak resident set size) of a process in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	file, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read peak RSS: %v", err)
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) == 3 && fields[0] == "VmHWM:" && fields[2] == "kB" {
			kib, _ := strconv.ParseInt(fields[1], 10, 64)
			return kib << 10
		}
	}
	t.Fatalf("no VmHWM line in /proc/%d/status", pid)
	return 0
}

// pattern repeats with a period of 251 bytes, a prime, so no power-of-two chunking of the
// stream lines up with it.
var pattern = func() []byte {
	block := make([]byte, 251*1024)
	for i := range block {
		block[i] = byte(i % 251)
	}
	return block
}()

// patternReader yields remaining bytes of the repeating pattern without holding them in memory.
type patternReader struct {
	remaining int64
	offset    int
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.remaining == 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.remaining)]
	n := 0
	for n < len(p) {
		copied := copy(p[n:], pattern[r.offset:])
		n += copied
		r.offset = (r.offset + copied) % len(pattern)
	}
	r.remaining -= int64(n)
	return n, nil
}

// TestLargeUploadBoundedMemory streams a 2 GiB blob into img registry in one PATCH and checks
// that the registry's peak RSS stays under 100 MiB, so uploads are never buffered in memory.
func TestLargeUploadBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("uploads 2 GiB to img registry")
	}
	const size = 2 << 30
	var stat syscall.Statfs_t
	dataDir := t.TempDir()
	if err := syscall.Statfs(dataDir, &stat); err == nil && int64(stat.Bavail)*stat.Bsize < 3*size {
		t.Skipf("needs %d bytes free in %s", 3*size, dataDir)
	}
	registry := startImgRegistry(t, dataDir)
	client := &http.Client{Timeout: 5 * time.Minute}

	hasher := sha256.New()
	if _, err := io.Copy(hasher, &patternReader{remaining: size}); err != nil {
		t.Fatal(err)
	}
	dgst := digest.Digest("sha256:" + hex.EncodeToString(hasher.Sum(nil)))

	resp, err := client.Post(registry.url()+"/v2/big/blob/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	location := resp.Header.Get("Location")

	start := time.Now()
	req, _ := http.NewRequest(http.MethodPatch, registry.url()+location, &patternReader{remaining: size})
	req.ContentLength = size
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("PATCH of 2 GiB = %d, want 202", resp.StatusCode)
	}
	req, _ = http.NewRequest(http.MethodPut, registry.url()+resp.Header.Get("Location")+"?digest="+dgst.String(), nil)
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT commit = %d, want 201", resp.StatusCode)
	}
	t.Logf("uploaded 2 GiB in %s", time.Since(start).Round(time.Millisecond))

	if rss := peakRSS(t, registry.cmd.Process.Pid); rss > 100<<20 {
		t.Errorf("registry peak RSS = %d MiB during a 2 GiB upload, want under 100 MiB", rss>>20)
	} else {
		t.Logf("registry peak RSS = %d MiB", rss>>20)
	}
}

// TestShutdownFinishesUploadInFlight sends SIGTERM while a PATCH is streaming and checks that
// the upload completes and the registry then exits.
func TestShutdownFinishesUploadInFlight(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and stops img registry")
	}
	registry := startImgRegistry(t, t.TempDir())
	client := &http.Client{Timeout: time.Minute}
	content := strings.Repeat("in flight ", 100_000)

	resp, err := client.Post(registry.url()+"/v2/shutdown/app/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	location := resp.Header.Get("Location")

	reader, writer := io.Pipe()
	responses := make(chan *http.Response, 1)
	errs := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPatch, registry.url()+location, reader)
		resp, err := client.Do(req)
		if err != nil {
			errs <- err
			return
		}
		resp.Body.Close()
		responses <- resp
	}()

	io.WriteString(writer, content[:len(content)/2])
	// The pipe write returns once the client has sent the bytes, which can be before the
	// server has read the request headers. A connection the server has not started to
	// read counts as idle, and the shutdown closes it at once.
	time.Sleep(300 * time.Millisecond)
	registry.cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(200 * time.Millisecond)
	io.WriteString(writer, content[len(content)/2:])
	writer.Close()

	select {
	case resp := <-responses:
		if resp.StatusCode != http.StatusAccepted {
			t.Errorf("PATCH during shutdown = %d, want 202", resp.StatusCode)
		}
		if got, want := resp.Header.Get("Range"), fmt.Sprintf("0-%d", len(content)-1); got != want {
			t.Errorf("Range after PATCH = %q, want %q", got, want)
		}
	case err := <-errs:
		t.Fatalf("PATCH during shutdown failed: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("PATCH during shutdown did not finish within 30s")
	}

	select {
	case <-registry.done:
	case <-time.After(10 * time.Second):
		t.Error("registry did not exit within 10s after the upload finished")
	}
}
