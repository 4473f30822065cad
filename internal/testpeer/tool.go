package testpeer

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// toolPackages maps each pinned tool's binary name to its package in tools/go.mod.
var toolPackages = map[string]string{
	"registry":           "github.com/distribution/distribution/v3/cmd/registry",
	"bazel-remote":       "github.com/buchgr/bazel-remote/v2",
	"crane":              "github.com/google/go-containerregistry/cmd/crane",
	"regctl":             "github.com/regclient/regclient/cmd/regctl",
	"conformance":        "github.com/opencontainers/distribution-spec/conformance",
	"protoc-gen-go":      "google.golang.org/protobuf/cmd/protoc-gen-go",
	"protoc-gen-go-grpc": "google.golang.org/grpc/cmd/protoc-gen-go-grpc",
}

// toolBuildTimeout bounds one `go build` of a tool. A cold build of the registry takes about
// 80 s on a 2-core machine, so this leaves room for a slow or busy one.
const toolBuildTimeout = 8 * time.Minute

const modulePath = "github.com/rulesimg/img"

var (
	repoRootOnce sync.Once
	repoRootDir  string
	repoRootErr  error
)

// RepoRoot returns the module root: the folder whose go.mod declares github.com/rulesimg/img.
// It walks up from the working directory, which `go test` sets to the package folder.
func RepoRoot(t testing.TB) string {
	t.Helper()

	repoRootOnce.Do(func() {
		repoRootDir, repoRootErr = findRepoRoot()
	})
	if repoRootErr != nil {
		t.Fatalf("testpeer: %v", repoRootErr)
	}
	return repoRootDir
}

func findRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}

	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && declaresModule(data, modulePath) {
			return dir, nil
		}

		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("find module root: no go.mod declaring module %s above the working directory; run the test from inside the repository", modulePath)
		}
		dir = parent
	}
}

func declaresModule(goMod []byte, module string) bool {
	for _, line := range strings.Split(string(goMod), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 2 && fields[0] == "module" && fields[1] == module {
			return true
		}
	}
	return false
}

// Tool returns the absolute path of a pinned tool binary in .tools/bin. Tools are "registry",
// "bazel-remote", "crane", "regctl", "conformance", "protoc-gen-go" and "protoc-gen-go-grpc".
// A missing binary is built from tools/go.mod. An exclusive lock file serializes builds across
// test binaries that run in parallel, and each binary is renamed into place only when complete.
func Tool(t testing.TB, name string) string {
	t.Helper()

	pkg, ok := toolPackages[name]
	if !ok {
		t.Fatalf("testpeer: unknown tool %q; add its package to toolPackages in internal/testpeer/tool.go and to tools/go.mod", name)
	}

	root := RepoRoot(t)
	binDir := filepath.Join(root, ".tools", "bin")
	binary := filepath.Join(binDir, name)
	if isExecutable(binary) {
		return binary
	}

	if err := buildTool(root, binDir, name, pkg); err != nil {
		t.Fatalf("testpeer: %v", err)
	}
	return binary
}

func isExecutable(path string) bool {
	info, err := os.Stat(path)
	return err == nil && info.Mode().IsRegular() && info.Mode()&0o111 != 0
}

func buildTool(root, binDir, name, pkg string) error {
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return fmt.Errorf("build tool %s: %w", name, err)
	}

	lockPath := filepath.Join(binDir, ".build-"+name+".lock")
	lock, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("build tool %s: open lock file: %w", name, err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("build tool %s: lock %s: %w", name, lockPath, err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	// Another test binary may have built the tool while this one waited for the lock.
	binary := filepath.Join(binDir, name)
	if isExecutable(binary) {
		return nil
	}

	ctx, cancel := context.WithTimeout(context.Background(), toolBuildTimeout)
	defer cancel()

	partial := fmt.Sprintf("%s.partial-%d", binary, os.Getpid())
	cmd := exec.CommandContext(ctx, "go", "build", "-o", partial, pkg)
	cmd.Dir = filepath.Join(root, "tools")
	var output bytes.Buffer
	cmd.Stdout = &output
	cmd.Stderr = &output
	if err := cmd.Run(); err != nil {
		os.Remove(partial)
		return fmt.Errorf("build tool %s: `go build -o %s %s` in %s failed: %w\n%s\nbuild it by hand with `cd tools && go build -o ../.tools/bin/%s %s`",
			name, partial, pkg, cmd.Dir, err, output.String(), name, pkg)
	}

	if err := os.Rename(partial, binary); err != nil {
		os.Remove(partial)
		return fmt.Errorf("build tool %s: %w", name, err)
	}
	return nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. Another process may
// take it before the caller binds it, so prefer listening on port 0 where a server allows it.
func FreePort(t testing.TB) int {
	t.Helper()

	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testpeer: find a free port on 127.0.0.1: %v", err)
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port
}
