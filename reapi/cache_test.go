package reapi

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	cryptorand "crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/rulesimg/img/credhelper"
	"github.com/rulesimg/img/internal/faultproxy"
	"github.com/rulesimg/img/internal/testpeer"
)

// largeBlobBytes is big enough to take several ByteStream messages in each direction.
const largeBlobBytes = 64 << 20

// randomBlob is a reproducible stream of size pseudo-random bytes, so large blobs never
// have to be held in memory.
type randomBlob struct {
	seed uint64
	size int64
}

func (b randomBlob) reader() io.Reader {
	var seed [32]byte
	seed[0] = byte(b.seed)
	return io.LimitReader(rand.NewChaCha8(seed), b.size)
}

func (b randomBlob) digest(t *testing.T) Digest {
	t.Helper()

	h := sha256.New()
	if _, err := io.Copy(h, b.reader()); err != nil {
		t.Fatalf("hash random blob: %v", err)
	}
	return Digest{Hash: hex.EncodeToString(h.Sum(nil)), Size: b.size}
}

func (b randomBlob) bytes(t *testing.T) []byte {
	t.Helper()

	data, err := io.ReadAll(b.reader())
	if err != nil {
		t.Fatalf("read random blob: %v", err)
	}
	return data
}

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts bazel-remote")
	}
}

func dial(t *testing.T, endpoint string, opts Options) *Client {
	t.Helper()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Dial(ctx, endpoint, opts)
	if err != nil {
		t.Fatalf("Dial %s: %v", endpoint, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testContext(t *testing.T) context.Context {
	t.Helper()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// readDigest reads d through c from offset 0 and returns the digest of what Read returned
// before io.EOF.
func readDigest(t *testing.T, c *Client, d Digest) Digest {
	t.Helper()

	r, err := c.Open(testContext(t), d, 0)
	if err != nil {
		t.Fatalf("Open %s: %v", d, err)
	}
	defer r.Close()

	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		t.Fatalf("read %s: %v", d, err)
	}
	return Digest{Hash: hex.EncodeToString(h.Sum(nil)), Size: n}
}

func TestCacheCapabilities(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t)
	c := dial(t, cache.Endpoint(), Options{})

	if got := c.Endpoint(); got != cache.Endpoint() {
		t.Errorf("Endpoint() = %q, want %q", got, cache.Endpoint())
	}
	if !c.Capabilities().Zstd {
		t.Error("Capabilities().Zstd = false, want true for bazel-remote")
	}
}

func TestWriteReadSmall(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t)
	c := dial(t, cache.Endpoint(), Options{})
	ctx := testContext(t)
	data := []byte("a small blob that travels through the batch calls")
	d := DigestOf(data)

	missing, err := c.FindMissing(ctx, []Digest{d})
	if err != nil {
		t.Fatalf("FindMissing before Write: %v", err)
	}
	if len(missing) != 1 {
		t.Errorf("FindMissing before Write = %v, want [%v]", missing, d)
	}

	if err := c.Write(ctx, d, bytes.NewReader(data)); err != nil {
		t.Fatalf("Write: %v", err)
	}

	missing, err = c.FindMissing(ctx, []Digest{d})
	if err != nil {
		t.Fatalf("FindMissing after Write: %v", err)
	}
	if len(missing) != 0 {
		t.Errorf("FindMissing after Write = %v, want none", missing)
	}

	got, err := c.ReadAll(ctx, d)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("ReadAll = %q, want %q", got, data)
	}

	r, err := c.Open(ctx, d, 8)
	if err != nil {
		t.Fatalf("Open at offset 8: %v", err)
	}
	defer r.Close()
	tail, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read from offset 8: %v", err)
	}
	if !bytes.Equal(tail, data[8:]) {
		t.Errorf("bytes from offset 8 = %q, want %q", tail, data[8:])
	}
}

