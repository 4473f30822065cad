package bes

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rulesimg/img/bes"
	"github.com/rulesimg/img/internal/testpeer"
)

// imgBES is an `img bes` process built from this repository.
type imgBES struct {
	grpcAddr string
	httpURL  string
	cmd      *exec.Cmd
	log      string
}

// startImgBES builds cmd/img and starts `img bes` on 127.0.0.1 with args added, and
// stops it with SIGINT on cleanup.
func startImgBES(t *testing.T, dataDir string, args ...string) *imgBES {
	t.Helper()
	return startImgBESOnPorts(t, dataDir, testpeer.FreePort(t), testpeer.FreePort(t), args...)
}

// startImgBESOnPorts starts `img bes` like startImgBES on the given ports.
func startImgBESOnPorts(t *testing.T, dataDir string, grpcPort, httpPort int, args ...string) *imgBES {
	t.Helper()

	binary := buildImg(t)
	full := append([]string{"bes",
		"--address", "127.0.0.1",
		"--port", strconv.Itoa(grpcPort),
		"--http-port", strconv.Itoa(httpPort),
		"--data-dir", dataDir,
		"--log-level", "debug",
		"--shutdown-timeout", "10s",
	}, args...)

	logPath := filepath.Join(t.TempDir(), "img-bes.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, full...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	server := &imgBES{
		grpcAddr: "127.0.0.1:" + strconv.Itoa(grpcPort),
		httpURL:  "http://127.0.0.1:" + strconv.Itoa(httpPort),
		cmd:      cmd,
		log:      logPath,
	}
	t.Cleanup(func() {
		server.stop(t)
		logFile.Close()
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			t.Logf("img bes log:\n%s", data)
		}
	})

	deadline := time.Now().Add(30 * time.Second)
	for {
		response, err := http.Get(server.httpURL + "/healthz")
		if err == nil {
			response.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(logPath)
			t.Fatalf("img bes did not answer on %s within 30s:\n%s", server.httpURL, data)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return server
}

// stop sends SIGINT and waits for the process to exit. A second call does nothing.
func (s *imgBES) stop(t *testing.T) {
	if s.cmd.ProcessState != nil {
		return
	}
	s.cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("img bes exited with %v after SIGINT", err)
		}
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-done
		t.Errorf("img bes did not stop within 30s of SIGINT")
	}
}

func (s *imgBES) results(t *testing.T, invocationID string) bes.InvocationResults {
	t.Helper()
	response, err := http.Get(s.httpURL + "/api/invocation/" + invocationID)
	if err != nil {
		t.Fatal(err)
	}
	defer response.Body.Close()
	body, _ := io.ReadAll(response.Body)
	var results bes.InvocationResults
	if err := json.Unmarshal(body, &results); err != nil {
		t.Fatalf("decoding /api/invocation/%s: %v\n%s", invocationID, err, body)
	}
	return results
}

