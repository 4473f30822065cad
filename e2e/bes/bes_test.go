// Package bes runs `bazel build` (Bazel 4.2.3, bazel-4) against the img BES server and
// a real bazel-remote cache, with the testdata workspace's stand-in image_push rule.
package bes

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	buildpb "google.golang.org/genproto/googleapis/devtools/build/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protodelim"

	"github.com/rulesimg/img/bes"
	"github.com/rulesimg/img/internal/testpeer"
)

var captureEvents = flag.String("capture", "", "write the tool event stream of the first build to this file, as length-delimited PublishBuildToolEventStreamRequest messages (for the bes benchmark)")

// bazelTimeout bounds one bazel command. A first build takes about 3 s on a 2-core
// machine, so this leaves room for a cold or busy one.
const bazelTimeout = 3 * time.Minute

// recordingPusher records the pushes the server requests and fails the labels in fail.
type recordingPusher struct {
	mu    sync.Mutex
	calls map[string][]byte
	fail  map[string]error
}

func (p *recordingPusher) Push(_ context.Context, job bes.PushJob) (bes.PushResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.calls == nil {
		p.calls = map[string][]byte{}
	}
	p.calls[job.Label] = job.Request
	if err := p.fail[job.Label]; err != nil {
		return bes.PushResult{}, err
	}
	return bes.PushResult{Digest: job.Decoded.Image.Root.Digest.String()}, nil
}

// besServer is the BES server running in the test process on 127.0.0.1.
type besServer struct {
	grpcAddr string
	httpURL  string
	queue    *bes.Queue
	server   *bes.Server
}

func startBESServer(t *testing.T, pusher bes.Pusher, mode bes.CommitMode) *besServer {
	t.Helper()

	store, err := bes.OpenBoltStore(t.TempDir(), bes.BoltStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	registry := prometheus.NewRegistry()
	logger := slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	fetcher := &bes.CachePool{}
	queue := bes.NewQueue(store, fetcher, pusher, bes.QueueOptions{
		Workers: 2, MaxAttempts: 2, InitialBackoff: 100 * time.Millisecond,
		Logger: logger, Metrics: bes.NewMetrics(registry),
	})
	if err := queue.Start(); err != nil {
		t.Fatal(err)
	}

	httpListener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpURL := "http://" + httpListener.Addr().String()
	server := bes.NewServer(queue, bes.ServerOptions{CommitMode: mode, ResultsURL: httpURL + "/invocation/"})

	grpcListener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	grpcServer := grpc.NewServer()
	var service buildpb.PublishBuildEventServer = server
	if *captureEvents != "" {
		service = &capturingService{Server: server, path: *captureEvents}
	}
	buildpb.RegisterPublishBuildEventServer(grpcServer, service)
	go grpcServer.Serve(grpcListener)

	httpServer := &http.Server{Handler: server.Handler(registry)}
	go httpServer.Serve(httpListener)

	t.Cleanup(func() {
		grpcServer.Stop()
		httpServer.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		queue.Close(ctx)
		fetcher.Close()
		store.Close()
	})
	return &besServer{grpcAddr: grpcListener.Addr().String(), httpURL: httpURL, queue: queue, server: server}
}

// waitDone waits until every push of the invocation is final.
func (s *besServer) waitDone(t *testing.T, invocationID string) map[string]bes.Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	jobs, err := s.queue.Wait(ctx, invocationID)
	if err != nil {
		t.Fatalf("waiting for the pushes of invocation %s: %v", invocationID, err)
	}
	byLabel := map[string]bes.Job{}
	for _, job := range jobs {
		byLabel[job.Label] = job
	}
	return byLabel
}

// capturingService records the tool event stream it serves, for the benchmark's testdata.
type capturingService struct {
	*bes.Server
	path string
	once sync.Once
}

func (c *capturingService) PublishBuildToolEventStream(stream buildpb.PublishBuildEvent_PublishBuildToolEventStreamServer) error {
	var buf bytes.Buffer
	err := c.Server.PublishBuildToolEventStream(&recordingStream{PublishBuildEvent_PublishBuildToolEventStreamServer: stream, buf: &buf})
	c.once.Do(func() {
		if writeErr := os.WriteFile(c.path, buf.Bytes(), 0o644); writeErr != nil {
			panic(writeErr)
		}
	})
	return err
}

type recordingStream struct {
	buildpb.PublishBuildEvent_PublishBuildToolEventStreamServer
	buf *bytes.Buffer
}