func TestWriteReadEmpty(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t)
	c := dial(t, cache.Endpoint(), Options{})
	ctx := testContext(t)
	d := DigestOf(nil)

	if err := c.Write(ctx, d, bytes.NewReader(nil)); err != nil {
		t.Fatalf("Write of the empty blob: %v", err)
	}
	missing, err := c.FindMissing(ctx, []Digest{d})
	if err != nil {
		t.Fatalf("FindMissing: %v", err)
	}
	if len(missing) != 0 {
		t.Errorf("FindMissing of the empty blob = %v, want none", missing)
	}
	if got := readDigest(t, c, d); got != d {
		t.Errorf("read digest = %v, want %v", got, d)
	}
}

func TestWriteReadLarge(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t)
	c := dial(t, cache.Endpoint(), Options{})
	ctx := testContext(t)
	blob := randomBlob{seed: 1, size: largeBlobBytes}
	d := blob.digest(t)

	// A plain io.Reader, so the upload cannot rely on seeking.
	if err := c.Write(ctx, d, blob.reader()); err != nil {
		t.Fatalf("Write: %v", err)
	}

	t.Run("zstd", func(t *testing.T) {
		if got := readDigest(t, c, d); got != d {
			t.Errorf("read digest = %v, want %v", got, d)
		}
	})

	t.Run("uncompressed", func(t *testing.T) {
		plain := dial(t, cache.Endpoint(), Options{})
		plain.caps.Zstd = false
		if got := readDigest(t, plain, d); got != d {
			t.Errorf("read digest = %v, want %v", got, d)
		}
	})

	t.Run("offset", func(t *testing.T) {
		const offset = 10<<20 + 7
		r, err := c.Open(ctx, d, offset)
		if err != nil {
			t.Fatalf("Open at offset %d: %v", offset, err)
		}
		defer r.Close()

		want := sha256.New()
		source := blob.reader()
		if _, err := io.CopyN(io.Discard, source, offset); err != nil {
			t.Fatalf("skip source: %v", err)
		}
		if _, err := io.Copy(want, source); err != nil {
			t.Fatalf("hash source: %v", err)
		}
		got := sha256.New()
		n, err := io.Copy(got, r)
		if err != nil {
			t.Fatalf("read from offset %d: %v", offset, err)
		}
		if n != d.Size-offset {
			t.Errorf("read %d bytes from offset %d, want %d", n, offset, d.Size-offset)
		}
		if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
			t.Error("bytes from the offset differ from the blob's")
		}
	})
}

func TestZstdReadFromUncompressedStorage(t *testing.T) {
	skipShort(t)
	// bazel-remote v2.6.1 announces zstd whatever its --storage_mode, and compresses on the
	// fly when it stores blobs uncompressed.
	cache := testpeer.StartBazelRemote(t, testpeer.WithBazelRemoteArgs("--storage_mode", "uncompressed"))
	c := dial(t, cache.Endpoint(), Options{})
	if !c.Capabilities().Zstd {
		t.Fatal("Capabilities().Zstd = false with --storage_mode uncompressed, want true")
	}

	roundTrip(t, c, randomBlob{seed: 15, size: 3 << 20})
}

func TestConcurrentWritesAndReads(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t)
	c := dial(t, cache.Endpoint(), Options{})

	// The parallel subtests finish before the "blobs" group returns.
	t.Run("blobs", func(t *testing.T) {
		for i := range 8 {
			size := int64(3 << 20)
			if i%2 == 0 {
				size = 4000
			}
			t.Run(fmt.Sprintf("blob %d", i), func(t *testing.T) {
				t.Parallel()
				roundTrip(t, c, randomBlob{seed: uint64(30 + i), size: size})
			})
		}
	})
}

