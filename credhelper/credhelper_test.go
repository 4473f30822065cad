package credhelper

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// writeHelper writes an executable shell script named name into dir and returns its path.
// Each script appends a line to dir/count per run, so tests can count helper runs.
func writeHelper(t *testing.T, dir, name, body string) string {
	t.Helper()

	path := filepath.Join(dir, name)
	script := "#!/bin/sh\necho run >> '" + filepath.Join(dir, "count") + "'\n" + body + "\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatalf("write helper script: %v", err)
	}
	return path
}

// runCount returns how many times the helpers in dir ran.
func runCount(t *testing.T, dir string) int {
	t.Helper()

	data, err := os.ReadFile(filepath.Join(dir, "count"))
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatalf("read run count: %v", err)
	}
	return strings.Count(string(data), "run\n")
}

// fakeClock is a settable clock for expiry tests.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

const staticResponse = `printf '{"headers": {"authorization": ["Bearer abc"], "X-Extra": ["1", "2"]}, "unknown": true}'`

func TestGetReturnsHeadersAndSendsRequest(t *testing.T) {
	dir := t.TempDir()
	helper := writeHelper(t, dir, "helper", `cat > '`+filepath.Join(dir, "request")+`'
echo "$@" > '`+filepath.Join(dir, "args")+`'
`+staticResponse)

	headers, err := New(helper).Get(context.Background(), "https://cache.example:9092/build.bazel.remote.execution.v2.Capabilities")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}

	if got := headers.Get("Authorization"); got != "Bearer abc" {
		t.Errorf("Authorization = %q, want %q", got, "Bearer abc")
	}
	if got := headers.Values("X-Extra"); len(got) != 2 || got[0] != "1" || got[1] != "2" {
		t.Errorf("X-Extra = %q, want [1 2]", got)
	}

	request, err := os.ReadFile(filepath.Join(dir, "request"))
	if err != nil {
		t.Fatalf("read request: %v", err)
	}
	if want := `{"uri":"https://cache.example:9092/build.bazel.remote.execution.v2.Capabilities"}`; string(request) != want {
		t.Errorf("request = %s, want %s", request, want)
	}
	args, err := os.ReadFile(filepath.Join(dir, "args"))
	if err != nil {
		t.Fatalf("read args: %v", err)
	}
	if strings.TrimSpace(string(args)) != "get" {
		t.Errorf("helper arguments = %q, want %q", args, "get")
	}
}

func TestGetCachesPerURI(t *testing.T) {
	dir := t.TempDir()
	h := New(writeHelper(t, dir, "helper", staticResponse))
	ctx := context.Background()

	for range 3 {
		if _, err := h.Get(ctx, "https://a.example/v2/"); err != nil {
			t.Fatalf("Get a: %v", err)
		}
	}
	if got := runCount(t, dir); got != 1 {
		t.Errorf("runs after three Gets of one URI = %d, want 1", got)
	}

	if _, err := h.Get(ctx, "https://a.example/other"); err != nil {
		t.Fatalf("Get other path: %v", err)
	}
	if got := runCount(t, dir); got != 2 {
		t.Errorf("runs after a Get of another path = %d, want 2", got)
	}
}

func TestGetReturnsCopies(t *testing.T) {
	dir := t.TempDir()
	h := New(writeHelper(t, dir, "helper", staticResponse))

	first, err := h.Get(context.Background(), "https://a.example/")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	first.Set("Authorization", "changed by caller")

	second, err := h.Get(context.Background(), "https://a.example/")
	if err != nil {
		t.Fatalf("second Get: %v", err)
	}
	if got := second.Get("Authorization"); got != "Bearer abc" {
		t.Errorf("Authorization after a caller changed its copy = %q, want %q", got, "Bearer abc")
	}
}

func TestGetHonorsExpires(t *testing.T) {
	dir := t.TempDir()
	helper := writeHelper(t, dir, "helper", `printf '{"headers": {"Authorization": ["Bearer abc"]}, "expires": "2030-01-01T12:00:00Z"}'`)
	clock := &fakeClock{now: time.Date(2030, 1, 1, 11, 0, 0, 0, time.UTC)}
	h := New(helper)
	h.now = clock.Now
	ctx := context.Background()

	if _, err := h.Get(ctx, "https://a.example/"); err != nil {
		t.Fatalf("Get: %v", err)
	}
	clock.Advance(59 * time.Minute)
	if _, err := h.Get(ctx, "https://a.example/"); err != nil {
		t.Fatalf("Get before expiry: %v", err)
	}
	if got := runCount(t, dir); got != 1 {
		t.Errorf("runs before expiry = %d, want 1", got)
	}

	clock.Advance(time.Minute)
	if _, err := h.Get(ctx, "https://a.example/"); err != nil {
		t.Fatalf("Get at expiry: %v", err)
	}
	if got := runCount(t, dir); got != 2 {
		t.Errorf("runs at expiry = %d, want 2", got)
	}
}