func (r *recordingStream) Recv() (*buildpb.PublishBuildToolEventStreamRequest, error) {
	req, err := r.PublishBuildEvent_PublishBuildToolEventStreamServer.Recv()
	if err == nil {
		protodelim.MarshalTo(r.buf, req)
	}
	return req, err
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// bazel is one Bazel workspace copy with its own output user root.
type bazel struct {
	workspace string
	root      string
	env       []string
}

// newBazel copies the stand-in workspace testdata/workspace for a test.
func newBazel(t *testing.T) *bazel {
	return newBazelWorkspace(t, "testdata/workspace")
}

// newBazelWorkspace copies the workspace folder from for a test, with __RULES_IMG__ in
// its WORKSPACE file replaced by the repository root.
func newBazelWorkspace(t *testing.T, from string) *bazel {
	t.Helper()
	if testing.Short() {
		t.Skip("runs bazel build")
	}
	if _, err := exec.LookPath("bazel-4"); err != nil {
		t.Skip("bazel-4 (Bazel 4.2.3) is not installed; apt-get install bazel-bootstrap")
	}

	dir := t.TempDir()
	b := &bazel{workspace: filepath.Join(dir, "workspace"), root: filepath.Join(dir, "root"), env: os.Environ()}
	copyDir(t, from, b.workspace)

	workspaceFile := filepath.Join(b.workspace, "WORKSPACE")
	body, err := os.ReadFile(workspaceFile)
	if err != nil {
		t.Fatal(err)
	}
	body = bytes.ReplaceAll(body, []byte("__RULES_IMG__"), []byte(testpeer.RepoRoot(t)))
	if err := os.WriteFile(workspaceFile, body, 0o644); err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() {
		// The Bazel server outlives the command; stop it so the test leaves no process.
		cmd := exec.Command("bazel-4", "--bazelrc=/dev/null", "--output_user_root="+b.root, "shutdown")
		cmd.Dir = b.workspace
		cmd.Run()
	})
	return b
}

// build runs bazel build and returns its combined output and error.
func (b *bazel) build(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bazelTimeout)
	defer cancel()

	full := append([]string{"--bazelrc=/dev/null", "--output_user_root=" + b.root, "--max_idle_secs=60", "build", "--color=no", "--curses=no", "--nosandbox_debug"}, args...)
	cmd := exec.CommandContext(ctx, "bazel-4", full...)
	cmd.Dir = b.workspace
	cmd.Env = b.env
	output, err := cmd.CombinedOutput()
	t.Logf("bazel-4 %s\n%s", strings.Join(full, " "), output)
	return string(output), err
}

func (b *bazel) bin(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(b.workspace, "bazel-bin", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

var resultsLink = regexp.MustCompile(`Streaming build results to: (http://\S+/invocation/)([0-9a-f-]+)`)

// invocationID returns the invocation id from the results link Bazel prints.
func invocationID(t *testing.T, output, resultsURL string) string {
	t.Helper()
	match := resultsLink.FindStringSubmatch(output)
	if match == nil {
		t.Fatalf("bazel output has no results link %s<id>", resultsURL)
	}
	if match[1] != resultsURL {
		t.Errorf("results link points to %s; expected %s", match[1], resultsURL)
	}
	return match[2]
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, entry fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		target := filepath.Join(to, rel)
		if entry.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		source, err := os.Open(path)
		if err != nil {
			return err
		}
		defer source.Close()
		dest, err := os.Create(target)
		if err != nil {
			return err
		}
		if _, err := io.Copy(dest, source); err != nil {
			dest.Close()
			return err
		}
		return dest.Close()
	})
	if err != nil {
		t.Fatalf("copy %s to %s: %v", from, to, err)
	}
}

func TestBazelBuildQueuesBESPushes(t *testing.T) {
	b := newBazel(t)
	cache := testpeer.StartBazelRemote(t)
	pusher := &recordingPusher{}
	server := startBESServer(t, pusher, bes.CommitBackground)
	resultsURL := server.httpURL + "/invocation/"

	// Without --output_groups, Bazel reports only the default output group, where the
	// server finds the push request by its name; with it, the img_push_request group.
	for _, outputGroups := range []string{"", "--output_groups=+img_push_request"} {
		args := []string{
			"--bes_backend=grpc://" + server.grpcAddr,
			"--bes_results_url=" + resultsURL,
			"--remote_cache=" + cache.Endpoint(),
			"--define=registry=127.0.0.1:5999",
		}
		if outputGroups != "" {
			args = append(args, outputGroups)
		}
		output, err := b.build(t, append(args, "//:app", "//:tools", "//:lazy", "//:notes")...)
		if err != nil {
			t.Fatalf("bazel build %s failed: %v", outputGroups, err)
		}
		id := invocationID(t, output, resultsURL)

		checkPushes(t, b, server, pusher, cache, id)
	}
}