func TestWriteExistingBlobCompletesEarly(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t)
	c := dial(t, cache.Endpoint(), Options{})
	ctx := testContext(t)
	blob := randomBlob{seed: 2, size: largeBlobBytes}
	d := blob.digest(t)

	if err := c.Write(ctx, d, blob.reader()); err != nil {
		t.Fatalf("first Write: %v", err)
	}

	counter := &countingReader{r: blob.reader()}
	if err := c.Write(ctx, d, counter); err != nil {
		t.Fatalf("second Write: %v", err)
	}
	if counter.n >= d.Size {
		t.Errorf("second Write read all %d bytes, want it to stop when the cache reports the blob present", counter.n)
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func TestWriteDigestMismatchNotCommitted(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t)
	c := dial(t, cache.Endpoint(), Options{})
	ctx := testContext(t)

	tests := []struct {
		name string
		size int64
	}{
		{"batch", 1000},
		{"stream", 3 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			claimed := randomBlob{seed: 3, size: tt.size}.digest(t)
			actual := randomBlob{seed: 4, size: tt.size}

			err := c.Write(ctx, claimed, actual.reader())
			if err == nil {
				t.Fatal("Write of bytes that do not match the digest succeeded")
			}
			if !strings.Contains(err.Error(), "not the expected one") {
				t.Errorf("error %q does not report the digest mismatch", err)
			}

			missing, err := c.FindMissing(ctx, []Digest{claimed, actual.digest(t)})
			if err != nil {
				t.Fatalf("FindMissing: %v", err)
			}
			if len(missing) != 2 {
				t.Errorf("FindMissing = %v, want both digests missing", missing)
			}
		})
	}

	t.Run("short source", func(t *testing.T) {
		d := randomBlob{seed: 5, size: 2 << 20}.digest(t)
		err := c.Write(ctx, d, randomBlob{seed: 5, size: 1 << 20}.reader())
		if err == nil || !strings.Contains(err.Error(), "the source ended after 1048576 bytes") {
			t.Errorf("Write of a short source: error %v, want one saying the source ended early", err)
		}
	})
}

func TestOpenMissingBlob(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t)
	c := dial(t, cache.Endpoint(), Options{})

	for _, size := range []int64{100, 5 << 20} {
		d := Digest{Hash: testHash, Size: size}
		_, err := c.Open(testContext(t), d, 0)
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("Open of missing %s: error %v, want ErrNotFound", d, err)
			continue
		}
		want := fmt.Sprintf("remote cache %s: blob sha256:%s/%d not found", cache.Endpoint(), testHash, size)
		if err.Error() != want {
			t.Errorf("error = %q, want %q", err, want)
		}
	}
}

func TestFindMissingSplitsLargeRequests(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t)
	c := dial(t, cache.Endpoint(), Options{})
	ctx := testContext(t)

	present := []byte("present blob")
	if err := c.Write(ctx, DigestOf(present), bytes.NewReader(present)); err != nil {
		t.Fatalf("Write: %v", err)
	}

	// About 72 bytes per digest, so 120,000 digests need about 8.6 MB: more than twice the
	// 4 MiB that a gRPC server accepts in one message by default.
	const count = 120_000
	random := rand.New(rand.NewPCG(1, 2))
	digests := []Digest{DigestOf(present)}
	for i := range count {
		var sum [32]byte
		for j := range sum {
			sum[j] = byte(random.Uint32())
		}
		digests = append(digests, Digest{Hash: hex.EncodeToString(sum[:]), Size: int64(i + 1)})
	}
	digests = append(digests, digests[1]) // a duplicate

	if batches := len(c.findMissingBatches(digests)); batches < 3 {
		t.Errorf("requests for %d digests = %d, want at least 3", len(digests), batches)
	}

	missing, err := c.FindMissing(ctx, digests)
	if err != nil {
		t.Fatalf("FindMissing: %v", err)
	}
	if len(missing) != count {
		t.Fatalf("FindMissing returned %d digests, want %d", len(missing), count)
	}
	for i, d := range missing {
		if d != digests[i+1] {
			t.Fatalf("missing[%d] = %v, want %v in the order given", i, d, digests[i+1])
		}
	}
}

