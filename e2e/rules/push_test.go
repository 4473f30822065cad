package rules

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rulesimg/img/image"
	"github.com/rulesimg/img/internal/testpeer"
)

// TestPushEager runs the push target of the two-platform index and checks that the
// registry stores the built index digest under every tag, in the order given.
func TestPushEager(t *testing.T) {
	ws := newWorkspace(t, true)
	registry := testpeer.StartRegistry(t)
	registryFlag := "--//:registry=" + registry.Addr

	ws.bazel(t, "run", registryFlag, "//:push")
	built := ws.graph(t, "index.image.json").Image.Root.Digest

	for _, tag := range []string{"dev-latest", "v1"} {
		got := registry.Crane(t, "digest", registry.Ref("e2e/app", ":"+tag))
		if got != built.String() {
			t.Errorf("tag %s has digest %s, expected the built index %s", tag, got, built)
		}
	}
	manifest := registry.Crane(t, "manifest", registry.Ref("e2e/app", ":v1"))
	if !strings.Contains(manifest, "linux") || !strings.Contains(manifest, "arm64") {
		t.Errorf("pushed index lacks its platforms:\n%s", manifest)
	}

	t.Run("layers are local", func(t *testing.T) {
		// The lazy and cas_registry tests expect layerFiles to find nothing; here it
		// must find the eager launcher's copies.
		if found := layerFiles(t, ws.info(t, "bazel-bin")); len(found) == 0 {
			t.Error("found no layer file in the output tree after an eager push")
		}
	})

	t.Run("request lists every blob", func(t *testing.T) {
		req := readRequest(t, ws, "push.request.json")
		blobs, err := req.Image.Blobs()
		if err != nil {
			t.Fatal(err)
		}
		for _, blob := range blobs {
			if _, ok := req.Files[blob.Digest]; !ok {
				t.Errorf("eager request has no file for %s %s", blob.MediaType, blob.Digest)
			}
		}
		if got := req.Destinations[0].Tags; strings.Join(got, ",") != "dev-latest,v1" {
			t.Errorf("request tags are %q, expected [dev-latest v1]", got)
		}
	})

	t.Run("build setting in tag", func(t *testing.T) {
		ws.bazel(t, "run", registryFlag, "--//:env_name=staging", "//:push")
		got := registry.Crane(t, "digest", registry.Ref("e2e/app", ":staging-latest"))
		if got != built.String() {
			t.Errorf("tag staging-latest has digest %s, expected %s", got, built)
		}
	})

	t.Run("tag override after --", func(t *testing.T) {
		ws.bazel(t, "run", registryFlag, "//:push", "--", "--tag", "override", "--repository", "e2e/other")
		got := registry.Crane(t, "digest", registry.Ref("e2e/other", ":override"))
		if got != built.String() {
			t.Errorf("tag e2e/other:override has digest %s, expected %s", got, built)
		}
		tags := registry.Crane(t, "ls", registry.Ref("e2e/other", ""))
		if tags != "override" {
			t.Errorf("e2e/other has tags %q, expected only override", tags)
		}
	})

	t.Run("relative refs file", func(t *testing.T) {
		ws.bazel(t, "run", registryFlag, "//:push", "--", "--refs-file", "refs.json")
		body, err := os.ReadFile(filepath.Join(ws.dir, "refs.json"))
		if err != nil {
			t.Fatalf("--refs-file refs.json is not in the directory bazel run was called from: %v", err)
		}
		if !strings.Contains(string(body), built.String()) {
			t.Errorf("refs file lacks the pushed digest %s:\n%s", built, body)
		}
	})

	t.Run("launcher run directly", func(t *testing.T) {
		launcher := filepath.Join(ws.info(t, "bazel-bin"), "push")
		cmd := exec.Command(launcher, "--tag", "direct")
		cmd.Dir = t.TempDir()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s --tag direct: %v\n%s", launcher, err, out)
		}
		got := registry.Crane(t, "digest", registry.Ref("e2e/app", ":direct"))
		if got != built.String() {
			t.Errorf("tag direct has digest %s, expected %s", got, built)
		}
	})

	t.Run("single manifest", func(t *testing.T) {
		ws.bazel(t, "run", registryFlag, "//:push_scratch")
		built := ws.graph(t, "scratch.image.json").Image.Root.Digest
		got := registry.Crane(t, "digest", registry.Ref("e2e/scratch", ":latest"))
		if got != built.String() {
			t.Errorf("e2e/scratch:latest has digest %s, expected %s", got, built)
		}
	})
}