// waitResults polls the JSON API until every push of the invocation is final.
func (s *imgBES) waitResults(t *testing.T, invocationID string) map[string]bes.PushStatus {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		results := s.results(t, invocationID)
		if results.Done && len(results.Pushes) > 0 {
			byTarget := map[string]bes.PushStatus{}
			for _, push := range results.Pushes {
				byTarget[push.Target] = push
			}
			return byTarget
		}
		if time.Now().After(deadline) {
			t.Fatalf("pushes of %s not final within a minute: %+v", invocationID, results)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var imgBinary string

// buildImg builds cmd/img once per test binary.
func buildImg(t *testing.T) string {
	t.Helper()
	if imgBinary != "" {
		return imgBinary
	}
	dir, err := os.MkdirTemp("", "img-e2e-bes-")
	if err != nil {
		t.Fatal(err)
	}
	binary := filepath.Join(dir, "img")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", binary, "./cmd/img")
	cmd.Dir = testpeer.RepoRoot(t)
	if output, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/img: %v\n%s", err, output)
	}
	imgBinary = binary
	return binary
}

func TestMain(m *testing.M) {
	code := m.Run()
	if imgBinary != "" {
		os.RemoveAll(filepath.Dir(imgBinary))
	}
	os.Exit(code)
}

func TestImgBESPushesToRegistry(t *testing.T) {
	b := newBazel(t)
	cache := testpeer.StartBazelRemote(t)
	registry := testpeer.StartRegistry(t)
	server := startImgBES(t, t.TempDir(), "--commit-mode", "per-stream")

	resultsURL := server.httpURL + "/invocation/"
	output, err := b.build(t,
		"--bes_backend=grpc://"+server.grpcAddr,
		"--bes_results_url="+resultsURL,
		"--remote_cache="+cache.Endpoint(),
		"--define=registry="+registry.Addr,
		"--output_groups=+img_push_request",
		"//:app", "//:tools", "//:lazy", "//:notes")
	if err != nil {
		t.Fatalf("bazel build failed: %v", err)
	}
	id := invocationID(t, output, resultsURL)

	// In per-stream mode the build returns after the pushes, so they are final now.
	pushes := server.waitResults(t, id)
	for target, want := range map[string]bes.State{"//:app": bes.StateSucceeded, "//:tools": bes.StateSucceeded, "//:lazy": bes.StateSkipped} {
		if pushes[target].State != want {
			t.Errorf("%s is %s (error %q); expected %s", target, pushes[target].State, pushes[target].Error, want)
		}
	}

	for target, ref := range map[string]string{"//:app": registry.Ref("e2e/app", ":latest"), "//:tools": registry.Ref("e2e/tools", ":v1")} {
		name := strings.TrimPrefix(target, "//:")
		manifest := registry.Crane(t, "manifest", ref)
		if want := strings.TrimSpace(string(b.bin(t, name+"/manifest.json"))); manifest != want {
			t.Errorf("manifest of %s is\n%s\nexpected bazel-bin/%s/manifest.json:\n%s", ref, manifest, name, want)
		}
		digest := registry.Crane(t, "digest", ref)
		if pushes[target].Digest != digest {
			t.Errorf("results API digest of %s is %q; the registry has %s", target, pushes[target].Digest, digest)
		}
		if refs := pushes[target].References; len(refs) != 1 || refs[0] != ref {
			t.Errorf("references of %s are %v; expected [%s]", target, refs, ref)
		}
		registry.Crane(t, "blob", fmt.Sprintf("%s@%s", registry.Ref("e2e/"+name, ""), layerDigest(t, manifest)))
	}

	response, err := http.Get(registry.URL + "/v2/e2e/lazy/tags/list")
	if err != nil {
		t.Fatal(err)
	}
	response.Body.Close()
	if response.StatusCode != http.StatusNotFound {
		t.Errorf("GET /v2/e2e/lazy/tags/list returned %s; expected 404, because img bes must not push the lazy-strategy target", response.Status)
	}
}

func layerDigest(t *testing.T, manifest string) string {
	t.Helper()
	var parsed struct {
		Layers []struct {
			Digest string `json:"digest"`
		} `json:"layers"`
	}
	if err := json.Unmarshal([]byte(manifest), &parsed); err != nil || len(parsed.Layers) != 1 {
		t.Fatalf("manifest %s has no single layer (%v)", manifest, err)
	}
	return parsed.Layers[0].Digest
}

func TestImgBESResumesPushAfterKill(t *testing.T) {
	b := newBazel(t)
	cache := testpeer.StartBazelRemote(t)
	registry := testpeer.StartRegistry(t)
	dataDir := t.TempDir()

	// The first server reads the cache at a port where nothing listens, so its push
	// keeps failing with a transient error until the process is killed.
	deadCache := "grpc://127.0.0.1:" + strconv.Itoa(testpeer.FreePort(t))
	first := startImgBES(t, dataDir, "--cas-endpoint", deadCache, "--max-attempts", "100")
	resultsURL := first.httpURL + "/invocation/"
	output, err := b.build(t,
		"--bes_backend=grpc://"+first.grpcAddr,
		"--bes_results_url="+resultsURL,
		"--remote_cache="+cache.Endpoint(),
		"--define=registry="+registry.Addr,
		"//:app")
	if err != nil {
		t.Fatalf("bazel build failed: %v", err)
	}
	id := invocationID(t, output, resultsURL)

	results := first.results(t, id)
	if len(results.Pushes) != 1 || results.Pushes[0].State.Final() {
		t.Fatalf("pushes before the kill are %+v; expected one unfinished push", results.Pushes)
	}
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	first.cmd.Wait()

	second := startImgBES(t, dataDir)
	pushes := second.waitResults(t, id)
	if pushes["//:app"].State != bes.StateSucceeded {
		t.Fatalf("//:app is %s (error %q) after the restart; expected succeeded", pushes["//:app"].State, pushes["//:app"].Error)
	}
	manifest := registry.Crane(t, "manifest", registry.Ref("e2e/app", ":latest"))
	if want := strings.TrimSpace(string(b.bin(t, "app/manifest.json"))); manifest != want {
		t.Errorf("manifest of e2e/app:latest is\n%s\nexpected\n%s", manifest, want)
	}
}

func TestImgBESPushesRulesImgTarget(t *testing.T) {
	b := newBazelWorkspace(t, "testdata/rules_img")
	// The rules run this img instead of building their own with the host Go.
	b.env = append(b.env, "IMG_TOOL_BINARY="+buildImg(t))
	cache := testpeer.StartBazelRemote(t)
	registry := testpeer.StartRegistry(t)
	server := startImgBES(t, t.TempDir(), "--commit-mode", "per-stream")

	// Without --output_groups, the server finds push.request.json among the default
	// outputs of the image_push target.
	resultsURL := server.httpURL + "/invocation/"
	output, err := b.build(t,
		"--bes_backend=grpc://"+server.grpcAddr,
		"--bes_results_url="+resultsURL,
		"--remote_cache="+cache.Endpoint(),
		"--//:registry="+registry.Addr,
		"//:push", "//:push_lazy")
	if err != nil {
		t.Fatalf("bazel build failed: %v", err)
	}
	id := invocationID(t, output, resultsURL)

	pushes := server.waitResults(t, id)
	if pushes["//:push"].State != bes.StateSucceeded {
		t.Fatalf("//:push is %s (error %q); expected succeeded", pushes["//:push"].State, pushes["//:push"].Error)
	}
	if pushes["//:push_lazy"].State != bes.StateSkipped {
		t.Errorf("//:push_lazy is %s; expected skipped", pushes["//:push_lazy"].State)
	}

	ref := registry.Ref("e2e/rules-img", ":latest")
	digest := registry.Crane(t, "digest", ref)
	if pushes["//:push"].Digest != digest {
		t.Errorf("results API digest of //:push is %q; the registry has %s", pushes["//:push"].Digest, digest)
	}
	layer := layerDigest(t, registry.Crane(t, "manifest", ref))
	registry.Crane(t, "blob", registry.Ref("e2e/rules-img", "@"+layer))
}

func TestImgBESUsesCredentialHelper(t *testing.T) {
	b := newBazel(t)
	cache := testpeer.StartBazelRemote(t, testpeer.WithBazelRemoteHtpasswd("builder", "secret-for-test"))
	registry := testpeer.StartRegistry(t, testpeer.WithHtpasswd("builder", "secret-for-test"))

	// A Bazel credential helper that gives the same basic auth header for any URI, so
	// it serves both the cache and the registry.
	token := base64.StdEncoding.EncodeToString([]byte("builder:secret-for-test"))
	helper := filepath.Join(t.TempDir(), "credential-helper")
	script := fmt.Sprintf("#!/bin/sh\ncat > /dev/null\nprintf '{\"headers\":{\"Authorization\":[\"Basic %s\"]}}'\n", token)
	if err := os.WriteFile(helper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	server := startImgBES(t, t.TempDir(), "--commit-mode", "per-stream", "--credential-helper", helper)

	resultsURL := server.httpURL + "/invocation/"
	output, err := b.build(t,
		"--bes_backend=grpc://"+server.grpcAddr,
		"--bes_results_url="+resultsURL,
		"--remote_cache="+cache.Endpoint(),
		"--remote_header=Authorization=Basic "+token,
		"--define=registry="+registry.Addr,
		"//:app")
	if err != nil {
		t.Fatalf("bazel build failed: %v", err)
	}
	id := invocationID(t, output, resultsURL)

	pushes := server.waitResults(t, id)
	if pushes["//:app"].State != bes.StateSucceeded {
		t.Fatalf("//:app is %s (error %q); expected succeeded with the helper's credentials", pushes["//:app"].State, pushes["//:app"].Error)
	}
	registry.Crane(t, "digest", registry.Ref("e2e/app", ":latest"))
}

func TestImgBESRestartMidBuild(t *testing.T) {
	b := newBazel(t)
	cache := testpeer.StartBazelRemote(t)
	registry := testpeer.StartRegistry(t)
	dataDir := t.TempDir()
	grpcPort, httpPort := testpeer.FreePort(t), testpeer.FreePort(t)
	first := startImgBESOnPorts(t, dataDir, grpcPort, httpPort, "--commit-mode", "per-stream")

	// //:slow sleeps 6 s in its image action. Without --output_groups, only the target
	// kind from the TargetConfigured event, sent before the restart, marks it as a
	// push target.
	resultsURL := first.httpURL + "/invocation/"
	type buildResult struct {
		output string
		err    error
	}
	built := make(chan buildResult, 1)
	go func() {
		output, err := b.build(t,
			"--bes_backend=grpc://"+first.grpcAddr,
			"--bes_results_url="+resultsURL,
			"--remote_cache="+cache.Endpoint(),
			"--define=registry="+registry.Addr,
			"//:slow")
		built <- buildResult{output, err}
	}()

	waitForLog(t, first.log, `msg="push target configured"`, time.Minute)
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	first.cmd.Wait()
	second := startImgBESOnPorts(t, dataDir, grpcPort, httpPort, "--commit-mode", "per-stream")

	result := <-built
	if result.err != nil {
		t.Fatalf("bazel build failed after img bes restarted: %v", result.err)
	}
	id := invocationID(t, result.output, resultsURL)

	pushes := second.waitResults(t, id)
	waitForLog(t, second.log, `msg="resumed event state of an invocation from before a restart" invocation_id=`+id, time.Second)
	if pushes["//:slow"].State != bes.StateSucceeded {
		t.Fatalf("//:slow is %s (error %q); expected succeeded", pushes["//:slow"].State, pushes["//:slow"].Error)
	}
	manifest := registry.Crane(t, "manifest", registry.Ref("e2e/slow", ":latest"))
	if want := strings.TrimSpace(string(b.bin(t, "slow/manifest.json"))); manifest != want {
		t.Errorf("manifest of e2e/slow:latest is\n%s\nexpected\n%s", manifest, want)
	}
}

// waitForLog waits until the file at path contains text.
func waitForLog(t *testing.T, path, text string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		data, err := os.ReadFile(path)
		if err == nil && strings.Contains(string(data), text) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not contain %q after %v:\n%s", path, text, timeout, data)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestImgBESFailsBuildOnRejectedPush(t *testing.T) {
	b := newBazel(t)
	cache := testpeer.StartBazelRemote(t)
	// The registry requires credentials that img bes does not have, so it rejects the
	// push with 401, which no retry can fix.
	registry := testpeer.StartRegistry(t, testpeer.WithHtpasswd("pusher", "secret-for-test"))
	server := startImgBES(t, t.TempDir(), "--commit-mode", "per-stream")

	resultsURL := server.httpURL + "/invocation/"
	output, err := b.build(t,
		"--bes_backend=grpc://"+server.grpcAddr,
		"--bes_results_url="+resultsURL,
		"--remote_cache="+cache.Endpoint(),
		"--define=registry="+registry.Addr,
		"//:app")
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 45 {
		t.Fatalf("bazel build returned %v; expected exit code 45 for the rejected push", err)
	}
	if !strings.Contains(output, "//:app: ") || !strings.Contains(output, "401") {
		t.Errorf("bazel output does not show the push error of //:app with the registry's 401")
	}

	id := invocationID(t, output, resultsURL)
	pushes := server.waitResults(t, id)
	if pushes["//:app"].State != bes.StateFailed {
		t.Errorf("//:app is %s; expected failed", pushes["//:app"].State)
	}
	if pushes["//:app"].Attempts != 1 {
		t.Errorf("//:app made %d attempts; expected 1, because a 401 is not retried", pushes["//:app"].Attempts)
	}
}