func TestInstanceNameRoundTrip(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t)
	ctx := testContext(t)
	blob := randomBlob{seed: 6, size: 2 << 20}
	d := blob.digest(t)

	c := dial(t, cache.Endpoint(), Options{InstanceName: "team/main"})
	if got := c.InstanceName(); got != "team/main" {
		t.Errorf("InstanceName() = %q, want %q", got, "team/main")
	}
	if err := c.Write(ctx, d, blob.reader()); err != nil {
		t.Fatalf("Write with a multi-segment instance name: %v", err)
	}
	if got := readDigest(t, c, d); got != d {
		t.Errorf("read digest = %v, want %v", got, d)
	}

	// bazel-remote v2.6.1 ignores instance names (a comment in its GetCapabilities states
	// this), so the blob is visible under every instance. A cache that separates instances
	// would report it missing here, so this checks only that requests carrying the name are
	// well-formed.
	other := dial(t, cache.Endpoint(), Options{InstanceName: "other"})
	missing, err := other.FindMissing(ctx, []Digest{d})
	if err != nil {
		t.Fatalf("FindMissing under another instance: %v", err)
	}
	if len(missing) != 0 {
		t.Errorf("FindMissing under another instance = %v; bazel-remote was expected to ignore instance names", missing)
	}
}

func TestAuthHeaders(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t, testpeer.WithBazelRemoteHtpasswd("builder", "s3cret-pass"))
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("builder:s3cret-pass"))

	t.Run("without credentials", func(t *testing.T) {
		_, err := Dial(testContext(t), cache.Endpoint(), Options{})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("Dial without credentials: error %v, want Unauthenticated", err)
		}
		if !strings.Contains(err.Error(), "check the headers or credential helper") {
			t.Errorf("error %q does not say what to check", err)
		}
	})

	t.Run("header", func(t *testing.T) {
		c := dial(t, cache.Endpoint(), Options{Headers: map[string][]string{"Authorization": {basic}}})
		roundTrip(t, c, randomBlob{seed: 7, size: 2 << 20})
	})

	t.Run("user in endpoint", func(t *testing.T) {
		endpoint := "grpc://builder:s3cret-pass@" + cache.GRPCAddr
		c := dial(t, endpoint, Options{})
		roundTrip(t, c, randomBlob{seed: 8, size: 1000})
		if strings.Contains(c.Endpoint(), "s3cret") {
			t.Errorf("Endpoint() = %q contains the password", c.Endpoint())
		}
	})

	t.Run("credential helper", func(t *testing.T) {
		dir := t.TempDir()
		uris := filepath.Join(dir, "uris")
		helper := writeScript(t, dir, "helper", `cat >> '`+uris+`'
echo >> '`+uris+`'
printf '{"headers": {"Authorization": ["`+basic+`"]}}'`)

		c := dial(t, cache.Endpoint(), Options{CredentialHelper: credhelper.New(helper)})
		roundTrip(t, c, randomBlob{seed: 9, size: 2 << 20})

		data, err := os.ReadFile(uris)
		if err != nil {
			t.Fatalf("read the URIs the helper received: %v", err)
		}
		for _, service := range []string{"build.bazel.remote.execution.v2.Capabilities", "build.bazel.remote.execution.v2.ContentAddressableStorage", "google.bytestream.ByteStream"} {
			want := fmt.Sprintf(`{"uri":"https://%s/%s"}`, cache.GRPCAddr, service)
			if !strings.Contains(string(data), want) {
				t.Errorf("helper requests %q do not include %s", data, want)
			}
		}
	})

	t.Run("failing credential helper", func(t *testing.T) {
		dir := t.TempDir()
		helper := writeScript(t, dir, "helper", `echo "no login session" >&2
exit 2`)
		proxy := faultproxy.NewTCP(t, cache.GRPCAddr)

		_, err := Dial(testContext(t), "grpc://"+proxy.Addr, Options{CredentialHelper: credhelper.New(helper)})
		if err == nil {
			t.Fatal("Dial with a failing credential helper succeeded")
		}
		for _, want := range []string{"remote cache grpc://" + proxy.Addr, helper, "exit status 2", "no login session", "the call was not sent"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not contain %q", err, want)
			}
		}
		if got := proxy.Connections(); got != 0 {
			t.Errorf("connections to the cache = %d, want 0: no call may go out without the helper's headers", got)
		}
	})
}

func writeScript(t *testing.T, dir, name, body string) string {
	t.Helper()

	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatalf("write script: %v", err)
	}
	return path
}