func TestGetDoesNotCacheExpiredResponse(t *testing.T) {
	dir := t.TempDir()
	helper := writeHelper(t, dir, "helper", `printf '{"headers": {"Authorization": ["Bearer abc"]}, "expires": "2020-01-01T00:00:00+01:00"}'`)
	h := New(helper)
	ctx := context.Background()

	for range 2 {
		headers, err := h.Get(ctx, "https://a.example/")
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		if got := headers.Get("Authorization"); got != "Bearer abc" {
			t.Errorf("Authorization = %q, want %q", got, "Bearer abc")
		}
	}
	if got := runCount(t, dir); got != 2 {
		t.Errorf("runs for an already expired response = %d, want 2", got)
	}
}

func TestGetCacheDurationWithoutExpires(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	h := New(writeHelper(t, dir, "helper", staticResponse))
	h.now = clock.Now
	ctx := context.Background()

	if _, err := h.Get(ctx, "https://a.example/"); err != nil {
		t.Fatalf("Get: %v", err)
	}
	clock.Advance(DefaultCacheDuration - time.Second)
	if _, err := h.Get(ctx, "https://a.example/"); err != nil {
		t.Fatalf("Get within the cache duration: %v", err)
	}
	if got := runCount(t, dir); got != 1 {
		t.Errorf("runs within the cache duration = %d, want 1", got)
	}

	clock.Advance(time.Second)
	if _, err := h.Get(ctx, "https://a.example/"); err != nil {
		t.Fatalf("Get after the cache duration: %v", err)
	}
	if got := runCount(t, dir); got != 2 {
		t.Errorf("runs after the cache duration = %d, want 2", got)
	}
}

func TestGetZeroCacheDurationRunsEveryTime(t *testing.T) {
	dir := t.TempDir()
	h := New(writeHelper(t, dir, "helper", staticResponse), WithCacheDuration(0))

	for range 3 {
		if _, err := h.Get(context.Background(), "https://a.example/"); err != nil {
			t.Fatalf("Get: %v", err)
		}
	}
	if got := runCount(t, dir); got != 3 {
		t.Errorf("runs with cache duration 0 = %d, want 3", got)
	}
}

func TestGetTimeoutKillsHelper(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a helper that must be killed")
	}
	dir := t.TempDir()
	helper := writeHelper(t, dir, "helper", "sleep 30\n"+staticResponse)
	h := New(helper, WithTimeout(300*time.Millisecond))

	start := time.Now()
	_, err := h.Get(context.Background(), "https://a.example/")
	elapsed := time.Since(start)

	if err == nil {
		t.Fatal("Get of a hanging helper succeeded, want a timeout error")
	}
	if !strings.Contains(err.Error(), "timed out after 300ms") {
		t.Errorf("error %q does not say it timed out after 300ms", err)
	}
	if !strings.Contains(err.Error(), helper) {
		t.Errorf("error %q does not name the helper %s", err, helper)
	}
	if elapsed > 5*time.Second {
		t.Errorf("Get returned after %s, want soon after the 300ms timeout", elapsed)
	}
}

func TestGetFailureReportsStatusAndStderr(t *testing.T) {
	dir := t.TempDir()
	helper := writeHelper(t, dir, "helper", `printf '{"headers": {"Authorization": ["Bearer s3cret"]}}'
echo "  login expired, run 'auth login'  " >&2
exit 3`)

	_, err := New(helper).Get(context.Background(), "https://a.example/")
	if err == nil {
		t.Fatal("Get of a failing helper succeeded")
	}

	msg := err.Error()
	for _, want := range []string{helper, "exit status 3", "stderr: login expired, run 'auth login'", "https://a.example/"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
	if strings.Contains(msg, "s3cret") {
		t.Errorf("error %q contains the helper's credentials", msg)
	}
}

func TestGetInvalidResponse(t *testing.T) {
	tests := []struct {
		name string
		body string
		want string
	}{
		{"not JSON", `printf 'Authorization: Bearer s3cret'`, "invalid JSON"},
		{"headers not a list", `printf '{"headers": {"Authorization": "Bearer s3cret"}}'`, "wrong type"},
		{"bad expires", `printf '{"headers": {"Authorization": ["Bearer s3cret"]}, "expires": "tomorrow"}'`, "not an RFC 3339 time"},
		{"empty output", `true`, "printed no response"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			helper := writeHelper(t, t.TempDir(), "helper", tt.body)

			_, err := New(helper).Get(context.Background(), "https://a.example/")
			if err == nil {
				t.Fatal("Get succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error %q contains the helper's output", err)
			}
		})
	}
}

