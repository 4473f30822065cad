package testpeer

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// BazelRemote is a running bazel-remote cache (v2.6.1, pinned in tools/go.mod) that serves
// REAPI over gRPC and its own HTTP API.
type BazelRemote struct {
	// GRPCAddr and HTTPAddr are host:port on 127.0.0.1.
	GRPCAddr, HTTPAddr string
	// Dir is the cache folder (--dir).
	Dir string
	// User and Password are the credentials it accepts; both are empty without auth.
	User, Password string
	// LogPath is the cache's log file, printed in part when the test fails.
	LogPath string

	binary string
	args   []string
	proc   *process
}

type bazelRemoteConfig struct {
	user, password string
	htpasswd       bool
	extraArgs      []string
}

// BazelRemoteOption changes how StartBazelRemote configures the cache.
type BazelRemoteOption func(*bazelRemoteConfig)

// WithBazelRemoteHtpasswd makes the cache require HTTP basic auth (gRPC metadata
// "authorization: Basic …") with one user, stored as a bcrypt htpasswd file.
func WithBazelRemoteHtpasswd(user, password string) BazelRemoteOption {
	return func(c *bazelRemoteConfig) {
		c.htpasswd = true
		c.user, c.password = user, password
	}
}

// WithBazelRemoteArgs adds command-line flags, for example "--storage_mode=uncompressed" or
// "--max_blob_size=1048576".
func WithBazelRemoteArgs(args ...string) BazelRemoteOption {
	return func(c *bazelRemoteConfig) {
		c.extraArgs = append(c.extraArgs, args...)
	}
}

// StartBazelRemote starts bazel-remote with its --dir in the test's temporary folder,
// --max_size 1 (GiB) and gRPC and HTTP on random 127.0.0.1 ports. It returns once both ports
// accept connections and stops the cache on cleanup.
func StartBazelRemote(t testing.TB, opts ...BazelRemoteOption) *BazelRemote {
	t.Helper()

	var config bazelRemoteConfig
	for _, opt := range opts {
		opt(&config)
	}

	dir := peerDir(t, "bazel-remote")
	b := &BazelRemote{
		Dir:      filepath.Join(dir, "cache"),
		User:     config.user,
		Password: config.password,
		LogPath:  filepath.Join(dir, "bazel-remote.log"),
		binary:   Tool(t, "bazel-remote"),
	}

	var authArgs []string
	if config.htpasswd {
		path := filepath.Join(dir, "htpasswd")
		writeFile(t, path, htpasswdLine(t, config.user, config.password))
		authArgs = []string{"--htpasswd_file", path}
	}

	// bazel-remote binds its ports itself, so another process can take one between FreePort
	// and the bind. Retry with new ports when that happens.
	const attempts = 3
	for attempt := 1; ; attempt++ {
		b.GRPCAddr = "127.0.0.1:" + strconv.Itoa(FreePort(t))
		b.HTTPAddr = "127.0.0.1:" + strconv.Itoa(FreePort(t))
		b.args = []string{
			"--dir", b.Dir,
			"--max_size", "1",
			"--grpc_address", b.GRPCAddr,
			"--http_address", b.HTTPAddr,
		}
		b.args = append(b.args, authArgs...)
		b.args = append(b.args, config.extraArgs...)

		err := b.start(t)
		if err == nil {
			break
		}
		if attempt < attempts && strings.Contains(fileTail(b.LogPath, logTailBytes), "address already in use") {
			continue
		}
		t.Fatalf("testpeer: start bazel-remote: %v", err)
	}

	t.Cleanup(func() {
		b.proc.stop()
		if t.Failed() {
			t.Logf("testpeer: bazel-remote log tail (%s):\n%s", b.LogPath, b.proc.logTail())
		}
	})
	return b
}

// start starts the process with b.args and waits until both ports accept connections.
func (b *BazelRemote) start(t testing.TB) error {
	t.Helper()

	b.proc = startProcess(t, "bazel-remote", b.LogPath, b.binary, b.args, nil)
	ready := func(ctx context.Context) error {
		if err := tcpAccepts(b.GRPCAddr)(ctx); err != nil {
			return err
		}
		return httpAnswers("http://" + b.HTTPAddr + "/status")(ctx)
	}
	if err := b.proc.waitReady(context.Background(), ready); err != nil {
		b.proc.stop()
		return err
	}
	return nil
}

// Endpoint returns the gRPC endpoint in Bazel's --remote_cache form, "grpc://127.0.0.1:P".
func (b *BazelRemote) Endpoint() string {
	return "grpc://" + b.GRPCAddr
}

// HTTPURL returns the base URL of the HTTP API, "http://127.0.0.1:P".
func (b *BazelRemote) HTTPURL() string {
	return "http://" + b.HTTPAddr
}

// Stop stops the cache, so clients get connection errors. Restart starts it again.
func (b *BazelRemote) Stop() {
	b.proc.stop()
}

// Restart stops the cache if it runs and starts it again on the same ports and folder.
// bazel-remote rebuilds its in-memory index from the files in --dir at start.
//
// NOTE: another process may bind a port while the cache is down; Restart then fails the test.
func (b *BazelRemote) Restart(t testing.TB) {
	t.Helper()

	b.proc.stop()
	if err := b.start(t); err != nil {
		t.Fatalf("testpeer: restart bazel-remote: %v", err)
	}
}

var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

// BlobPaths returns the files that store the CAS blob with the given SHA-256 hex hash. In
// v2.6.1 a CAS blob lives in cas.v2/<first 2 hex>/<hash>-<size>-<random> (or
// <hash>-<random>.v1 in the legacy uncompressed format), compressed with zstd in the
// default --storage_mode.
func (b *BazelRemote) BlobPaths(t testing.TB, hash string) []string {
	t.Helper()

	if !sha256Hex.MatchString(hash) {
		t.Fatalf("testpeer: blob hash %q is not 64 lowercase hex digits; pass the hash without the sha256: prefix", hash)
	}
	matches, err := filepath.Glob(filepath.Join(b.Dir, "cas.v2", hash[:2], hash+"-*"))
	if err != nil {
		t.Fatalf("testpeer: find blob %s: %v", hash, err)
	}
	return matches
}

// EvictBlob deletes the CAS blob with the given SHA-256 hex hash from disk and restarts the
// cache, so FindMissingBlobs reports it missing and reads return NOT_FOUND, as after an LRU
// eviction. The restart is needed because bazel-remote v2.6.1 serves FindMissingBlobs from
// an in-memory index built at start, so a file deleted under a running server still looks
// present. Connections to the cache break during the restart. The test fails when
// the blob has no file on disk.
func (b *BazelRemote) EvictBlob(t testing.TB, hash string) {
	t.Helper()

	b.proc.stop()

	paths := b.BlobPaths(t, hash)
	if len(paths) == 0 {
		t.Fatalf("testpeer: evict blob %s: no file under %s; was it uploaded to this cache?", hash, filepath.Join(b.Dir, "cas.v2", hash[:2]))
	}
	for _, path := range paths {
		if err := os.Remove(path); err != nil {
			t.Fatalf("testpeer: evict blob %s: %v", hash, err)
		}
	}

	if err := b.start(t); err != nil {
		t.Fatalf("testpeer: restart bazel-remote after evicting blob %s: %v", hash, err)
	}
}