// roundTrip writes blob through c, checks that FindMissing finds it, and reads it back.
func roundTrip(t *testing.T, c *Client, blob randomBlob) {
	t.Helper()

	d := blob.digest(t)
	if err := c.Write(testContext(t), d, blob.reader()); err != nil {
		t.Fatalf("Write: %v", err)
	}
	missing, err := c.FindMissing(testContext(t), []Digest{d})
	if err != nil {
		t.Fatalf("FindMissing: %v", err)
	}
	if len(missing) != 0 {
		t.Errorf("FindMissing after Write = %v, want none", missing)
	}
	if got := readDigest(t, c, d); got != d {
		t.Errorf("read digest = %v, want %v", got, d)
	}
}

func TestReadResumesAfterCut(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t)
	direct := dial(t, cache.Endpoint(), Options{})
	blob := randomBlob{seed: 10, size: largeBlobBytes}
	d := blob.digest(t)
	if err := direct.Write(testContext(t), d, blob.reader()); err != nil {
		t.Fatalf("Write: %v", err)
	}

	for _, compressed := range []bool{true, false} {
		t.Run(fmt.Sprintf("zstd=%v", compressed), func(t *testing.T) {
			proxy := faultproxy.NewTCP(t, cache.GRPCAddr)
			c := dial(t, "grpc://"+proxy.Addr, Options{})
			c.caps.Zstd = compressed

			proxy.CutAfter(largeBlobBytes / 3)
			if got := readDigest(t, c, d); got != d {
				t.Errorf("read digest = %v, want %v", got, d)
			}
			if got := proxy.Cuts(); got != 1 {
				t.Errorf("cuts = %d, want 1", got)
			}
			if got := proxy.Connections(); got < 2 {
				t.Errorf("connections = %d, want at least 2 after the cut", got)
			}
		})
	}
}

// cuttingReader calls cut once after limit bytes were read.
type cuttingReader struct {
	r     io.ReadSeeker
	limit int64
	read  int64
	cut   func()
}

func (c *cuttingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read += int64(n)
	if c.cut != nil && c.read > c.limit {
		c.cut()
		c.cut = nil
	}
	return n, err
}

func (c *cuttingReader) Seek(offset int64, whence int) (int64, error) {
	return c.r.Seek(offset, whence)
}

func TestWriteResumesAfterCut(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t)
	direct := dial(t, cache.Endpoint(), Options{})
	blob := randomBlob{seed: 11, size: largeBlobBytes}
	d := blob.digest(t)

	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, blob.bytes(t), 0o644); err != nil {
		t.Fatalf("write blob file: %v", err)
	}
	file, err := os.Open(path)
	if err != nil {
		t.Fatalf("open blob file: %v", err)
	}
	defer file.Close()

	proxy := faultproxy.NewTCP(t, cache.GRPCAddr)
	c := dial(t, "grpc://"+proxy.Addr, Options{})
	source := &cuttingReader{r: file, limit: largeBlobBytes / 2, cut: proxy.CloseConnections}

	if err := c.Write(testContext(t), d, source); err != nil {
		t.Fatalf("Write through a connection cut halfway: %v", err)
	}
	if source.cut != nil {
		t.Fatal("the connection was never cut")
	}
	if got := proxy.Connections(); got < 2 {
		t.Errorf("connections = %d, want at least 2 after the cut", got)
	}
	if got := readDigest(t, direct, d); got != d {
		t.Errorf("read digest = %v, want %v", got, d)
	}
}

func TestWriteCutWithoutSeekFails(t *testing.T) {
	skipShort(t)
	cache := testpeer.StartBazelRemote(t)
	blob := randomBlob{seed: 12, size: 16 << 20}
	d := blob.digest(t)

	proxy := faultproxy.NewTCP(t, cache.GRPCAddr)
	c := dial(t, "grpc://"+proxy.Addr, Options{})
	plain := blob.reader()
	var read int64
	cut := false
	source := readerFunc(func(p []byte) (int, error) {
		n, err := plain.Read(p)
		read += int64(n)
		if !cut && read > d.Size/2 {
			cut = true
			proxy.CloseConnections()
		}
		return n, err
	})

	err := c.Write(testContext(t), d, source)
	if err == nil {
		t.Fatal("Write of a plain reader through a cut connection succeeded; bazel-remote keeps no partial uploads, so it must fail")
	}
	if !strings.Contains(err.Error(), "cannot be rewound") {
		t.Errorf("error %q does not say the source cannot be rewound", err)
	}
}