func TestGetFailureIsNotCached(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "failed-once")
	helper := writeHelper(t, dir, "helper", `if [ ! -e '`+marker+`' ]; then touch '`+marker+`'; echo "temporary failure" >&2; exit 1; fi
`+staticResponse)
	h := New(helper)

	if _, err := h.Get(context.Background(), "https://a.example/"); err == nil {
		t.Fatal("first Get succeeded, want the helper's failure")
	}
	headers, err := h.Get(context.Background(), "https://a.example/")
	if err != nil {
		t.Fatalf("second Get: %v", err)
	}
	if got := headers.Get("Authorization"); got != "Bearer abc" {
		t.Errorf("Authorization = %q, want %q", got, "Bearer abc")
	}
}

func TestGetMissingHelper(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("PATH", dir)

	tests := []struct {
		name string
		path string
		want string
	}{
		{"absolute path", filepath.Join(dir, "no-such-helper"), "no such file or directory"},
		{"name in PATH", "no-such-helper", "not found in PATH"},
		{"not executable", writeNonExecutable(t, dir), "not an executable file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.path).Get(context.Background(), "https://a.example/")
			if err == nil {
				t.Fatal("Get succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.path) {
				t.Errorf("error %q does not name the helper %s", err, tt.path)
			}
		})
	}
}

func writeNonExecutable(t *testing.T, dir string) string {
	t.Helper()

	path := filepath.Join(dir, "plain-file")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatalf("write file: %v", err)
	}
	return path
}

func TestGetResolvesNameInPATH(t *testing.T) {
	dir := t.TempDir()
	writeHelper(t, dir, "img-test-credential-helper", staticResponse)
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))

	headers, err := New("img-test-credential-helper").Get(context.Background(), "https://a.example/")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if got := headers.Get("Authorization"); got != "Bearer abc" {
		t.Errorf("Authorization = %q, want %q", got, "Bearer abc")
	}
}

func TestGetConcurrentCallersShareOneRun(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a slow helper")
	}
	dir := t.TempDir()
	h := New(writeHelper(t, dir, "helper", "sleep 0.5\n"+staticResponse))

	var wg sync.WaitGroup
	errs := make([]error, 10)
	for i := range errs {
		wg.Go(func() {
			headers, err := h.Get(context.Background(), "https://a.example/")
			if err == nil && headers.Get("Authorization") != "Bearer abc" {
				err = errors.New("wrong Authorization header " + headers.Get("Authorization"))
			}
			errs[i] = err
		})
	}
	wg.Wait()

	for i, err := range errs {
		if err != nil {
			t.Errorf("caller %d: %v", i, err)
		}
	}
	if got := runCount(t, dir); got != 1 {
		t.Errorf("runs for 10 concurrent callers = %d, want 1", got)
	}
}

func TestGetWaiterRespectsOwnContext(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a slow helper")
	}
	dir := t.TempDir()
	h := New(writeHelper(t, dir, "helper", "sleep 1\n"+staticResponse))

	patient := make(chan error, 1)
	go func() {
		_, err := h.Get(context.Background(), "https://a.example/")
		patient <- err
	}()

	// The impatient caller may start the run or join it. Either way its own deadline ends
	// its wait, and the run goes on for the patient caller.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := h.Get(ctx, "https://a.example/")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("impatient Get error = %v, want context.DeadlineExceeded", err)
	}
	if elapsed := time.Since(start); elapsed > 700*time.Millisecond {
		t.Errorf("impatient Get returned after %s, want about 100ms", elapsed)
	}

	if err := <-patient; err != nil {
		t.Errorf("patient Get: %v", err)
	}
	if got := runCount(t, dir); got != 1 {
		t.Errorf("runs = %d, want 1", got)
	}
}
