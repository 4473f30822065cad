package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rulesimg/img/internal/testpeer"
	"github.com/rulesimg/img/push"
)

// imgBinary is built once per test run, so the tests run img as a user does.
var imgBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "img-cmd-test-")
	if err != nil {
		panic(err)
	}
	imgBinary = filepath.Join(dir, "img")
	build := exec.Command("go", "build", "-o", imgBinary, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		panic("building img: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func runImg(t *testing.T, env []string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(imgBinary, args...)
	cmd.Env = append(append(os.Environ(), "DOCKER_CONFIG="+t.TempDir()), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

func TestPushCommandPrintsReferences(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real registry")
	}
	reg := testpeer.StartRegistry(t)
	info := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{1 << 10, 1 << 20}, MultiPlatform: true})
	refsFile := filepath.Join(t.TempDir(), "refs.json")

	stdout, stderr, err := runImg(t, nil, "push", info.Dir, reg.Ref("cli/app", ":v1"), "--tag", "latest", "--refs-file", refsFile)
	if err != nil {
		t.Fatalf("img push: %v\n%s", err, stderr)
	}
	want := reg.Ref("cli/app", "@"+info.RootDigest().String()) + "\n" + reg.Ref("cli/app", ":v1") + "\n" + reg.Ref("cli/app", ":latest") + "\n"
	if stdout != want {
		t.Errorf("stdout =\n%s\nwant\n%s", stdout, want)
	}
	if !strings.Contains(stderr, "pushed sha256:") {
		t.Errorf("stderr has no per-blob line:\n%s", stderr)
	}

	var result push.Result
	body, err := os.ReadFile(refsFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(body, &result); err != nil {
		t.Fatalf("refs file is not JSON: %v\n%s", err, body)
	}
	if result.Digest != info.RootDigest() || len(result.Destinations) != 1 || len(result.Destinations[0].Tags) != 2 {
		t.Errorf("refs file = %s", body)
	}
	if got := testpeer.Crane(t, "digest", reg.Ref("cli/app", ":latest")); got != info.RootDigest().String() {
		t.Errorf("crane digest = %s, want %s", got, info.RootDigest())
	}

	stdout, stderr, err = runImg(t, nil, "push", "--quiet", info.Dir, reg.Ref("cli/quiet", ":v1"))
	if err != nil {
		t.Fatalf("quiet re-push: %v\n%s", err, stderr)
	}
	if stderr != "" {
		t.Errorf("--quiet printed to stderr:\n%s", stderr)
	}
	if !strings.HasPrefix(stdout, reg.Ref("cli/quiet", "@")) {
		t.Errorf("--quiet stdout = %q, want the digest reference", stdout)
	}
}

func TestPushCommandBadInput(t *testing.T) {
	layout := testpeer.WriteLayout(t, t.TempDir(), testpeer.LayoutSpec{Layers: []int64{16}})
	badRequest := filepath.Join(t.TempDir(), "push.json")
	if err := os.WriteFile(badRequest, []byte(`{"version": 1, "strategy": "eager", "extra": true}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"nothing to push", []string{"push"}, "nothing to push"},
		{"missing source", []string{"push", "/does/not/exist", "localhost:5000/app"}, "/does/not/exist"},
		{"no destination", []string{"push", layout.Dir}, "no destination"},
		{"bad destination", []string{"push", layout.Dir, "app:v1"}, `invalid destination "app:v1"`},
		{"bad tag", []string{"push", layout.Dir, "localhost:5000/app", "--tag", "-x"}, `invalid tag "-x"`},
		{"bad strategy", []string{"push", layout.Dir, "localhost:5000/app", "--strategy", "fast"}, `unknown strategy "fast"`},
		{"unknown request field", []string{"push", "--request", badRequest, "localhost:5000/app"}, `unknown field "extra"`},
		{"lazy without cache", []string{"push", layout.Dir, "localhost:5000/app", "--strategy", "lazy", "--remote-cache", ""}, "IMG_REAPI_ENDPOINT"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, err := runImg(t, []string{"IMG_REAPI_ENDPOINT="}, tc.args...)
			if err == nil {
				t.Fatalf("img %v succeeded", tc.args)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr does not contain %q:\n%s", tc.want, stderr)
			}
		})
	}
}

// TestBESCommandBadFlags checks that img bes rejects bad flag values before it opens its
// ports, naming the value and what to use.
func TestBESCommandBadFlags(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no workers", []string{"--jobs", "0"}, "invalid --jobs 0; use 1 or more"},
		{"no attempts", []string{"--max-attempts", "0"}, "invalid --max-attempts 0; use 1"},
		{"negative sync interval", []string{"--job-sync-interval", "-1s"}, "invalid --job-sync-interval -1s"},
		{"cache without scheme", []string{"--cas-endpoint", "127.0.0.1:9092"}, "use grpcs://127.0.0.1:9092 for TLS"},
		{"cache over http", []string{"--cas-endpoint", "http://127.0.0.1:9092"}, `unsupported scheme "http"`},
		{"bad commit mode", []string{"--commit-mode", "later"}, `invalid commit mode "later"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"bes", "--address", "127.0.0.1", "--port", "0", "--http-port", "0", "--data-dir", t.TempDir()}, tc.args...)
			// A value that slips through starts the server, which would run until killed.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, imgBinary, args...)
			cmd.Env = append(os.Environ(), "IMG_REAPI_ENDPOINT=")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Run(); err == nil || ctx.Err() != nil {
				t.Fatalf("img %v was not rejected (error %v, context %v)", args, err, ctx.Err())
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr does not contain %q:\n%s", tc.want, stderr.String())
			}
		})
	}
}