type readerFunc func(p []byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// startBazelRemoteProcess starts bazel-remote with args for the setups that testpeer does not
// offer (a unix socket, TLS), waits until ready returns true, and stops it on cleanup.
func startBazelRemoteProcess(t *testing.T, dir string, args []string, ready func() bool) {
	t.Helper()

	logPath := filepath.Join(dir, "bazel-remote.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("create log: %v", err)
	}
	args = append([]string{"--dir", filepath.Join(dir, "cache"), "--max_size", "1"}, args...)
	cmd := exec.Command(testpeer.Tool(t, "bazel-remote"), args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("start bazel-remote: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logFile.Close()
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			t.Logf("bazel-remote log:\n%s", log)
		}
	})

	deadline := time.Now().Add(20 * time.Second)
	for !ready() {
		if time.Now().After(deadline) {
			t.Fatalf("bazel-remote %v was not ready within 20s", args)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestUnixSocket(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	socket := filepath.Join(dir, "cache.sock")
	startBazelRemoteProcess(t, dir, []string{
		"--grpc_address", "unix://" + socket,
		"--http_address", fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t)),
	}, func() bool {
		_, err := os.Stat(socket)
		return err == nil
	})

	c := dial(t, "unix://"+socket, Options{})
	if got := c.Endpoint(); got != "unix://"+socket {
		t.Errorf("Endpoint() = %q, want %q", got, "unix://"+socket)
	}
	roundTrip(t, c, randomBlob{seed: 13, size: 2 << 20})
}

func TestTLS(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	certFile, keyFile := writeSelfSignedCert(t, dir)
	grpcAddr := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t))
	startBazelRemoteProcess(t, dir, []string{
		"--grpc_address", grpcAddr,
		"--http_address", fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t)),
		"--tls_cert_file", certFile,
		"--tls_key_file", keyFile,
	}, func() bool {
		conn, err := net.Dial("tcp", grpcAddr)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})

	t.Run("trusted CA file", func(t *testing.T) {
		c := dial(t, "grpcs://"+grpcAddr, Options{CAFile: certFile})
		roundTrip(t, c, randomBlob{seed: 14, size: 2 << 20})
	})

	t.Run("system roots", func(t *testing.T) {
		_, err := Dial(testContext(t), "grpcs://"+grpcAddr, Options{Retries: -1})
		if err == nil {
			t.Fatal("Dial trusted a self-signed certificate without the CA file")
		}
		if !strings.Contains(err.Error(), "certificate") {
			t.Errorf("error %q does not mention the certificate", err)
		}
	})

	t.Run("CA file without certificates", func(t *testing.T) {
		_, err := Dial(testContext(t), "grpcs://"+grpcAddr, Options{CAFile: keyFile})
		if err == nil || !strings.Contains(err.Error(), "contains no PEM certificate") {
			t.Errorf("Dial with a key as CA file: error %v, want one saying it contains no certificate", err)
		}
	})
}

// writeSelfSignedCert writes a self-signed certificate for 127.0.0.1 and its key as PEM files.
func writeSelfSignedCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()

	key, err := ecdsa.GenerateKey(elliptic.P256(), cryptorand.Reader)
	if err != nil {
		t.Fatalf("generate key: %v", err)
	}
	template := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "img test cache"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(cryptorand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("create certificate: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("marshal key: %v", err)
	}

	certFile = filepath.Join(dir, "cert.pem")
	keyFile = filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatalf("write certificate: %v", err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatalf("write key: %v", err)
	}
	return certFile, keyFile
}

func TestDialCacheDown(t *testing.T) {
	endpoint := fmt.Sprintf("grpc://127.0.0.1:%d", testpeer.FreePort(t))

	_, err := Dial(testContext(t), endpoint, Options{Retries: 1})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("Dial of a closed port: error %v, want Unavailable", err)
	}
	for _, want := range []string{"remote cache " + endpoint + ": GetCapabilities", "check that the cache is running"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}