// checkPushes checks the pushes of one build of //:app, //:tools, //:lazy and //:notes.
func checkPushes(t *testing.T, b *bazel, server *besServer, pusher *recordingPusher, cache *testpeer.BazelRemote, id string) {
	t.Helper()

	jobs := server.waitDone(t, id)
	if len(jobs) != 3 {
		t.Errorf("invocation %s got jobs for %d targets; expected //:app, //:tools and //:lazy", id, len(jobs))
	}
	for label, want := range map[string]bes.State{"//:app": bes.StateSucceeded, "//:tools": bes.StateSucceeded, "//:lazy": bes.StateSkipped} {
		if got := jobs[label].State; got != want {
			t.Errorf("%s is %s (error %q); expected %s", label, got, jobs[label].Error, want)
		}
	}
	if _, ok := jobs["//:notes"]; ok {
		t.Errorf("the genrule //:notes got a push job")
	}
	if !strings.HasPrefix(jobs["//:app"].RequestURI, "bytestream://"+cache.GRPCAddr+"/blobs/") {
		t.Errorf("//:app push request URI is %q; expected a bytestream URI of the cache %s", jobs["//:app"].RequestURI, cache.GRPCAddr)
	}

	pusher.mu.Lock()
	calls := pusher.calls
	pusher.calls = nil
	pusher.mu.Unlock()
	for label, file := range map[string]string{"//:app": "app.push_request.json", "//:tools": "tools.push_request.json"} {
		got, ok := calls[label]
		if !ok {
			t.Errorf("%s was not pushed", label)
			continue
		}
		if want := b.bin(t, file); !bytes.Equal(got, want) {
			t.Errorf("push request of %s read from the cache differs from bazel-bin/%s:\n%s\n%s", label, file, got, want)
		}
	}
	if _, ok := calls["//:lazy"]; ok {
		t.Errorf("//:lazy, whose push request names strategy lazy, was pushed")
	}

	response, err := http.Get(server.httpURL + "/invocation/" + id)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(response.Body)
	response.Body.Close()
	if !bytes.Contains(page, []byte("127.0.0.1:5999/e2e/tools:v1")) {
		t.Errorf("results page of %s does not list the reference of //:tools:\n%s", id, page)
	}
}

func TestBazelBuildFailsOnFailedPushPerStream(t *testing.T) {
	b := newBazel(t)
	cache := testpeer.StartBazelRemote(t)
	pusher := &recordingPusher{fail: map[string]error{"//:tools": bes.Permanent(errors.New("registry rejected the manifest"))}}
	server := startBESServer(t, pusher, bes.CommitPerStream)

	resultsURL := server.httpURL + "/invocation/"
	output, err := b.build(t,
		"--bes_backend=grpc://"+server.grpcAddr,
		"--bes_results_url="+resultsURL,
		"--remote_cache="+cache.Endpoint(),
		"//:app", "//:tools")
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) {
		t.Fatalf("bazel build returned %v; expected it to fail because the push of //:tools failed", err)
	}
	// Bazel 4.2.3 does not retry FAILED_PRECONDITION and exits with 45,
	// PERSISTENT_BUILD_EVENT_SERVICE_UPLOAD_ERROR.
	if exitErr.ExitCode() != 45 {
		t.Errorf("bazel build exited with %d; expected 45", exitErr.ExitCode())
	}
	if !strings.Contains(output, "registry rejected the manifest") {
		t.Errorf("bazel output does not show the push error")
	}

	id := invocationID(t, output, resultsURL)
	jobs := server.waitDone(t, id)
	if jobs["//:app"].State != bes.StateSucceeded {
		t.Errorf("//:app is %s; expected succeeded", jobs["//:app"].State)
	}
	if jobs["//:tools"].State != bes.StateFailed {
		t.Errorf("//:tools is %s; expected failed", jobs["//:tools"].State)
	}
}