// TestPushStamped builds with --stamp and a workspace status command and expects tags
// made from its keys; without --stamp the same target fails to build.
func TestPushStamped(t *testing.T) {
	ws := newWorkspace(t, true)
	registry := testpeer.StartRegistry(t)
	registryFlag := "--//:registry=" + registry.Addr
	status := "--workspace_status_command=" + filepath.Join(ws.dir, "status.sh")

	_, stderr, err := ws.run(t, "build", registryFlag, status, "//:push_stamped")
	if err == nil {
		t.Fatal("push_stamped built without --stamp, expected a template error for STABLE_RELEASE")
	}
	if !strings.Contains(stderr, "STABLE_RELEASE") {
		t.Errorf("build error does not name STABLE_RELEASE:\n%s", stderr)
	}

	ws.bazel(t, "run", registryFlag, status, "--stamp", "//:push_stamped")
	built := ws.graph(t, "derived.image.json").Image.Root.Digest
	for _, tag := range []string{"v1.2.3", "build-42"} {
		got := registry.Crane(t, "digest", registry.Ref("e2e/stamped", ":"+tag))
		if got != built.String() {
			t.Errorf("tag %s has digest %s, expected %s", tag, got, built)
		}
	}
}

// TestPushBuildErrors checks that a template naming an unknown key and an image that
// fails to build both fail the build, and that nothing reaches the registry.
func TestPushBuildErrors(t *testing.T) {
	ws := newWorkspace(t, true)
	registry := testpeer.StartRegistry(t)
	registryFlag := "--//:registry=" + registry.Addr

	t.Run("missing template key", func(t *testing.T) {
		_, stderr, err := ws.run(t, "build", "//:push_missing_key")
		if err == nil {
			t.Fatal("push_missing_key built, expected a template error")
		}
		if !strings.Contains(stderr, "NO_SUCH_KEY") {
			t.Errorf("build error does not name NO_SUCH_KEY:\n%s", stderr)
		}
		if strings.Contains(stderr, "<no value>") {
			t.Errorf("build error mentions <no value>:\n%s", stderr)
		}
	})

	t.Run("image fails to build", func(t *testing.T) {
		_, stderr, err := ws.run(t, "run", registryFlag, "//:push_broken")
		if err == nil {
			t.Fatal("bazel run //:push_broken succeeded, expected the genrule to fail")
		}
		if !strings.Contains(stderr, "this genrule fails on purpose") {
			t.Errorf("bazel output lacks the genrule's message:\n%s", stderr)
		}
		catalog := registry.Crane(t, "catalog", registry.Addr)
		if strings.Contains(catalog, "e2e/broken") {
			t.Errorf("registry lists e2e/broken after a failed build:\n%s", catalog)
		}
	})

	t.Run("bad strategy value", func(t *testing.T) {
		_, stderr, err := ws.run(t, "build", "--@rules_img//img/settings:push_strategy=fast", "//:push")
		if err == nil {
			t.Fatal("build with push_strategy=fast succeeded, expected an error")
		}
		if !strings.Contains(stderr, "expected one of eager, lazy, cas_registry, bes") {
			t.Errorf("build error does not list the strategies:\n%s", stderr)
		}
	})
}

// readRequest decodes a push request from bazel-bin. Its file paths resolve in the
// push target's runfiles tree, not in bazel-bin.
func readRequest(t *testing.T, ws *workspace, name string) *image.Request {
	t.Helper()

	req, err := image.ReadRequestFile(filepath.Join(ws.info(t, "bazel-bin"), name))
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestExampleWorkspace builds examples/basic, the workspace the docs tell users to
// copy, and runs both of its push targets.
func TestExampleWorkspace(t *testing.T) {
	ws := newWorkspaceFrom(t, filepath.Join("examples", "basic"), `path = "../.."`)
	registry := testpeer.StartRegistry(t)
	registryFlag := "--//:registry=" + registry.Addr

	ws.bazel(t, "build", "//...")
	ws.bazel(t, "run", registryFlag, "//:push")
	ws.bazel(t, "run", registryFlag, "--config=release", "//:push_release")

	built := ws.graph(t, "image.image.json").Image.Root.Digest
	for _, tag := range []string{"latest", "0.1.0"} {
		got := registry.Crane(t, "digest", registry.Ref("examples/hello", ":"+tag))
		if got != built.String() {
			t.Errorf("examples/hello:%s has digest %s, expected %s", tag, got, built)
		}
	}
}
