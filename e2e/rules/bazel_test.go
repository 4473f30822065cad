// Package rules tests the Bazel rules of rules_img end to end: a testdata workspace loads
// rules_img from this repository with local_repository, and Bazel 4 (bazel-4) builds its
// images and runs its push targets against real registries and caches.
package rules

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/assemble"
	"github.com/rulesimg/img/image"
	"github.com/rulesimg/img/internal/testpeer"
)

// bazelBinary is Bazel 4.2.3 from Debian's bazel-bootstrap package, the newest Bazel
// installable on the development machines.
const bazelBinary = "bazel-4"

// bazelTimeout bounds one Bazel command, including the server start.
const bazelTimeout = 5 * time.Minute

// workspace is a copy of testdata with its own Bazel output root.
type workspace struct {
	dir        string
	outputRoot string
	env        []string
}

var (
	imgOnce   sync.Once
	imgPath   string
	imgErr    error
	imgOutput []byte
)

// prebuiltImg builds cmd/img once per test binary. Most tests hand it to the rules
// through IMG_TOOL_BINARY so that each fresh output root skips a `go build`.
func prebuiltImg(t *testing.T) string {
	t.Helper()

	imgOnce.Do(func() {
		dir, err := os.MkdirTemp("", "rules-img-e2e-")
		if err != nil {
			imgErr = err
			return
		}
		imgPath = filepath.Join(dir, "img")
		cmd := exec.Command("go", "build", "-o", imgPath, "./cmd/img")
		cmd.Dir = testpeer.RepoRoot(t)
		imgOutput, imgErr = cmd.CombinedOutput()
	})
	if imgErr != nil {
		t.Fatalf("go build ./cmd/img: %v\n%s", imgErr, imgOutput)
	}
	return imgPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if imgPath != "" {
		os.RemoveAll(filepath.Dir(imgPath))
	}
	os.Exit(code)
}

// newWorkspace copies testdata into a temporary folder, points its local_repository at
// this repository and writes the base OCI layout. With prebuilt, the rules use the img
// binary built by the test; without, the img_tool_repository rule builds img itself.
func newWorkspace(t *testing.T, prebuilt bool) *workspace {
	t.Helper()

	ws := newWorkspaceFrom(t, filepath.Join("e2e", "rules", "testdata"), `path = "__RULES_IMG__"`)
	if !prebuilt {
		// GOPROXY=off proves that the repository rule builds img from the Go module
		// cache alone, as it must on a machine without network.
		ws.env = append(ws.env, "IMG_TOOL_BINARY=", "GOPROXY=off")
	}
	testpeer.WriteLayout(t, filepath.Join(ws.dir, "base"), testpeer.LayoutSpec{
		Layers:        []int64{4096},
		Gzip:          true,
		MultiPlatform: true,
		Seed:          7,
	})
	return ws
}

// newWorkspaceFrom copies the workspace at source (relative to the repository root) and
// replaces rulesImgPath, its local_repository path line for rules_img, with this
// checkout. The copy uses the img binary built by the test.
func newWorkspaceFrom(t *testing.T, source, rulesImgPath string) *workspace {
	t.Helper()
	if testing.Short() {
		t.Skip("starts Bazel; skipped with -short")
	}
	if _, err := exec.LookPath(bazelBinary); err != nil {
		t.Skipf("%s is not installed (apt-get install bazel-bootstrap provides it): %v", bazelBinary, err)
	}

	root := testpeer.RepoRoot(t)
	temp := t.TempDir()
	ws := &workspace{
		dir:        filepath.Join(temp, "ws"),
		outputRoot: filepath.Join(temp, "bazel-root"),
		env:        append(os.Environ(), "IMG_TOOL_BINARY="+prebuiltImg(t)),
	}
	copyTree(t, filepath.Join(root, source), ws.dir)

	workspaceFile := filepath.Join(ws.dir, "WORKSPACE")
	body, err := os.ReadFile(workspaceFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(body, []byte(rulesImgPath)) {
		t.Fatalf("%s has no line %s to point at this checkout", workspaceFile, rulesImgPath)
	}
	body = bytes.ReplaceAll(body, []byte(rulesImgPath), []byte(`path = "`+root+`"`))
	if err := os.WriteFile(workspaceFile, body, 0o644); err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bazelBinary, "--output_user_root="+ws.outputRoot, "shutdown")
		cmd.Dir = ws.dir
		cmd.Env = ws.env
		cmd.Run()
		// Bazel writes its install base read-only; make it removable for t.TempDir.
		filepath.WalkDir(ws.outputRoot, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				os.Chmod(path, 0o755)
			}
			return nil
		})
	})
	return ws
}

// run runs one Bazel command in the workspace and returns stdout and stderr.
func (ws *workspace) run(t *testing.T, args ...string) (string, string, error) {
	t.Helper()

	ctx, cancel := context.WithTimeout(context.Background(), bazelTimeout)
	defer cancel()
	startup := []string{"--output_user_root=" + ws.outputRoot, "--max_idle_secs=300"}
	cmd := exec.CommandContext(ctx, bazelBinary, append(startup, args...)...)
	cmd.Dir = ws.dir
	cmd.Env = ws.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// bazel runs a Bazel command that must succeed and returns its stdout.
func (ws *workspace) bazel(t *testing.T, args ...string) string {
	t.Helper()

	stdout, stderr, err := ws.run(t, args...)
	if err != nil {
		t.Fatalf("bazel %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout, stderr)
	}
	return stdout
}

// info returns one `bazel info` value.
func (ws *workspace) info(t *testing.T, key string) string {
	t.Helper()

	return strings.TrimSpace(ws.bazel(t, "info", key))
}

// graph reads a graph file from bazel-bin. Its file paths are relative to the graph
// file, so reading it by its absolute path gives absolute paths.
func (ws *workspace) graph(t *testing.T, name string) *image.Request {
	t.Helper()

	graph, err := assemble.ReadGraph(filepath.Join(ws.info(t, "bazel-bin"), name))
	if err != nil {
		t.Fatal(err)
	}
	return graph
}

// layerDigest returns the digest that a layer's metadata in bazel-bin records.
func (ws *workspace) layerDigest(t *testing.T, name string) digest.Digest {
	t.Helper()

	meta, err := assemble.ReadLayerMetadata(filepath.Join(ws.info(t, "bazel-bin"), name+".layer.json"))
	if err != nil {
		t.Fatal(err)
	}
	return meta.Descriptor.Digest
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()

	err := filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		target := filepath.Join(to, rel)
		// bazel-* links left by a build run in the source workspace are Bazel's output
		// tree, not workspace files.
		if strings.HasPrefix(d.Name(), "bazel-") && d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		src, err := os.Open(path)
		if err != nil {
			return err
		}
		defer src.Close()
		dst, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, info.Mode().Perm())
		if err != nil {
			return err
		}
		if _, err := io.Copy(dst, src); err != nil {
			dst.Close()
			return err
		}
		return dst.Close()
	})
	if err != nil {
		t.Fatalf("copy testdata: %v", err)
	}
}
